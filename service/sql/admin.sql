-- Named queries of the registry operations (service/admin.py) and the demo set-up of `sense run`.

-- name: insert_tenant
INSERT INTO tenants (tenant_id, name, token_hash) VALUES ($1, $2, $3)

-- name: insert_source
INSERT INTO sources (source_id, name, secret_hash) VALUES ($1, $2, $3)

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
