-- Gauges that need a query (service/observe.py), computed by one server process at a time.

-- name: observe_lock
SELECT pg_try_advisory_xact_lock(hashtext('sense_observe'))

-- name: observe_enrichment
-- From the reconciler's watermark (nothing before it is pending, migration 0009), over at most
-- $1 messages: how many wait for their analysis, and since when.
SELECT count(*) FILTER (WHERE p.pending) AS pending,
       coalesce(extract(epoch FROM now() - min(p.content_at) FILTER (WHERE p.pending)), 0)::float8
           AS oldest_seconds
FROM (
    SELECT m.content_at, m.analysis_state = 'pending' AS pending
    FROM messages AS m, sense_reconcile AS r
    WHERE m.has_content AND (m.content_at, m.seq) > (r.content_at, r.seq)
    ORDER BY m.content_at, m.seq
    LIMIT $1
) AS p

-- name: observe_instances
-- Instances by state, and those open with no message for $1 seconds (nor a state change).
SELECT coalesce(i.state, 'unknown') AS state, count(*) AS n,
       count(*) FILTER (
           WHERE i.state = 'open'
             AND coalesce(greatest((SELECT max(c.last_message_ts) FROM chats AS c
                                    WHERE c.tenant_id = i.tenant_id
                                      AND c.instance_id = i.instance_id), i.state_at),
                          i.created_at) < now() - make_interval(secs => $1)) AS silent
FROM instances AS i
GROUP BY 1
