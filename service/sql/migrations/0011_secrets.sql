-- Secrets that can be rotated and revoked, instance keys kept as hashes like every other
-- secret, and a choice (per instance, with a per-source default) to refuse webhooks that
-- present no instance apikey.
--
-- tenants.token_hash / sources.secret_hash NULL: revoked (no token or secret works until the
-- next rotation). sources.old_secret_hash: the secret before the last rotation, still accepted
-- until old_secret_until (Evolution can be reconfigured without losing a webhook).
-- instances.require_apikey NULL: the source's default.

ALTER TABLE tenants ALTER COLUMN token_hash DROP NOT NULL;
ALTER TABLE sources ALTER COLUMN secret_hash DROP NOT NULL;
ALTER TABLE sources
    ADD COLUMN old_secret_hash bytea,
    ADD COLUMN old_secret_until timestamptz,
    ADD COLUMN require_apikey boolean NOT NULL DEFAULT false;

DROP TRIGGER instances_notify ON instances;
ALTER TABLE instances ADD COLUMN apikey_hash bytea, ADD COLUMN require_apikey boolean;
UPDATE instances SET apikey_hash = sha256(convert_to(apikey, 'UTF8')) WHERE apikey IS NOT NULL;
ALTER TABLE instances DROP COLUMN apikey;

DROP TRIGGER tenants_notify ON tenants;
DROP TRIGGER sources_notify ON sources;
CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OF name, token_hash OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION sense_registry_notify();
CREATE TRIGGER sources_notify
    AFTER INSERT OR UPDATE OF name, secret_hash, old_secret_hash, old_secret_until, require_apikey
    OR DELETE ON sources
    FOR EACH STATEMENT EXECUTE FUNCTION sense_registry_notify();
CREATE TRIGGER instances_notify
    AFTER INSERT OR UPDATE OF tenant_id, source_id, name, apikey_hash, require_apikey
    OR DELETE ON instances
    FOR EACH STATEMENT EXECUTE FUNCTION sense_registry_notify();
