-- Enrichment worker queries (workers/store.py). The actors' statements take the message keys
-- as three parallel arrays (tenant_id[], instance_id[], message_id[]); analysis touches only
-- rows still 'pending' and indexing only rows not indexed from a newer edit, which is what
-- makes the actors idempotent: a second run finds nothing to do.

-- name: index_messages
-- Index the messages' text for search (message_search) and answer those still waiting for
-- analysis. Idempotent: a message indexed from a newer edit (the edit trigger of migration
-- 0009) is left as it is.
-- The tsvector is computed only for messages without an up-to-date search row (a message the
-- reconciler sends again because its analysis is still pending is indexed already).
WITH keys AS (
    SELECT m.tenant_id, m.instance_id, m.message_id, m.analysis_state, m.text,
           m.edited_text, m.edit_ts,
           s.message_id IS NULL OR coalesce(m.edit_ts, -1) > coalesce(s.edit_ts, -1) AS stale
    FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, instance_id, message_id)
    JOIN messages AS m
        ON m.tenant_id = k.tenant_id AND m.instance_id = k.instance_id
       AND m.message_id = k.message_id
    LEFT JOIN message_search AS s
        ON s.tenant_id = m.tenant_id AND s.instance_id = m.instance_id
       AND s.message_id = m.message_id
    WHERE m.has_content
    ORDER BY m.tenant_id, m.instance_id, m.message_id
),
indexed AS (
    INSERT INTO message_search AS s (tenant_id, instance_id, message_id, tsv, edit_ts)
    SELECT tenant_id, instance_id, message_id,
           to_tsvector('sense_pt', coalesce(edited_text, text, '')), edit_ts
    FROM keys
    WHERE stale
    ON CONFLICT (tenant_id, instance_id, message_id) DO UPDATE
        SET tsv = EXCLUDED.tsv, edit_ts = EXCLUDED.edit_ts, indexed_at = now()
        WHERE coalesce(EXCLUDED.edit_ts, -1) > coalesce(s.edit_ts, -1)
)
SELECT tenant_id, instance_id, message_id FROM keys WHERE analysis_state = 'pending'

-- name: enrich_load
-- The text to analyse: the edited text when an edit arrived before the analysis.
SELECT m.tenant_id, m.instance_id, m.message_id, coalesce(m.edited_text, m.text) AS text
FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, instance_id, message_id)
JOIN messages AS m
    ON m.tenant_id = k.tenant_id AND m.instance_id = k.instance_id
   AND m.message_id = k.message_id
WHERE m.has_content AND m.analysis_state = 'pending'

-- name: enrich_save
-- One statement for the whole batch; state is 'done' or 'skipped' (no text to analyse). The
-- analysis changes no indexed column of messages (a HOT update, migration 0009); the
-- embedding goes to the message's search row, which the index actor wrote before.
-- The embeddings come as one flat real[] ($8, binary on the wire: no float is printed or
-- parsed as text) of $11 floats a vector; $10 is each row's slot in it (NULL: no embedding).
WITH saved AS (
    UPDATE messages AS m
    SET analysis_state = u.state,
        sentiment = u.sentiment,
        emotion = u.emotion,
        satisfaction = u.satisfaction,
        analysis_error = NULL,
        analyzer = $9,
        analyzed_at = now()
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::real[], $6::text[],
                $7::smallint[])
         AS u(tenant_id, instance_id, message_id, state, sentiment, emotion, satisfaction)
    WHERE m.tenant_id = u.tenant_id AND m.instance_id = u.instance_id
      AND m.message_id = u.message_id AND m.analysis_state = 'pending'
    RETURNING m.tenant_id, m.instance_id, m.message_id, m.analysis_state, m.sentiment,
              m.emotion, m.satisfaction
),
embedded AS (
    UPDATE message_search AS s
    SET embedding = ($8::real[])[e.slot * $11 + 1 : (e.slot + 1) * $11]::vector
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $10::int[])
         AS e(tenant_id, instance_id, message_id, slot)
    JOIN saved USING (tenant_id, instance_id, message_id)
    WHERE s.tenant_id = e.tenant_id AND s.instance_id = e.instance_id
      AND s.message_id = e.message_id AND e.slot IS NOT NULL
),
fed AS (  -- tenants with endpoints: message.analyzed in their change feed (migration 0017)
    INSERT INTO fanout_feed (tenant_id, type, instance_id, message_id)
    SELECT tenant_id, 'message.analyzed', instance_id, message_id FROM saved
    WHERE tenant_id IN (SELECT tenant_id FROM endpoints)
)
SELECT * FROM saved

