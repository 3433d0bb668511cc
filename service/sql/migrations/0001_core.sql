-- Core schema: registry (tenants, sources, instances), messages, contacts, chats, groups,
-- the @lid -> phone map, other events, and quarantine. Every table holding tenant data leads
-- its primary key with tenant_id.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE tenants (
    tenant_id   uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    token_hash  bytea NOT NULL UNIQUE,          -- sha256 of the API token; the token is shown once
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sources (
    source_id   uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL UNIQUE,          -- sha256 of the webhook secret
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instances (
    tenant_id     uuid NOT NULL REFERENCES tenants ON DELETE CASCADE,
    instance_id   uuid NOT NULL,
    source_id     uuid NOT NULL REFERENCES sources ON DELETE CASCADE,
    name          text NOT NULL,
    apikey        text,
    state         text,
    state_reason  integer,
    owner_jid     text,
    profile_name  text,
    state_at      timestamptz,
    qr_code       text,
    qr_base64     text,
    pairing_code  text,
    qr_at         timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, instance_id),
    UNIQUE (instance_id),
    UNIQUE (source_id, name),                   -- Evolution instance names are unique per server
    UNIQUE (tenant_id, name)                    -- and the read API names an instance within a tenant
);

-- Every server process keeps the registry in memory and reloads it on this notification.
CREATE FUNCTION sense_registry_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sense_registry', TG_TABLE_NAME);
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OF name, token_hash OR DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION sense_registry_notify();
CREATE TRIGGER sources_notify AFTER INSERT OR UPDATE OF name, secret_hash OR DELETE ON sources
    FOR EACH STATEMENT EXECUTE FUNCTION sense_registry_notify();
CREATE TRIGGER instances_notify AFTER INSERT OR UPDATE OF tenant_id, source_id, name, apikey OR DELETE
    ON instances FOR EACH STATEMENT EXECUTE FUNCTION sense_registry_notify();

CREATE SEQUENCE message_seq;

-- One row per (instance, WhatsApp message id). A status, edit, delete or reaction that arrives
-- before its message creates a row with has_content = false that the read API does not show;
-- the message fills it in when it lands. All merges are commutative, so arrival order is free.
CREATE TABLE messages (
    tenant_id          uuid NOT NULL,
    instance_id        uuid NOT NULL,
    message_id         text NOT NULL,
    seq                bigint NOT NULL DEFAULT nextval('message_seq'),
    has_content        boolean NOT NULL DEFAULT false,
    content_at         timestamptz,
    chat_jid           text,
    chat_type          text,
    sender_jid         text,
    sender_phone       text,
    from_me            boolean,
    push_name          text,
    type               text,
    text               text,
    quoted_message_id  text,
    message_ts         timestamptz,
    status             smallint,                -- rank, see service/ingest.py STATUS_RANK
    edited_text        text,
    edit_ts            bigint,                  -- ms; the newest edit wins
    deleted            boolean NOT NULL DEFAULT false,
    reactions          jsonb NOT NULL DEFAULT '{}',   -- {reactor_jid: {"emoji": e, "ts": ms}}
    analysis_state     text NOT NULL DEFAULT 'pending',
    sentiment          real,
    emotion            text,
    satisfaction       smallint,
    analysis_error     text,
    analyzed_at        timestamptz,
    embedding          vector(384),
    received_at        timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, instance_id, message_id)
);
CREATE INDEX messages_tenant_ts ON messages (tenant_id, message_ts DESC, seq DESC) WHERE has_content;
CREATE INDEX messages_chat_ts ON messages (tenant_id, instance_id, chat_jid, message_ts DESC, seq DESC)
    WHERE has_content;
CREATE INDEX messages_tenant_seq ON messages (tenant_id, seq) WHERE has_content;
CREATE INDEX messages_lid_chat ON messages (tenant_id, chat_jid) WHERE chat_type = 'lid';

-- Newest reaction per reactor wins; an empty emoji is a removal kept as a tombstone so that an
-- older reaction arriving late does not come back.
CREATE FUNCTION sense_merge_reactions(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
    FROM (
        SELECT DISTINCT ON (k) k, v
        FROM (SELECT key AS k, value AS v FROM jsonb_each(coalesce(a, '{}'))
              UNION ALL
              SELECT key, value FROM jsonb_each(coalesce(b, '{}'))) AS both_sides
        ORDER BY k, (v ->> 'ts')::bigint DESC NULLS LAST
    ) AS newest
$$;

CREATE TABLE lid_map (
    tenant_id   uuid NOT NULL,
    lid_jid     text NOT NULL,
    phone_jid   text NOT NULL,
    learned_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, lid_jid)
);

CREATE TABLE contacts (
    tenant_id        uuid NOT NULL,
    instance_id      uuid NOT NULL,
    jid              text NOT NULL,
    push_name        text,
    profile_pic_url  text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, instance_id, jid)
);

CREATE TABLE chats (
    tenant_id        uuid NOT NULL,
    instance_id      uuid NOT NULL,
    chat_jid         text NOT NULL,
    chat_type        text NOT NULL,
    name             text,
    unread           integer,
    deleted          boolean NOT NULL DEFAULT false,
    last_message_id  text,
    last_message_ts  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, instance_id, chat_jid)
);
CREATE INDEX chats_recent ON chats (tenant_id, last_message_ts DESC NULLS LAST);
CREATE INDEX chats_lid ON chats (tenant_id, chat_jid) WHERE chat_type = 'lid';

CREATE TABLE groups (
    tenant_id     uuid NOT NULL,
    instance_id   uuid NOT NULL,
    group_jid     text NOT NULL,
    subject       text,
    metadata      jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, instance_id, group_jid)
);

-- Events with no table of their own (calls, labels, group participant changes, instance
-- lifecycle, unknown future events), kept as received.
CREATE TABLE events (
    tenant_id     uuid NOT NULL,
    instance_id   uuid NOT NULL,
    event_id      bigint GENERATED ALWAYS AS IDENTITY,
    event         text NOT NULL,
    data          jsonb,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);

-- Events for an instance nobody registered (yet), or that could not be stored; replayed into
-- the right tenant once the instance is registered.
CREATE TABLE quarantine (
    quarantine_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id      uuid NOT NULL REFERENCES sources ON DELETE CASCADE,
    instance_name  text NOT NULL,
    event          text NOT NULL,
    reason         text NOT NULL,
    body           bytea NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_instance ON quarantine (source_id, instance_name, quarantine_id);
