-- Enrichment worker queries (workers/store.py). Every statement takes the message keys as
-- three parallel arrays (tenant_id[], instance_id[], message_id[]) and touches only rows still
-- 'pending', which is what makes the actor idempotent: a second run finds nothing to do.

-- name: enrich_load
-- The text to analyse: the edited text when an edit arrived before the analysis.
SELECT m.tenant_id, m.instance_id, m.message_id, coalesce(m.edited_text, m.text) AS text
FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, instance_id, message_id)
JOIN messages AS m
    ON m.tenant_id = k.tenant_id AND m.instance_id = k.instance_id
   AND m.message_id = k.message_id
WHERE m.has_content AND m.analysis_state = 'pending'

-- name: enrich_save
-- One UPDATE for the whole batch; state is 'done' or 'skipped' (no text to analyse).
-- Embeddings come as pgvector text literals ('[0.1,0.2,...]').
UPDATE messages AS m
SET analysis_state = u.state,
    sentiment = u.sentiment,
    emotion = u.emotion,
    satisfaction = u.satisfaction,
    embedding = u.embedding::vector,
    analysis_error = NULL,
    analyzed_at = now()
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::real[], $6::text[],
            $7::smallint[], $8::text[])
     AS u(tenant_id, instance_id, message_id, state, sentiment, emotion, satisfaction, embedding)
WHERE m.tenant_id = u.tenant_id AND m.instance_id = u.instance_id
  AND m.message_id = u.message_id AND m.analysis_state = 'pending'
RETURNING m.tenant_id, m.instance_id, m.message_id, m.analysis_state, m.sentiment, m.emotion,
          m.satisfaction

-- name: enrich_fail
UPDATE messages AS m
SET analysis_state = 'failed', analysis_error = $4, analyzed_at = now()
FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, instance_id, message_id)
WHERE m.tenant_id = k.tenant_id AND m.instance_id = k.instance_id
  AND m.message_id = k.message_id AND m.analysis_state = 'pending' AND m.has_content
RETURNING m.tenant_id, m.instance_id, m.message_id

-- name: enrich_stale
-- Pending messages whose content arrived between $2 and $1 seconds ago, oldest first, after the
-- keyset position ($3, $4, $5, $6). Uses the messages_pending index.
SELECT tenant_id, instance_id, message_id, content_at
FROM messages
WHERE has_content AND analysis_state = 'pending'
  AND content_at < now() - make_interval(secs => $1)
  AND content_at >= now() - make_interval(secs => $2)
  AND (content_at, tenant_id, instance_id, message_id) > ($3::timestamptz, $4::uuid, $5::uuid, $6::text)
ORDER BY content_at, tenant_id, instance_id, message_id
LIMIT $7

-- name: enrich_expire
-- Pending for longer than anyone will wait for: give up, with the reason.
UPDATE messages
SET analysis_state = 'failed', analysis_error = $2, analyzed_at = now()
WHERE has_content AND analysis_state = 'pending'
  AND content_at < now() - make_interval(secs => $1)
RETURNING tenant_id, instance_id, message_id

-- name: enrich_try_lock
SELECT pg_try_advisory_lock($1)

-- name: enrich_unlock
SELECT pg_advisory_unlock($1)
