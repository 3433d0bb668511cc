-- Named queries of the live stream, its catch-up and search (service/live/, service/api.py,
-- service/search.py). Message rows carry the columns of resources.message_from_row and their
-- commit position.

-- name: stream_instances
SELECT i.tenant_id, i.instance_id, i.name, i.state, i.state_reason, i.owner_jid, i.profile_name,
       i.state_at, i.qr_code, i.qr_base64, i.pairing_code, i.qr_at
FROM unnest($1::uuid[], $2::uuid[]) AS k(tenant_id, instance_id)
JOIN instances AS i USING (tenant_id, instance_id)

-- name: stream_frontier
-- Every message position below this one is final: no transaction still running can add one.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint

-- name: list_messages_after
-- Catch-up for live clients: messages whose content arrived after a position, oldest first,
-- only up to the frontier (see migration 0003).
SELECT instance_id, message_id, chat_jid, chat_type, sender_jid, sender_phone, from_me,
       push_name, type, text, status, edited_text, edit_ts, deleted, reactions,
       quoted_message_id, message_ts, analysis_state, sentiment, emotion, satisfaction,
       analysis_error, seq, content_xid::text::bigint AS content_xid
FROM messages
WHERE tenant_id = $1 AND has_content
  AND ($2::uuid IS NULL OR instance_id = $2)
  AND ($3::text[] IS NULL OR chat_jid = ANY($3))
  AND (content_xid, seq) > ($4::text::xid8, $5::bigint)
  AND content_xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY content_xid, seq
LIMIT $6

-- name: search_text
-- Portuguese full-text search within one tenant, over the search rows the index actor writes
-- (migration 0009): the GIN index message_search_text (tenant_id, tsv) answers the tenant and
-- the words at once; the message itself is joined by primary key. Only the newest 1000 matches
-- are ranked, so a word found in a big tenant's every tenth message costs a bounded ranking,
-- not one per match. Matches are marked with U+0002 ... U+0003 in `highlight` (never HTML).
WITH q AS (SELECT websearch_to_tsquery('sense_pt', $2) AS query),
recent AS (
    SELECT m.instance_id, m.message_id, m.chat_jid, m.chat_type, m.sender_jid, m.sender_phone,
           m.from_me, m.push_name, m.type, m.text, m.status, m.edited_text, m.edit_ts,
           m.deleted, m.reactions, m.quoted_message_id, m.message_ts, m.analysis_state,
           m.sentiment, m.emotion, m.satisfaction, m.analysis_error, m.seq, s.tsv, q.query
    FROM message_search AS s
    CROSS JOIN q
    -- one primary-key probe per match (OFFSET 0 keeps it a lateral lookup: as a plain join
    -- the planner may hash the tenant's every message to meet a few hundred matches)
    JOIN LATERAL (
        SELECT * FROM messages AS x
        WHERE x.tenant_id = s.tenant_id AND x.instance_id = s.instance_id
          AND x.message_id = s.message_id
        OFFSET 0
    ) AS m ON true
    WHERE s.tenant_id = $1 AND s.tsv @@ q.query
      AND m.has_content AND NOT m.deleted
      AND ($3::uuid IS NULL OR s.instance_id = $3)
      AND ($4::text[] IS NULL OR m.chat_jid = ANY($4))
    ORDER BY m.message_ts DESC, m.seq DESC
    LIMIT 1000
),
hits AS (
    SELECT recent.*, ts_rank_cd(recent.tsv, recent.query) AS score
    FROM recent
    ORDER BY score DESC, message_ts DESC, seq DESC
    LIMIT $5
)
SELECT hits.instance_id, hits.message_id, hits.chat_jid, hits.chat_type, hits.sender_jid,
       hits.sender_phone, hits.from_me, hits.push_name, hits.type, hits.text, hits.status,
       hits.edited_text, hits.edit_ts, hits.deleted, hits.reactions, hits.quoted_message_id,
       hits.message_ts, hits.analysis_state, hits.sentiment, hits.emotion, hits.satisfaction,
       hits.analysis_error, hits.seq, hits.score,
       ts_headline('sense_pt', coalesce(hits.edited_text, hits.text), hits.query,
                   'StartSel=' || chr(2) || ', StopSel=' || chr(3)
                   || ', MaxFragments=2, MaxWords=18, MinWords=6') AS highlight
FROM hits
ORDER BY score DESC, message_ts DESC, seq DESC

-- name: search_semantic
-- Nearest messages of one tenant by cosine distance to a query embedding ($2, text form
-- '[x,y,...]'), over the search rows' embeddings (migration 0009). Run with
-- hnsw.iterative_scan = relaxed_order so that the tenant filter cannot starve the index scan;
-- the outer ORDER BY restores the exact order.
SELECT * FROM (
    SELECT m.instance_id, m.message_id, m.chat_jid, m.chat_type, m.sender_jid, m.sender_phone,
           m.from_me, m.push_name, m.type, m.text, m.status, m.edited_text, m.edit_ts,
           m.deleted, m.reactions, m.quoted_message_id, m.message_ts, m.analysis_state,
           m.sentiment, m.emotion, m.satisfaction, m.analysis_error, m.seq,
           s.embedding <=> $2::text::vector AS distance
    FROM message_search AS s
    JOIN messages AS m
        ON m.tenant_id = s.tenant_id AND m.instance_id = s.instance_id
       AND m.message_id = s.message_id
    WHERE s.tenant_id = $1 AND s.embedding IS NOT NULL
      AND m.has_content AND NOT m.deleted
      AND ($3::uuid IS NULL OR s.instance_id = $3)
      AND ($4::text[] IS NULL OR m.chat_jid = ANY($4))
    ORDER BY s.embedding <=> $2::text::vector
    LIMIT $5
) AS nearest
ORDER BY distance

-- name: search_semantic_settings
-- For the transaction of one semantic search: keep scanning the HNSW graph until enough rows
-- pass the tenant filter (pgvector >= 0.8), with a candidate list a bit wider than the default.
-- Always plan for the tenant at hand: its size decides between the HNSW index (big tenant) and
-- an exact scan of its rows by tenant (small tenant; exact and faster). A cached generic plan
-- cannot tell them apart: on 200k messages over 1000 tenants, after ten searches by tenants
-- of ~500 messages a pooled connection's generic plan scanned a 27k-message tenant exactly in
-- 0.9 s; planned for it, the index answers in 6 ms.
SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('hnsw.ef_search', '100', true),
       set_config('plan_cache_mode', 'force_custom_plan', true)
