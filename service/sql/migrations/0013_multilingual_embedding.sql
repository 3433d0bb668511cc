-- Semantic search on the multilingual encoder (USE-multilingual v3, 512 dimensions; the
-- English MiniLM's 384-dimension vectors ranked Portuguese mostly by shared words). The old
-- vectors cannot be compared with the new ones: they are dropped, and `sense reanalyze --all`
-- (README, "Upgrading") embeds every message again; until then older messages are found by
-- text search only.
DROP INDEX message_search_embedding;
ALTER TABLE message_search ALTER COLUMN embedding TYPE vector(512) USING NULL;
-- 2 KB a vector: kept in the row (not TOASTed out of line), so a search reads no TOAST table
-- and the planner sees the table's real size
ALTER TABLE message_search ALTER COLUMN embedding SET STORAGE PLAIN;
CREATE INDEX message_search_embedding ON message_search
    USING hnsw (embedding vector_cosine_ops) WHERE embedding IS NOT NULL;
