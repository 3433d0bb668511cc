-- Backfill jobs (service/backfill.py): durable, resumable, one active job per instance across
-- every process. A job is claimed with a lease (owner, lease_until) that its runner renews; a
-- runner that dies leaves a lease that expires, and another process resumes the job from
-- `cursor` (the windows still to read and the page reached), which is saved in the same
-- transaction as each page's merge: a page is merged once, whoever resumes.
CREATE TABLE backfill_jobs (
    job_id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL,
    instance_id  uuid NOT NULL,
    source_id    uuid NOT NULL REFERENCES sources ON DELETE CASCADE,
    reason       text NOT NULL,          -- demand | reconnect | startup | sweep
    window_from  timestamptz NOT NULL,
    window_to    timestamptz NOT NULL,
    state        text NOT NULL DEFAULT 'queued',  -- queued | running | done | failed
    not_before   timestamptz NOT NULL DEFAULT now(),  -- a reconnect's job waits for the
                                                      -- offline queue to drain first
    cursor       jsonb,
    pages        integer NOT NULL DEFAULT 0,
    found        integer NOT NULL DEFAULT 0,
    new          integer NOT NULL DEFAULT 0,
    error        text,
    owner        text,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    FOREIGN KEY (tenant_id, instance_id) REFERENCES instances ON DELETE CASCADE
);
CREATE UNIQUE INDEX backfill_jobs_active ON backfill_jobs (instance_id)
    WHERE state IN ('queued', 'running');
CREATE INDEX backfill_jobs_tenant ON backfill_jobs (tenant_id, created_at DESC);

-- Per instance, what the checks found: when it was last swept, how many gaps were found and
-- how many messages recovered, and (down_at) the newest message stored when the instance was
-- last seen leaving `open`, the start of the window a reconnect asks for.
CREATE TABLE backfill_state (
    instance_id     uuid PRIMARY KEY REFERENCES instances (instance_id) ON DELETE CASCADE,
    down_at         timestamptz,
    last_sweep_at   timestamptz,
    gaps_found      integer NOT NULL DEFAULT 0,
    recovered       integer NOT NULL DEFAULT 0,
    last_gap_at     timestamptz
);
