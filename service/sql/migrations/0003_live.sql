-- Live stream catch-up and search: a commit-ordered position for every message, Portuguese
-- full-text search that ignores accents, and an embedding index for semantic search. Every
-- index leads with the tenant or is filtered by it in the query (see service/search.py).
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE EXTENSION IF NOT EXISTS btree_gin;

-- Where a message sits in commit order: the id of the transaction its content arrived in, then
-- seq. Readers only hand out positions below the oldest transaction still running
-- (pg_snapshot_xmin), so a client that pages with GET /api/v1/messages?after=<cursor> never
-- skips a row that a slower, concurrent transaction commits later with a smaller position
-- (seq or content_at alone would: they are taken before commit, and several processes commit
-- out of order). A stub row (an early status update) gets its position when its content lands.
ALTER TABLE messages ADD COLUMN content_xid xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE FUNCTION sense_content_arrived() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.content_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

-- WHEN is evaluated without calling the function: status/edit/reaction updates cost nothing.
CREATE TRIGGER messages_content_arrived BEFORE UPDATE ON messages
    FOR EACH ROW WHEN (NEW.has_content AND NOT OLD.has_content)
    EXECUTE FUNCTION sense_content_arrived();

CREATE INDEX messages_tenant_position ON messages (tenant_id, content_xid, seq) WHERE has_content;

-- Portuguese stemming with accents folded: "nao" finds "não", "atendimentos" finds "atendimento".
CREATE TEXT SEARCH CONFIGURATION sense_pt (COPY = pg_catalog.portuguese);
ALTER TEXT SEARCH CONFIGURATION sense_pt
    ALTER MAPPING FOR hword, hword_part, word WITH unaccent, portuguese_stem;

-- One GIN index over (tenant, lexemes) (btree_gin): a search reads only its tenant's postings.
-- The expression must stay identical to the one in the search_text query.
CREATE INDEX messages_search ON messages
    USING gin (tenant_id, to_tsvector('sense_pt', coalesce(edited_text, text)))
    WHERE has_content AND NOT deleted;

-- Cosine distance on the 384-dimension embeddings; the query filters by tenant with pgvector's
-- iterative index scan, so a small tenant among big ones still gets its full top-k.
CREATE INDEX messages_embedding ON messages
    USING hnsw (embedding vector_cosine_ops)
    WHERE has_content AND NOT deleted AND embedding IS NOT NULL;
