-- Fan-out (service/endpoints.py, workers/fanout.py): endpoints, their change feed (migration
-- 0017) and their delivery attempts.

-- name: endpoint_create
-- From now on: the feed position below which every row is already committed.
INSERT INTO endpoints (tenant_id, url, description, events, filters, mode, secret, enabled,
                       position_xid)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, pg_snapshot_xmin(pg_current_snapshot()))
RETURNING *

-- name: endpoint_list
SELECT * FROM endpoints WHERE tenant_id = $1 ORDER BY created_at, endpoint_id

-- name: endpoint_get
SELECT * FROM endpoints WHERE tenant_id = $1 AND endpoint_id = $2

-- name: endpoint_update
-- Re-enabling clears the reason and the failure count, and tries at once. A worker holding the
-- endpoint lets it go at its next move, and whoever claims it next reads the new settings.
UPDATE endpoints
SET url = coalesce($3, url), description = coalesce($4, description),
    events = coalesce($5, events), filters = coalesce($6, filters), mode = coalesce($7, mode),
    enabled = coalesce($8, enabled),
    disabled_reason = CASE WHEN $8 THEN NULL ELSE disabled_reason END,
    attempts = CASE WHEN $8 AND NOT enabled THEN 0 ELSE attempts END,
    failing_since = CASE WHEN $8 AND NOT enabled THEN NULL ELSE failing_since END,
    next_at = CASE WHEN $8 AND NOT enabled THEN now() ELSE next_at END,
    owner = NULL, lease_until = NULL
WHERE tenant_id = $1 AND endpoint_id = $2
RETURNING *

-- name: endpoint_delete
DELETE FROM endpoints WHERE tenant_id = $1 AND endpoint_id = $2 RETURNING endpoint_id

-- name: endpoint_rotate
UPDATE endpoints
SET old_secret = secret, old_secret_until = now() + make_interval(secs => $4), secret = $3,
    owner = NULL, lease_until = NULL
WHERE tenant_id = $1 AND endpoint_id = $2
RETURNING *

-- name: fanout_first
-- The first feed row of the tenant at or after time $2, or after position ($3, $4).
SELECT xid::text::bigint AS xid, seq FROM fanout_feed
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR at >= $2)
  AND ($3::bigint IS NULL OR (xid, seq) > ($3::text::xid8, $4::bigint))
  AND xid < pg_snapshot_xmin(pg_current_snapshot())  -- never past a row still committing
ORDER BY xid, seq
LIMIT 1

-- name: endpoint_rewind
-- Replay: the position goes back to ($3, $4) (NULL: the frontier, nothing to send again).
-- A worker holding the endpoint loses it (its next move is refused) and it is claimed afresh.
UPDATE endpoints
SET position_xid = coalesce($3::text::xid8, pg_snapshot_xmin(pg_current_snapshot())),
    position_seq = $4, attempts = 0, next_at = now(), failing_since = NULL,
    owner = NULL, lease_until = NULL
WHERE tenant_id = $1 AND endpoint_id = $2
RETURNING position_xid::text::bigint AS xid, position_seq AS seq

-- name: endpoint_attempts
SELECT webhook_id, event, status, ms, error, response, at FROM endpoint_attempts
WHERE endpoint_id = $1 ORDER BY attempt_id DESC LIMIT $2

-- name: fanout_claim
-- Endpoints due (enabled, their next try reached) that no live worker holds.
UPDATE endpoints AS e SET owner = $1, lease_until = now() + make_interval(secs => $2)
WHERE e.endpoint_id IN (
    SELECT endpoint_id FROM endpoints
    WHERE enabled AND next_at <= now() AND (owner IS NULL OR lease_until < now())
    ORDER BY next_at LIMIT $3
    FOR UPDATE SKIP LOCKED)
RETURNING e.endpoint_id, e.tenant_id, e.url, e.events, e.filters, e.mode, e.secret,
          e.old_secret, e.old_secret_until, e.position_xid::text::bigint AS position_xid,
          e.position_seq, e.attempts, e.failing_since

-- name: fanout_renew
UPDATE endpoints SET lease_until = now() + make_interval(secs => $3)
WHERE endpoint_id = $1 AND owner = $2 RETURNING endpoint_id

