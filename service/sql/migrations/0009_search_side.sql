-- Search data and analysis off the write path. Inserting a message now touches only the
-- indexes that ingest and the read API need; what search needs is computed in the background.
--
-- * message_search holds each message's Portuguese tsvector and its embedding, with the GIN
--   and HNSW indexes that used to be maintained on every insert into messages. The workers'
--   index actor fills it within seconds of the commit (service/enqueue.py, workers/actors.py);
--   an edit re-indexes its message in the same transaction as the edit (the trigger below;
--   edits are rare, so the ingest path pays for them only when they happen). edit_ts says
--   which edit a row was computed from: whichever writer saw the newer edit wins, so the
--   worker's indexing and a concurrent edit can land in either order.
-- * The analysis update no longer changes any indexed column (the pending queue is found by
--   content_at, below), so with free space on the page (fillfactor) it is a HOT update: a new
--   row version on the same page and no index entry at all, where it used to add one to each
--   of the table's indexes. Status, edit and reaction updates are HOT for the same reason.
-- * messages_content_at replaces messages_pending (whose predicate on analysis_state made every
--   analysis update a non-HOT one): the reconciler walks it from a persisted watermark
--   (sense_reconcile), so a round reads only what arrived since the oldest unfinished message.
-- * messages_tenant_seq is no query's index any more (catch-up uses messages_tenant_position).

CREATE TABLE message_search (
    tenant_id    uuid NOT NULL,
    instance_id  uuid NOT NULL,
    message_id   text NOT NULL,
    tsv          tsvector NOT NULL,
    edit_ts      bigint,                      -- the edit the tsvector was computed from
    embedding    vector(384),
    indexed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, instance_id, message_id)
);

INSERT INTO message_search (tenant_id, instance_id, message_id, tsv, edit_ts, embedding)
SELECT tenant_id, instance_id, message_id,
       to_tsvector('sense_pt', coalesce(edited_text, text, '')), edit_ts, embedding
FROM messages
WHERE has_content OR edited_text IS NOT NULL;

-- One GIN index over (tenant, lexemes) (btree_gin): a search reads only its tenant's postings.
CREATE INDEX message_search_text ON message_search USING gin (tenant_id, tsv);
-- Cosine distance on the 384-dimension embeddings; searches filter by tenant with pgvector's
-- iterative index scan (service/sql/live.sql).
CREATE INDEX message_search_embedding ON message_search
    USING hnsw (embedding vector_cosine_ops) WHERE embedding IS NOT NULL;

-- The text a message is searched by is coalesce(edited_text, text): index it again when an
-- edit changes it. WHEN is evaluated without calling the function, so other writes cost
-- nothing.
CREATE FUNCTION sense_index_edit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_search AS s (tenant_id, instance_id, message_id, tsv, edit_ts)
    VALUES (NEW.tenant_id, NEW.instance_id, NEW.message_id,
            to_tsvector('sense_pt', coalesce(NEW.edited_text, NEW.text, '')), NEW.edit_ts)
    ON CONFLICT (tenant_id, instance_id, message_id) DO UPDATE
        SET tsv = EXCLUDED.tsv, edit_ts = EXCLUDED.edit_ts, indexed_at = now()
        WHERE coalesce(EXCLUDED.edit_ts, -1) >= coalesce(s.edit_ts, -1);
    RETURN NULL;
END $$;

CREATE TRIGGER messages_edit_indexed_insert AFTER INSERT ON messages
    FOR EACH ROW WHEN (NEW.edited_text IS NOT NULL)
    EXECUTE FUNCTION sense_index_edit();

CREATE TRIGGER messages_edit_indexed AFTER UPDATE OF edited_text ON messages
    FOR EACH ROW WHEN (NEW.edited_text IS DISTINCT FROM OLD.edited_text)
    EXECUTE FUNCTION sense_index_edit();

-- Where the reconciler stands: every message whose content arrived at or before this position
-- (content_at, seq) is analysed (or given up on) and indexed.
CREATE TABLE sense_reconcile (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    content_at  timestamptz NOT NULL,
    seq         bigint NOT NULL
);

INSERT INTO sense_reconcile (content_at, seq)
SELECT least(now(), (SELECT min(content_at) FROM messages
                     WHERE has_content AND analysis_state = 'pending')) - interval '1 hour',
       0;

CREATE INDEX messages_content_at ON messages (content_at, seq) WHERE has_content;

DROP INDEX messages_pending;
DROP INDEX messages_search;
DROP INDEX messages_embedding;
DROP INDEX messages_tenant_seq;
ALTER TABLE messages DROP COLUMN embedding;

-- Room on each page for the next versions of its rows (status, edits, reactions, analysis):
-- what makes their updates HOT. Applies to pages written from now on.
ALTER TABLE messages SET (fillfactor = 85);
