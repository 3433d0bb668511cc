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

-- name: doctor_quarantine
SELECT s.name AS source, q.instance_name, count(*) AS events
FROM quarantine AS q JOIN sources AS s USING (source_id)
GROUP BY 1, 2 ORDER BY 3 DESC

-- name: doctor_endpoints
-- Endpoints that are failing, or were disabled by a failure (not by their tenant).
SELECT t.name AS tenant, e.url, e.enabled, e.disabled_reason, e.failing_since
FROM endpoints AS e JOIN tenants AS t USING (tenant_id)
WHERE (e.enabled AND e.failing_since IS NOT NULL)
   OR (NOT e.enabled AND e.disabled_reason IS NOT NULL)
ORDER BY e.failing_since NULLS LAST

-- name: doctor_sources
SELECT source_id, name, evolution_url, evolution_apikey FROM sources ORDER BY name

-- name: doctor_instances
SELECT i.name,
       (SELECT max(c.last_message_ts) FROM chats AS c
        WHERE c.tenant_id = i.tenant_id AND c.instance_id = i.instance_id) AS last_message_ts
FROM instances AS i WHERE i.source_id = $1
