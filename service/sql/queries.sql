-- Named queries. `-- name: x` starts query x; service.db.q("x") returns it.

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES ($1, $2)

-- name: registry_sources
SELECT source_id, name, secret_hash, old_secret_hash, old_secret_until, require_apikey
FROM sources

-- name: registry_tenants
SELECT tenant_id, name, token_hash FROM tenants

-- name: registry_envelope_tenants
-- Tenants with an endpoint in `evolution` mode: their message webhooks are kept as received.
SELECT DISTINCT tenant_id FROM endpoints WHERE mode = 'evolution'

-- name: registry_instances
SELECT i.tenant_id, i.instance_id, i.source_id, i.name, i.apikey_hash,
       coalesce(i.require_apikey, s.require_apikey) AS require_apikey
FROM instances AS i JOIN sources AS s USING (source_id)

-- name: ingest
-- One batch, one statement, one round trip (migration 0008): see service/ingest.py. What it
-- changed for tenants with endpoints goes to their change feed in the same statement
-- (migration 0017); for every other tenant the feed's part selects nothing.
WITH ingested AS MATERIALIZED (
    SELECT * FROM sense_ingest($1::sense_lid_in[], $2::sense_message_in[],
                               $3::sense_contact_in[], $4::sense_chat_in[],
                               $5::sense_group_in[], $6::sense_state_in[], $7::sense_qr_in[],
                               $8::sense_event_in[], $9::sense_quarantine_in[])
),
subscribed AS (SELECT DISTINCT tenant_id FROM endpoints),
fed AS (
    INSERT INTO fanout_feed (tenant_id, type, instance_id, message_id, envelope)
    SELECT i.tenant_id, CASE WHEN i.created THEN 'message.created' ELSE 'message.updated' END,
           i.instance_id, i.message_id, NULL::jsonb
    FROM ingested AS i JOIN subscribed USING (tenant_id)
    UNION ALL
    SELECT s.tenant_id, 'instance.state', s.instance_id, NULL, NULL
    FROM unnest($6::sense_state_in[]) AS s JOIN subscribed USING (tenant_id)
    UNION ALL
    SELECT q.tenant_id, 'instance.qrcode', q.instance_id, NULL, NULL
    FROM unnest($7::sense_qr_in[]) AS q JOIN subscribed USING (tenant_id)
    UNION ALL
    SELECT e.tenant_id, e.type, e.instance_id, e.message_id, e.envelope::jsonb
    FROM unnest($10::sense_envelope_in[]) AS e
)
SELECT * FROM ingested

-- name: find_tenants
SELECT tenant_id, name FROM tenants WHERE tenant_id = $1 OR name = $2 ORDER BY tenant_id = $1 DESC LIMIT 1

-- name: find_sources
SELECT source_id, name FROM sources WHERE source_id = $1 OR name = $2 ORDER BY source_id = $1 DESC LIMIT 1

-- name: insert_instance
INSERT INTO instances (tenant_id, instance_id, source_id, name, apikey_hash, require_apikey)
VALUES ($1, $2, $3, $4, $5, $6)

