-- Backfill (service/backfill.py): jobs, their claims and checkpoints, and what triggers them.

-- name: mark_backfilled
UPDATE messages AS m SET origin = 'backfill'
FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, instance_id, message_id)
WHERE m.tenant_id = k.tenant_id AND m.instance_id = k.instance_id
  AND m.message_id = k.message_id AND m.origin IS NULL

-- name: backfill_instance
-- Every registered instance of that name, with its source's Evolution URL and key.
SELECT i.tenant_id, i.instance_id, i.source_id, i.name, s.name AS source, t.name AS tenant,
       s.evolution_url, s.evolution_apikey
FROM instances AS i JOIN sources AS s USING (source_id) JOIN tenants AS t USING (tenant_id)
WHERE i.name = $1

-- name: backfill_create
-- A job on demand. A queued one of the instance (a check's, not started) becomes it: widened
-- to this window too, on demand, due now. None if one is running (409).
INSERT INTO backfill_jobs (tenant_id, instance_id, source_id, reason, window_from, window_to)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (instance_id) WHERE state IN ('queued', 'running')
DO UPDATE SET window_from = least(backfill_jobs.window_from, EXCLUDED.window_from),
              window_to = greatest(backfill_jobs.window_to, EXCLUDED.window_to),
              reason = 'demand', not_before = now()
WHERE backfill_jobs.state = 'queued' AND backfill_jobs.cursor IS NULL
RETURNING job_id

-- name: backfill_request
-- A job asked for by a check (reconnect, start-up, sweep), not to start before $7: a queued job
-- of the instance is widened to cover the new window too (and waits as long as either); a
-- running one is left alone (none is created).
INSERT INTO backfill_jobs (tenant_id, instance_id, source_id, reason, window_from, window_to,
                           not_before)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (instance_id) WHERE state IN ('queued', 'running')
DO UPDATE SET window_from = least(backfill_jobs.window_from, EXCLUDED.window_from),
              window_to = greatest(backfill_jobs.window_to, EXCLUDED.window_to),
              not_before = CASE WHEN backfill_jobs.reason = 'demand'
                                THEN backfill_jobs.not_before  -- asked for: not delayed
                                ELSE greatest(backfill_jobs.not_before, EXCLUDED.not_before)
                           END
WHERE backfill_jobs.state = 'queued' AND backfill_jobs.cursor IS NULL
RETURNING job_id

-- name: backfill_active
SELECT job_id FROM backfill_jobs WHERE instance_id = $1 AND state IN ('queued', 'running')

-- name: backfill_claim_lock
-- Claims are taken one at a time across processes, so that the per-server limit holds.
SELECT pg_advisory_xact_lock(hashtext('sense_backfill_claim'))

-- name: backfill_claim
-- The oldest claimable job (queued, or running under a lease that expired: its runner died),
-- on-demand ones first, of an Evolution server with fewer than $4 jobs running; $3: only that
-- job.
UPDATE backfill_jobs AS j
SET state = 'running', owner = $1, lease_until = now() + make_interval(secs => $2),
    started_at = coalesce(j.started_at, now())
WHERE j.job_id = (
    SELECT c.job_id FROM backfill_jobs AS c
    WHERE (c.state = 'queued' AND c.not_before <= now()
           OR c.state = 'running' AND c.lease_until < now())
      AND ($3::uuid IS NULL OR c.job_id = $3)
      AND (SELECT count(*) FROM backfill_jobs AS r
           WHERE r.source_id = c.source_id AND r.state = 'running'
             AND r.lease_until >= now()) < $4
    ORDER BY (c.reason = 'demand') DESC, c.created_at
    LIMIT 1)
RETURNING j.job_id, j.tenant_id, j.instance_id, j.source_id, j.reason, j.window_from,
          j.window_to, j.cursor, j.pages, j.found, j.new

-- name: backfill_local_count
-- Messages stored for an instance in [$3, $4] (Evolution's messageTimestamp is whole seconds):
-- what a sweep compares with Evolution's total before reading any page.
SELECT count(*) FROM messages
WHERE tenant_id = $1 AND instance_id = $2 AND has_content
  AND message_ts >= to_timestamp(floor($3::float8)) AND message_ts <= to_timestamp($4::float8)

-- name: backfill_target
SELECT i.name, s.evolution_url, s.evolution_apikey
FROM instances AS i JOIN sources AS s USING (source_id)
WHERE i.instance_id = $1

-- name: backfill_checkpoint
-- After a page (in the transaction that merged it): no row if this runner lost its lease.
UPDATE backfill_jobs
SET cursor = $3, pages = $4, found = $5, new = $6, lease_until = now() + make_interval(secs => $7)
WHERE job_id = $1 AND owner = $2 AND state = 'running'
RETURNING job_id

-- name: backfill_renew
UPDATE backfill_jobs SET lease_until = now() + make_interval(secs => $3)
WHERE job_id = $1 AND owner = $2 AND state = 'running'
RETURNING job_id

-- name: backfill_finish
WITH job AS (
    UPDATE backfill_jobs
    SET state = $3, error = $4, finished_at = now(), owner = NULL, lease_until = NULL
    WHERE job_id = $1 AND owner = $2 AND state = 'running'
    RETURNING instance_id, reason, new, state
)
INSERT INTO backfill_state (instance_id, last_sweep_at, gaps_found, recovered, last_gap_at)
SELECT instance_id, CASE WHEN reason = 'sweep' THEN now() END,
       (new > 0)::int, new, CASE WHEN new > 0 THEN now() END
FROM job
ON CONFLICT (instance_id) DO UPDATE
SET last_sweep_at = coalesce(EXCLUDED.last_sweep_at, backfill_state.last_sweep_at),
    gaps_found = backfill_state.gaps_found + EXCLUDED.gaps_found,
    recovered = backfill_state.recovered + EXCLUDED.recovered,
    last_gap_at = coalesce(EXCLUDED.last_gap_at, backfill_state.last_gap_at)
RETURNING instance_id

-- name: backfill_get
SELECT j.job_id, j.tenant_id, i.name AS instance, s.name AS source, j.reason, j.state,
       j.window_from, j.window_to, j.pages, j.found, j.new, j.error, j.created_at,
       j.started_at, j.finished_at
FROM backfill_jobs AS j JOIN instances AS i USING (instance_id) JOIN sources AS s
  ON s.source_id = j.source_id
WHERE j.job_id = $1

-- name: backfill_list
-- Newest first; $1: one tenant's (NULL: every tenant's).
SELECT j.job_id, j.tenant_id, i.name AS instance, s.name AS source, j.reason, j.state,
       j.window_from, j.window_to, j.pages, j.found, j.new, j.error, j.created_at,
       j.started_at, j.finished_at
FROM backfill_jobs AS j JOIN instances AS i USING (instance_id) JOIN sources AS s
  ON s.source_id = j.source_id
WHERE $1::uuid IS NULL OR j.tenant_id = $1
ORDER BY j.created_at DESC
LIMIT $2

-- name: backfill_lag
-- Seconds since the oldest job still queued or running was asked for (0: none).
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM backfill_jobs WHERE state IN ('queued', 'running')

-- name: backfill_instances
-- Instances of sources with an Evolution URL and key, with the newest message stored for each
-- (their chats' last message) and, for $1, those last swept before that time (NULL: all).
SELECT i.tenant_id, i.instance_id, i.source_id, i.state,
       (SELECT max(c.last_message_ts) FROM chats AS c
        WHERE c.tenant_id = i.tenant_id AND c.instance_id = i.instance_id) AS last_message_ts
FROM instances AS i JOIN sources AS s USING (source_id)
LEFT JOIN backfill_state AS b ON b.instance_id = i.instance_id
WHERE s.evolution_url IS NOT NULL AND s.evolution_apikey IS NOT NULL
  AND ($1::timestamptz IS NULL OR b.last_sweep_at IS NULL OR b.last_sweep_at < $1)

-- name: backfill_sweep_lock
-- One process sweeps at a time; the others skip this round.
SELECT pg_try_advisory_xact_lock(hashtext('sense_backfill_sweep'))

-- name: backfill_swept
INSERT INTO backfill_state (instance_id, last_sweep_at) SELECT unnest($1::uuid[]), now()
ON CONFLICT (instance_id) DO UPDATE SET last_sweep_at = now()

-- name: backfill_states_changed
-- The instances among $1 whose source can be asked, with their connection state now.
SELECT i.tenant_id, i.instance_id, i.source_id, i.state
FROM instances AS i JOIN sources AS s USING (source_id)
WHERE i.instance_id = ANY($1::uuid[])
  AND s.evolution_url IS NOT NULL AND s.evolution_apikey IS NOT NULL

-- name: backfill_went_down
-- An instance left `open`: remember when (the start of the window its reconnect asks for).
INSERT INTO backfill_state (instance_id, down_at) VALUES ($1, now())
ON CONFLICT (instance_id) DO UPDATE
SET down_at = coalesce(backfill_state.down_at, EXCLUDED.down_at)

-- name: backfill_down_since
-- When an instance was seen leaving `open` (NULL if that was not seen).
SELECT down_at FROM backfill_state WHERE instance_id = $1

-- name: backfill_came_back
-- Its reconnect's job is asked for: forget when it went down.
UPDATE backfill_state SET down_at = NULL WHERE instance_id = $1

-- name: backfill_instance_stats
SELECT b.instance_id, b.last_sweep_at, b.gaps_found, b.recovered, b.last_gap_at
FROM backfill_state AS b JOIN instances AS i USING (instance_id)
WHERE i.tenant_id = $1