-- name: enrich_fail
WITH failed AS (
    UPDATE messages AS m
    SET analysis_state = 'failed', analysis_error = $4, analyzed_at = now()
    FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, instance_id, message_id)
    WHERE m.tenant_id = k.tenant_id AND m.instance_id = k.instance_id
      AND m.message_id = k.message_id AND m.analysis_state = 'pending' AND m.has_content
    RETURNING m.tenant_id, m.instance_id, m.message_id
),
fed AS (
    INSERT INTO fanout_feed (tenant_id, type, instance_id, message_id)
    SELECT tenant_id, 'message.analyzed', instance_id, message_id FROM failed
    WHERE tenant_id IN (SELECT tenant_id FROM endpoints)
)
SELECT * FROM failed

-- name: reconcile_position
-- The reconciler's watermark (migration 0009); one reconciler at a time (advisory lock).
SELECT content_at, seq FROM sense_reconcile

-- name: reconcile_advance
UPDATE sense_reconcile SET content_at = $1, seq = $2

-- name: reconcile_scan
-- The next messages after a position (content_at, seq) whose content arrived more than $3
-- seconds ago, in order, with what each still needs: `pending` (not analysed) or `unindexed`
-- (no search row). Walks messages_content_at.
SELECT m.content_at, m.seq, m.tenant_id, m.instance_id, m.message_id,
       m.analysis_state = 'pending' AS pending, s.message_id IS NULL AS unindexed
FROM (
    SELECT content_at, seq, tenant_id, instance_id, message_id, analysis_state
    FROM messages
    WHERE has_content AND (content_at, seq) > ($1::timestamptz, $2::bigint)
      AND content_at < now() - make_interval(secs => $3)
    ORDER BY content_at, seq
    LIMIT $4
) AS m
LEFT JOIN message_search AS s USING (tenant_id, instance_id, message_id)
ORDER BY m.content_at, m.seq

-- name: enrich_expire
-- Pending for longer than anyone will wait for: give up, with the reason. Only from the
-- watermark on ($3, $4): nothing before it is pending.
WITH failed AS (
    UPDATE messages
    SET analysis_state = 'failed', analysis_error = $2, analyzed_at = now()
    WHERE has_content AND analysis_state = 'pending'
      AND (content_at, seq) > ($3::timestamptz, $4::bigint)
      AND content_at < now() - make_interval(secs => $1)
    RETURNING tenant_id, instance_id, message_id
),
fed AS (
    INSERT INTO fanout_feed (tenant_id, type, instance_id, message_id)
    SELECT tenant_id, 'message.analyzed', instance_id, message_id FROM failed
    WHERE tenant_id IN (SELECT tenant_id FROM endpoints)
)
SELECT * FROM failed

-- name: enrich_try_lock
SELECT pg_try_advisory_lock($1)

-- name: enrich_unlock
SELECT pg_advisory_unlock($1)

-- name: reanalyze_count
-- What `sense reanalyze` would re-score: analysed messages ($2: by another analyzer than $1,
-- unless $4 = all), of tenant $2 (or all), sent since $3 (or ever).
SELECT count(*) FROM messages
WHERE has_content AND analysis_state IN ('done', 'failed')
  AND ($4 OR analyzer IS DISTINCT FROM $1)
  AND ($2::uuid IS NULL OR tenant_id = $2)
  AND ($3::timestamptz IS NULL OR coalesce(message_ts, content_at) >= $3)

-- name: reanalyze_mark
-- The next batch of them in arrival order after ($5, $6), set pending again: the worker
-- re-scores them (their old analysis stays readable until the new one is written).
WITH picked AS (
    SELECT tenant_id, instance_id, message_id, content_at, seq FROM messages
    WHERE has_content AND analysis_state IN ('done', 'failed')
      AND ($4 OR analyzer IS DISTINCT FROM $1)
      AND ($2::uuid IS NULL OR tenant_id = $2)
      AND ($3::timestamptz IS NULL OR coalesce(message_ts, content_at) >= $3)
      AND (content_at, seq) > ($5::timestamptz, $6::bigint)
    ORDER BY content_at, seq
    LIMIT $7
)
UPDATE messages AS m SET analysis_state = 'pending', analyzer = NULL
FROM picked AS p
WHERE m.tenant_id = p.tenant_id AND m.instance_id = p.instance_id
  AND m.message_id = p.message_id
RETURNING m.tenant_id, m.instance_id, m.message_id, p.content_at, p.seq

-- name: reanalyze_remaining
-- Of what a reanalysis set pending (analysed before, so analyzed_at is set; its analyzer
-- cleared), what is left.
SELECT count(*) FROM messages
WHERE has_content AND analysis_state = 'pending' AND analyzed_at IS NOT NULL
  AND analyzer IS NULL
  AND ($1::uuid IS NULL OR tenant_id = $1)
  AND ($2::timestamptz IS NULL OR coalesce(message_ts, content_at) >= $2)