-- name: fanout_feed_after
-- The tenant's next feed rows after a position, up to the frontier (migration 0003's rule).
SELECT xid::text::bigint AS xid, seq, type, instance_id, message_id, envelope, at
FROM fanout_feed
WHERE tenant_id = $1 AND (xid, seq) > ($2::text::xid8, $3::bigint)
  AND xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, seq
LIMIT $4

-- name: fanout_messages
SELECT m.*, i.name AS instance_name
FROM unnest($2::uuid[], $3::text[]) AS k(instance_id, message_id)
JOIN messages AS m ON m.tenant_id = $1 AND m.instance_id = k.instance_id
                  AND m.message_id = k.message_id AND m.has_content
JOIN instances AS i ON i.tenant_id = m.tenant_id AND i.instance_id = m.instance_id

-- name: fanout_instances
SELECT * FROM instances WHERE tenant_id = $1 AND instance_id = ANY($2::uuid[])

-- name: fanout_advance
-- Delivered (or not for this endpoint): the position moves past it.
UPDATE endpoints
SET position_xid = $3::text::xid8, position_seq = $4, attempts = 0, failing_since = NULL,
    lease_until = now() + make_interval(secs => $5)
WHERE endpoint_id = $1 AND owner = $2
RETURNING endpoint_id

-- name: fanout_failed
-- A failed try: the next at $3; the endpoint is let go (another worker may take it then).
UPDATE endpoints
SET attempts = attempts + 1, next_at = $3, failing_since = coalesce(failing_since, now()),
    owner = NULL, lease_until = NULL
WHERE endpoint_id = $1 AND owner = $2
RETURNING attempts, failing_since

-- name: fanout_disable
UPDATE endpoints SET enabled = false, disabled_reason = $3, owner = NULL, lease_until = NULL
WHERE endpoint_id = $1 AND owner = $2
RETURNING endpoint_id

-- name: fanout_disable_failing
-- Failing for days: disabled, its backlog kept (re-enabling delivers it).
UPDATE endpoints SET enabled = false, disabled_reason = $2 WHERE endpoint_id = $1

-- name: fanout_release
-- Caught up (or its turn is over): free, and due again at $3.
UPDATE endpoints SET owner = NULL, lease_until = NULL, next_at = $3
WHERE endpoint_id = $1 AND owner = $2
RETURNING endpoint_id

-- name: fanout_attempt
-- Recorded, and the endpoint's attempts beyond its newest $8 deleted (the ids are global).
WITH added AS (
    INSERT INTO endpoint_attempts (endpoint_id, webhook_id, event, status, ms, error, response)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
)
DELETE FROM endpoint_attempts
WHERE endpoint_id = $1
  AND attempt_id <= (SELECT attempt_id FROM endpoint_attempts WHERE endpoint_id = $1
                     ORDER BY attempt_id DESC OFFSET $8 LIMIT 1)

-- name: fanout_prune_lock
SELECT pg_try_advisory_xact_lock(hashtext('sense_fanout_prune'))

-- name: fanout_prune
-- Feed rows every endpoint of their tenant is past, older than the retention $1 (so a replay
-- can still reach that far); a backlog kept for a disabled endpoint stays, up to four times
-- the retention.
DELETE FROM fanout_feed AS f
WHERE f.at < now() - make_interval(secs => $1)
  AND (f.at < now() - make_interval(secs => 4 * $1)
       OR NOT EXISTS (SELECT 1 FROM endpoints AS e
                      WHERE e.tenant_id = f.tenant_id
                        AND (e.position_xid, e.position_seq) < (f.xid, f.seq)))

-- name: fanout_backlog
-- Per endpoint: feed rows not yet handled (counted up to $1) and the age of the oldest.
SELECT e.endpoint_id, e.enabled, e.failing_since,
       (SELECT count(*) FROM (SELECT 1 FROM fanout_feed AS f
                              WHERE f.tenant_id = e.tenant_id
                                AND (f.xid, f.seq) > (e.position_xid, e.position_seq)
                              LIMIT $1) AS behind) AS backlog,
       (SELECT extract(epoch FROM now() - min(f.at)) FROM (
            SELECT at FROM fanout_feed AS f
            WHERE f.tenant_id = e.tenant_id AND (f.xid, f.seq) > (e.position_xid, e.position_seq)
            ORDER BY f.xid, f.seq LIMIT 1) AS f)::float8 AS oldest_seconds
FROM endpoints AS e
