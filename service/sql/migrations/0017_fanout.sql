-- Fan-out (service/fanout.py, workers/fanout.py): each tenant's endpoints, the tenant's change
-- feed they read from, and their recent delivery attempts.

CREATE TABLE endpoints (
    endpoint_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    url              text NOT NULL,
    description      text,
    events           text[] NOT NULL,
    filters          jsonb NOT NULL DEFAULT '{}',  -- {"from_me", "groups", "instances"}
    mode             text NOT NULL DEFAULT 'sense',  -- sense | evolution
    secret           text NOT NULL,                  -- whsec_…, shown once
    old_secret       text,                           -- still signed with until old_secret_until
    old_secret_until timestamptz,
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    -- delivery: the last feed row handled, the failed attempts at the next one, when to try
    -- again, and the worker holding it (a lease, renewed while it delivers)
    position_xid     xid8 NOT NULL,
    position_seq     bigint NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    next_at          timestamptz NOT NULL DEFAULT now(),
    failing_since    timestamptz,
    owner            text,
    lease_until      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX endpoints_tenant ON endpoints (tenant_id);
CREATE INDEX endpoints_due ON endpoints (next_at) WHERE enabled;

-- Every process reloads its map of which tenants keep Evolution envelopes for their endpoints.
CREATE TRIGGER endpoints_notify AFTER INSERT OR UPDATE OF mode OR DELETE
    ON endpoints FOR EACH STATEMENT EXECUTE FUNCTION sense_registry_notify();

-- The change feed of tenants that have endpoints, in commit order (as messages.content_xid,
-- migration 0003: readers stop at pg_snapshot_xmin, so a row committed late by a slower
-- transaction is never skipped). Written in the statement that makes the change, only for
-- tenants with an endpoint: the ingest of every other tenant pays nothing for it. `envelope`:
-- the Evolution envelope as received, for endpoints in `evolution` mode.
CREATE TABLE fanout_feed (
    tenant_id    uuid NOT NULL,
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    type         text NOT NULL,
    instance_id  uuid NOT NULL,
    message_id   text,
    envelope     jsonb,
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, xid, seq)
);
CREATE INDEX fanout_feed_at ON fanout_feed (tenant_id, at);
CREATE INDEX fanout_feed_age ON fanout_feed (at);  -- the prune

CREATE TABLE endpoint_attempts (
    endpoint_id  uuid NOT NULL REFERENCES endpoints ON DELETE CASCADE,
    attempt_id   bigint GENERATED ALWAYS AS IDENTITY,
    webhook_id   text NOT NULL,
    event        text NOT NULL,
    status       integer,             -- the HTTP status; NULL: no answer (error says why)
    ms           integer NOT NULL,
    error        text,
    response     text,                -- the first bytes of the answer
    at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, attempt_id)
);

-- An envelope kept for `evolution` endpoints, as the ingest statement takes it.
CREATE TYPE sense_envelope_in AS (
    tenant_id uuid, instance_id uuid, message_id text, type text, envelope text
);