-- name: claim_quarantine
-- Quarantined events whose instance is registered now, oldest first, locked for this replay;
-- not those a replay refused already (an apikey that does not match the instance's).
SELECT q.quarantine_id, q.source_id, q.instance_name, q.event, q.body,
       q.apikey_hash AS presented_hash, i.tenant_id, i.instance_id, i.apikey_hash,
       coalesce(i.require_apikey, s.require_apikey) AS require_apikey
FROM quarantine AS q
JOIN instances AS i ON i.source_id = q.source_id AND i.name = q.instance_name
JOIN sources AS s ON s.source_id = q.source_id
WHERE ($1::uuid IS NULL OR q.source_id = $1)
  AND ($2::text IS NULL OR q.instance_name = $2)
  AND q.quarantine_id > $3
  AND q.reason NOT LIKE 'refused:%'
ORDER BY q.quarantine_id
LIMIT $4
FOR UPDATE OF q SKIP LOCKED

-- name: refuse_quarantine
UPDATE quarantine SET reason = $2 WHERE quarantine_id = $1

-- name: delete_quarantine
DELETE FROM quarantine WHERE quarantine_id = ANY($1::bigint[])

-- name: list_quarantine
SELECT q.quarantine_id, s.name AS source, q.instance_name, q.event, q.reason, q.received_at,
       q.received_at + make_interval(secs => $2) AS expires_at, octet_length(q.body) AS bytes
FROM quarantine AS q JOIN sources AS s USING (source_id)
ORDER BY q.quarantine_id
LIMIT $1

-- name: list_messages
SELECT * FROM messages
WHERE tenant_id = $1 AND has_content
  AND ($2::uuid IS NULL OR instance_id = $2)
  AND ($3::text[] IS NULL OR chat_jid = ANY($3))  -- a chat in every form it may be filed as
  AND ($4::timestamptz IS NULL OR (message_ts, seq) < ($4, $5::bigint))
ORDER BY message_ts DESC, seq DESC
LIMIT $6

-- name: get_message
SELECT * FROM messages
WHERE tenant_id = $1 AND instance_id = $2 AND message_id = $3 AND has_content

-- name: list_chats
-- Chats with their last message, newest first, and the rolling analysis of the last 50
-- analysed messages of each.
-- m.* comes first: a record answers a repeated column name with its last value, and a chat
-- without a message (chats.upsert) has m.chat_jid, m.instance_id... NULL.
SELECT m.*, c.instance_id, c.chat_jid, c.chat_type, c.name, c.unread, c.last_message_ts,
       a.avg_sentiment, a.avg_satisfaction, a.analyzed_messages
FROM chats AS c
LEFT JOIN messages AS m
    ON m.tenant_id = c.tenant_id AND m.instance_id = c.instance_id
   AND m.message_id = c.last_message_id AND m.has_content
LEFT JOIN LATERAL (
    SELECT avg(x.sentiment)::float8 AS avg_sentiment, avg(x.satisfaction)::float8 AS avg_satisfaction,
           count(*)::int AS analyzed_messages
    FROM (SELECT sentiment, satisfaction FROM messages AS r
          WHERE r.tenant_id = c.tenant_id AND r.instance_id = c.instance_id
            AND r.chat_jid = c.chat_jid AND r.has_content AND r.analysis_state = 'done'
          ORDER BY r.message_ts DESC LIMIT 50) AS x
) AS a ON true
WHERE c.tenant_id = $1 AND NOT c.deleted AND ($2::uuid IS NULL OR c.instance_id = $2)
ORDER BY c.last_message_ts DESC NULLS LAST, c.chat_jid
LIMIT $3

-- name: list_instances
SELECT i.name, i.state, i.state_reason, i.owner_jid, i.profile_name, i.state_at, i.qr_code,
       i.qr_base64, i.pairing_code, i.qr_at,
       (SELECT max(c.last_message_ts) FROM chats AS c
        WHERE c.tenant_id = i.tenant_id AND c.instance_id = i.instance_id) AS last_message_ts,
       b.last_sweep_at, b.gaps_found, b.recovered, b.last_gap_at
FROM instances AS i LEFT JOIN backfill_state AS b USING (instance_id)
WHERE i.tenant_id = $1 ORDER BY i.name

-- name: quarantine_held
SELECT source_id, count(*) AS events, coalesce(sum(octet_length(body)), 0)::bigint AS bytes
FROM quarantine GROUP BY source_id

-- name: quarantine_expire
WITH gone AS (
    DELETE FROM quarantine WHERE received_at < now() - make_interval(secs => $1) RETURNING 1
)
SELECT count(*) FROM gone

-- name: naive_lookup_instance
-- Benchmark baseline only: the per-request lookup the in-memory registry replaces.
SELECT i.tenant_id, i.instance_id, i.source_id, i.name
FROM instances AS i JOIN sources AS s USING (source_id)
WHERE s.secret_hash = $1 AND i.name = $2

-- name: naive_insert_message
-- Benchmark baseline only: one row, one statement, one transaction. $20 is the chat's other
-- number form (MessageOp.record): filed under it when that form already has messages.
INSERT INTO messages (tenant_id, instance_id, message_id, has_content, chat_jid, chat_type,
                      sender_jid, sender_phone, from_me, push_name, type, text,
                      quoted_message_id, message_ts, status, edited_text, edit_ts, deleted,
                      reactions)
VALUES ($1, $2, $3, $4,
        CASE WHEN EXISTS (SELECT 1 FROM messages AS v
                          WHERE v.tenant_id = $1 AND v.instance_id = $2 AND v.chat_jid = $20
                            AND v.has_content)
             THEN $20::text ELSE $5 END,
        $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19::jsonb)
ON CONFLICT (tenant_id, instance_id, message_id) DO UPDATE
SET status = GREATEST(messages.status, EXCLUDED.status)
