-- Named queries of the registry operations (service/admin.py) and the demo set-up of `sense run`.

-- name: insert_tenant
INSERT INTO tenants (tenant_id, name, token_hash) VALUES ($1, $2, $3)

-- name: insert_source
INSERT INTO sources (source_id, name, secret_hash, require_apikey) VALUES ($1, $2, $3, $4)

-- name: set_tenant_token
UPDATE tenants SET token_hash = $2 WHERE tenant_id = $1

-- name: rotate_source_secret
-- The current secret becomes the old one for the overlap (none if revoked or no overlap).
UPDATE sources
SET old_secret_hash = CASE WHEN $3 > 0 THEN secret_hash END,
    old_secret_until = CASE WHEN $3 > 0 AND secret_hash IS NOT NULL
                            THEN now() + make_interval(secs => $3) END,
    secret_hash = $2
WHERE source_id = $1
RETURNING old_secret_until

-- name: revoke_source_secret
UPDATE sources SET secret_hash = NULL, old_secret_hash = NULL, old_secret_until = NULL
WHERE source_id = $1

-- name: demo_tenant_exists
SELECT count(*) > 0 FROM tenants WHERE name = $1

-- name: demo_source_exists
SELECT count(*) > 0 FROM sources WHERE name = $1

-- name: demo_instance_exists
SELECT count(*) > 0 FROM instances WHERE name = $1

-- name: demo_reset_tenant_token
UPDATE tenants SET token_hash = $2 WHERE name = $1

-- name: demo_reset_source_secret
UPDATE sources SET secret_hash = $2 WHERE name = $1

-- name: set_instance_apikey
UPDATE instances SET apikey_hash = $3, require_apikey = $4
WHERE source_id = $1 AND name = $2
RETURNING instance_id

-- name: set_source_evolution
UPDATE sources
SET evolution_url = coalesce($2, evolution_url), evolution_apikey = coalesce($3, evolution_apikey)
WHERE source_id = $1

-- name: source_evolution
SELECT source_id, name, evolution_url, evolution_apikey FROM sources WHERE source_id = $1
