-- Named queries. `-- name: x` starts query x; service.db.q("x") returns it.

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES ($1, $2)

-- name: registry_sources
SELECT source_id, name, secret_hash FROM sources

-- name: registry_tenants
SELECT tenant_id, name, token_hash FROM tenants

-- name: registry_instances
SELECT tenant_id, instance_id, source_id, name, apikey FROM instances

-- name: create_staging
-- Each upsert below consumes (DELETEs) the staging rows it reads, so several writes inside one
-- transaction (quarantine replay writes event by event) never see each other's rows. `ord`
-- keeps arrival order: where one batch holds several rows for a key, the last one wins.
CREATE TEMP TABLE IF NOT EXISTS stage_messages (
    tenant_id uuid, instance_id uuid, message_id text, has_content boolean, chat_jid text,
    chat_type text, sender_jid text, sender_phone text, from_me boolean, push_name text,
    type text, text text, quoted_message_id text, message_ts timestamptz, status smallint,
    edited_text text, edit_ts bigint, deleted boolean, reactions text, chat_variant text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_lid (
    tenant_id uuid, lid_jid text, phone_jid text, ord bigint GENERATED ALWAYS AS IDENTITY
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_contacts (
    tenant_id uuid, instance_id uuid, jid text, push_name text, profile_pic_url text,
    ord bigint GENERATED ALWAYS AS IDENTITY
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_chats (
    tenant_id uuid, instance_id uuid, chat_jid text, chat_type text, name text, unread integer,
    deleted boolean, ord bigint GENERATED ALWAYS AS IDENTITY
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_groups (
    tenant_id uuid, instance_id uuid, group_jid text, subject text, metadata text,
    ord bigint GENERATED ALWAYS AS IDENTITY
) ON COMMIT DELETE ROWS

-- name: upsert_lid_map
-- Learn @lid -> phone pairs (the latest one wins); move what is already filed under a newly
-- learned @lid: lid chats and their messages, and messages whose sender was that @lid (group
-- members, §7: the phone is told by any payload, earlier or later).
WITH staged AS (
    DELETE FROM stage_lid RETURNING tenant_id, lid_jid, phone_jid, ord
),
learned AS (
    INSERT INTO lid_map AS l (tenant_id, lid_jid, phone_jid)
    SELECT DISTINCT ON (tenant_id, lid_jid) tenant_id, lid_jid, phone_jid
    FROM staged
    ORDER BY tenant_id, lid_jid, ord DESC
    ON CONFLICT (tenant_id, lid_jid) DO UPDATE
        SET phone_jid = EXCLUDED.phone_jid, learned_at = now()
        WHERE l.phone_jid <> EXCLUDED.phone_jid
    RETURNING tenant_id, lid_jid, phone_jid
),
moved_messages AS (
    UPDATE messages AS m
    SET chat_jid = learned.phone_jid,
        chat_type = 'user',
        sender_jid = CASE WHEN m.sender_jid = learned.lid_jid
                          THEN learned.phone_jid ELSE m.sender_jid END,
        sender_phone = CASE WHEN m.sender_jid = learned.lid_jid
                            THEN split_part(learned.phone_jid, '@', 1) ELSE m.sender_phone END,
        updated_at = now()
    FROM learned
    WHERE m.tenant_id = learned.tenant_id AND m.chat_type = 'lid' AND m.chat_jid = learned.lid_jid
),
moved_senders AS (
    UPDATE messages AS m
    SET sender_jid = learned.phone_jid,
        sender_phone = split_part(learned.phone_jid, '@', 1),
        updated_at = now()
    FROM learned
    WHERE m.tenant_id = learned.tenant_id AND m.sender_jid LIKE '%@lid'
      AND m.sender_jid = learned.lid_jid AND m.chat_type <> 'lid'
),
moved_chats AS (
    DELETE FROM chats AS c
    USING learned
    WHERE c.tenant_id = learned.tenant_id AND c.chat_type = 'lid' AND c.chat_jid = learned.lid_jid
    RETURNING c.tenant_id, c.instance_id, learned.phone_jid, c.name, c.unread, c.deleted,
              c.last_message_id, c.last_message_ts
)
INSERT INTO chats AS c (tenant_id, instance_id, chat_jid, chat_type, name, unread, deleted,
                        last_message_id, last_message_ts)
SELECT DISTINCT ON (tenant_id, instance_id, phone_jid)
       tenant_id, instance_id, phone_jid, 'user', name, unread, deleted, last_message_id,
       last_message_ts
FROM moved_chats
ORDER BY tenant_id, instance_id, phone_jid, last_message_ts DESC NULLS LAST
ON CONFLICT (tenant_id, instance_id, chat_jid) DO UPDATE SET
    name = coalesce(c.name, EXCLUDED.name),
    unread = coalesce(c.unread, EXCLUDED.unread),
    last_message_id = CASE WHEN EXCLUDED.last_message_ts
                                > coalesce(c.last_message_ts, '-infinity'::timestamptz)
                           THEN EXCLUDED.last_message_id ELSE c.last_message_id END,
    last_message_ts = GREATEST(c.last_message_ts, EXCLUDED.last_message_ts),
    updated_at = now()

-- name: upsert_messages
-- One row per message key in stage_messages (merged beforehand). Content: first one wins
-- (duplicates change nothing). Status: only forward. Edit: newest wins. Deleted: sticky.
-- Reactions: newest per reactor. Returns the rows that changed; `created` is true for rows
-- whose content arrived in this transaction.
-- One person, one chat (webhook doc §7: BR with / without the 9th digit, MX 1, AR 9): a user
-- chat whose number has a second form (chat_variant) is filed under the form this instance
-- already has a chat for (its own form first, so nothing filed moves); when neither exists yet
-- and this batch brings both, both land on the longer form whatever their order. Later
-- messages then find that chat, so the first form stored stays the conversation's JID.
WITH consumed AS (
    DELETE FROM stage_messages RETURNING *
),
batch_forms AS (
    SELECT DISTINCT tenant_id, instance_id, chat_jid
    FROM consumed
    WHERE has_content AND chat_variant IS NOT NULL
),
placed AS (
    SELECT s.*,
           CASE WHEN s.chat_variant IS NULL OR own.chat_jid IS NOT NULL THEN s.chat_jid
                WHEN other.chat_jid IS NOT NULL THEN s.chat_variant
                WHEN bv.chat_jid IS NOT NULL AND length(s.chat_variant) > length(s.chat_jid)
                    THEN s.chat_variant
                ELSE s.chat_jid END AS filed_jid
    FROM consumed AS s
    -- One primary-key probe per staged row. As plain joins the planner, which has no
    -- statistics on the staging table, hashes all of chats / lid_map on every flush; OFFSET 0
    -- keeps each lookup a lateral subquery (LIMIT 1 would be dropped on a unique key).
    LEFT JOIN LATERAL (
        SELECT x.chat_jid FROM chats AS x
        WHERE s.chat_variant IS NOT NULL AND x.tenant_id = s.tenant_id
          AND x.instance_id = s.instance_id AND x.chat_jid = s.chat_jid
        OFFSET 0
    ) AS own ON true
    LEFT JOIN LATERAL (
        SELECT x.chat_jid FROM chats AS x
        WHERE s.chat_variant IS NOT NULL AND x.tenant_id = s.tenant_id
          AND x.instance_id = s.instance_id AND x.chat_jid = s.chat_variant
        OFFSET 0
    ) AS other ON true
    LEFT JOIN batch_forms AS bv
        ON s.chat_variant IS NOT NULL AND bv.tenant_id = s.tenant_id
       AND bv.instance_id = s.instance_id AND bv.chat_jid = s.chat_variant
),
staged AS (
    SELECT s.tenant_id, s.instance_id, s.message_id, s.has_content,
           CASE WHEN lc.phone_jid IS NOT NULL THEN lc.phone_jid ELSE s.filed_jid END AS chat_jid,
           CASE WHEN lc.phone_jid IS NOT NULL THEN 'user' ELSE s.chat_type END AS chat_type,
           -- the sender of a message in a 1:1 chat is that chat: it shows one way too
           CASE WHEN ls.phone_jid IS NOT NULL THEN ls.phone_jid
                WHEN s.filed_jid <> s.chat_jid AND s.sender_jid = s.chat_jid THEN s.filed_jid
                ELSE s.sender_jid END AS sender_jid,
           CASE WHEN ls.phone_jid IS NOT NULL THEN split_part(ls.phone_jid, '@', 1)
                WHEN s.filed_jid <> s.chat_jid AND s.sender_jid = s.chat_jid
                    THEN split_part(s.filed_jid, '@', 1)
                ELSE s.sender_phone END AS sender_phone,
           s.from_me, s.push_name, s.type, s.text, s.quoted_message_id, s.message_ts, s.status,
           s.edited_text, s.edit_ts, s.deleted, s.reactions::jsonb AS reactions
    FROM placed AS s
    LEFT JOIN LATERAL (
        SELECT l.phone_jid FROM lid_map AS l
        WHERE s.chat_type = 'lid' AND l.tenant_id = s.tenant_id AND l.lid_jid = s.chat_jid
        OFFSET 0
    ) AS lc ON true
    LEFT JOIN LATERAL (
        SELECT l.phone_jid FROM lid_map AS l
        WHERE s.sender_jid LIKE '%@lid' AND l.tenant_id = s.tenant_id
          AND l.lid_jid = s.sender_jid
        OFFSET 0
    ) AS ls ON true
    -- rows lock in key order whatever the join plan (flushers of other processes overlap)
    ORDER BY s.tenant_id, s.instance_id, s.message_id
),
upserted AS (
    INSERT INTO messages AS m (
        tenant_id, instance_id, message_id, has_content, content_at, chat_jid, chat_type,
        sender_jid, sender_phone, from_me, push_name, type, text, quoted_message_id, message_ts,
        status, edited_text, edit_ts, deleted, reactions, analysis_state
    )
    SELECT tenant_id, instance_id, message_id, has_content,
           CASE WHEN has_content THEN now() END, chat_jid, chat_type, sender_jid, sender_phone,
           from_me, push_name, type, text, quoted_message_id, message_ts, status, edited_text,
           edit_ts, deleted, reactions,
           CASE WHEN has_content AND text IS NULL THEN 'skipped' ELSE 'pending' END
    FROM staged
    ON CONFLICT (tenant_id, instance_id, message_id) DO UPDATE SET
        has_content = m.has_content OR EXCLUDED.has_content,
        content_at = CASE WHEN m.has_content THEN m.content_at ELSE EXCLUDED.content_at END,
        chat_jid = CASE WHEN m.has_content THEN m.chat_jid ELSE EXCLUDED.chat_jid END,
        chat_type = CASE WHEN m.has_content THEN m.chat_type ELSE EXCLUDED.chat_type END,
        sender_jid = CASE WHEN m.has_content THEN m.sender_jid ELSE EXCLUDED.sender_jid END,
        sender_phone = CASE WHEN m.has_content THEN m.sender_phone ELSE EXCLUDED.sender_phone END,
        from_me = CASE WHEN m.has_content THEN m.from_me ELSE EXCLUDED.from_me END,
        push_name = CASE WHEN m.has_content THEN m.push_name ELSE EXCLUDED.push_name END,
        type = CASE WHEN m.has_content THEN m.type ELSE EXCLUDED.type END,
        text = CASE WHEN m.has_content THEN m.text ELSE EXCLUDED.text END,
        quoted_message_id = CASE WHEN m.has_content THEN m.quoted_message_id
                                 ELSE EXCLUDED.quoted_message_id END,
        message_ts = CASE WHEN m.has_content THEN m.message_ts ELSE EXCLUDED.message_ts END,
        analysis_state = CASE WHEN m.has_content THEN m.analysis_state
                              ELSE EXCLUDED.analysis_state END,
        status = GREATEST(m.status, EXCLUDED.status),
        edited_text = CASE WHEN EXCLUDED.edit_ts > coalesce(m.edit_ts, -1)
                                OR (EXCLUDED.edit_ts = m.edit_ts AND m.edited_text IS NULL)
                           THEN EXCLUDED.edited_text ELSE m.edited_text END,
        edit_ts = GREATEST(m.edit_ts, EXCLUDED.edit_ts),
        deleted = m.deleted OR EXCLUDED.deleted,
        reactions = sense_merge_reactions(m.reactions, EXCLUDED.reactions),
        updated_at = now()
    WHERE NOT m.has_content
       OR EXCLUDED.status > coalesce(m.status, -1)
       OR EXCLUDED.edit_ts > coalesce(m.edit_ts, -1)
       OR (EXCLUDED.edit_ts = m.edit_ts AND m.edited_text IS NULL AND EXCLUDED.edited_text IS NOT NULL)
       OR (EXCLUDED.deleted AND NOT m.deleted)
       OR EXCLUDED.reactions <> '{}'::jsonb
    RETURNING m.tenant_id, m.instance_id, m.message_id, m.has_content, m.chat_jid, m.chat_type,
              m.message_ts, m.analysis_state, (m.content_at = now()) AS created
),
chats_touched AS (
    INSERT INTO chats AS c (tenant_id, instance_id, chat_jid, chat_type, last_message_id,
                            last_message_ts)
    SELECT DISTINCT ON (tenant_id, instance_id, chat_jid)
           tenant_id, instance_id, chat_jid, chat_type, message_id, message_ts
    FROM upserted
    WHERE created AND chat_jid IS NOT NULL
    ORDER BY tenant_id, instance_id, chat_jid, message_ts DESC NULLS LAST
    ON CONFLICT (tenant_id, instance_id, chat_jid) DO UPDATE SET
        last_message_id = CASE WHEN EXCLUDED.last_message_ts
                                    >= coalesce(c.last_message_ts, '-infinity'::timestamptz)
                               THEN EXCLUDED.last_message_id ELSE c.last_message_id END,
        last_message_ts = GREATEST(c.last_message_ts, EXCLUDED.last_message_ts),
        deleted = false,
        updated_at = now()
)
SELECT tenant_id, instance_id, message_id, has_content, created, analysis_state FROM upserted

-- name: upsert_contacts
-- Several rows for one contact in a batch merge like consecutive upserts would: the latest
-- non-null value of each field wins. A number with a second form (BR 9th digit, MX 1, AR 9)
-- is filed under the form this instance knows (a contact or chat of its own form first, then
-- of the other), else, both forms in this batch, under the longer: one person, one contact,
-- named like their chat (upsert_messages).
WITH staged AS (
    DELETE FROM stage_contacts RETURNING *
),
forms AS (
    SELECT s.*, sense_phone_variant(s.jid) AS variant FROM staged AS s
),
placed AS (
    SELECT f.tenant_id, f.instance_id, f.push_name, f.profile_pic_url, f.ord,
           CASE WHEN f.variant IS NULL OR own.known THEN f.jid
                WHEN other.known
                  OR (length(f.variant) > length(f.jid)
                      AND EXISTS (SELECT 1 FROM forms AS g
                                  WHERE g.tenant_id = f.tenant_id
                                    AND g.instance_id = f.instance_id AND g.jid = f.variant))
                    THEN f.variant
                ELSE f.jid END AS jid
    FROM forms AS f
    -- primary-key probes, only for numbers with a second form (EXISTS here became a hashed
    -- subplan: all of contacts and chats read on every flush; see upsert_messages)
    LEFT JOIN LATERAL (
        SELECT EXISTS (SELECT 1 FROM contacts AS x
                       WHERE x.tenant_id = f.tenant_id AND x.instance_id = f.instance_id
                         AND x.jid = f.jid OFFSET 0)
            OR EXISTS (SELECT 1 FROM chats AS x
                       WHERE x.tenant_id = f.tenant_id AND x.instance_id = f.instance_id
                         AND x.chat_jid = f.jid OFFSET 0) AS known
        WHERE f.variant IS NOT NULL
        OFFSET 0
    ) AS own ON true
    LEFT JOIN LATERAL (
        SELECT EXISTS (SELECT 1 FROM contacts AS x
                       WHERE x.tenant_id = f.tenant_id AND x.instance_id = f.instance_id
                         AND x.jid = f.variant OFFSET 0)
            OR EXISTS (SELECT 1 FROM chats AS x
                       WHERE x.tenant_id = f.tenant_id AND x.instance_id = f.instance_id
                         AND x.chat_jid = f.variant OFFSET 0) AS known
        WHERE f.variant IS NOT NULL
        OFFSET 0
    ) AS other ON true
)
INSERT INTO contacts AS c (tenant_id, instance_id, jid, push_name, profile_pic_url)
SELECT tenant_id, instance_id, jid,
       (array_agg(push_name ORDER BY ord DESC) FILTER (WHERE push_name IS NOT NULL))[1],
       (array_agg(profile_pic_url ORDER BY ord DESC)
            FILTER (WHERE profile_pic_url IS NOT NULL))[1]
FROM placed
GROUP BY tenant_id, instance_id, jid
ORDER BY tenant_id, instance_id, jid  -- rows lock in key order across processes
ON CONFLICT (tenant_id, instance_id, jid) DO UPDATE SET
    push_name = coalesce(EXCLUDED.push_name, c.push_name),
    profile_pic_url = coalesce(EXCLUDED.profile_pic_url, c.profile_pic_url),
    updated_at = now()

-- name: upsert_chats
-- 2.3.7 still sends chats.* with the @lid after its upserts named the phone (and lost the LID).
-- An @lid whose phone is known is that phone's chat; one we cannot place only updates a lid
-- chat that messages created, so it never shows up as a second, empty chat of the same person.
-- Likewise a number with a second form (BR 9th digit, MX 1, AR 9) updates the chat of the form
-- this instance has (its own first), else, both forms in this batch, the longer one.
WITH staged AS (
    DELETE FROM stage_chats RETURNING *
),
resolved AS (
    SELECT s.tenant_id, s.instance_id, coalesce(l.phone_jid, s.chat_jid) AS chat_jid,
           CASE WHEN l.phone_jid IS NOT NULL THEN 'user' ELSE s.chat_type END AS chat_type,
           s.name, s.unread, s.deleted, s.ord
    FROM staged AS s
    LEFT JOIN LATERAL (  -- a probe per row, not a hash of lid_map (see upsert_messages)
        SELECT x.phone_jid FROM lid_map AS x
        WHERE s.chat_type = 'lid' AND x.tenant_id = s.tenant_id AND x.lid_jid = s.chat_jid
        OFFSET 0
    ) AS l ON true
    WHERE s.chat_type <> 'lid' OR l.phone_jid IS NOT NULL
       OR EXISTS (SELECT 1 FROM chats AS x  -- OFFSET 0: a probe, not a hashed subplan
                  WHERE x.tenant_id = s.tenant_id AND x.instance_id = s.instance_id
                    AND x.chat_jid = s.chat_jid OFFSET 0)
),
forms AS (
    SELECT r.*, CASE WHEN r.chat_type = 'user' THEN sense_phone_variant(r.chat_jid) END AS variant
    FROM resolved AS r
),
placed AS (
    SELECT f.tenant_id, f.instance_id, f.chat_type, f.name, f.unread, f.deleted, f.ord,
           CASE WHEN f.variant IS NULL OR own.chat_jid IS NOT NULL THEN f.chat_jid
                WHEN other.chat_jid IS NOT NULL THEN f.variant
                WHEN length(f.variant) > length(f.chat_jid)
                     AND EXISTS (SELECT 1 FROM forms AS g
                                 WHERE g.tenant_id = f.tenant_id
                                   AND g.instance_id = f.instance_id AND g.chat_jid = f.variant)
                    THEN f.variant
                ELSE f.chat_jid END AS chat_jid
    FROM forms AS f
    LEFT JOIN LATERAL (
        SELECT x.chat_jid FROM chats AS x
        WHERE f.variant IS NOT NULL AND x.tenant_id = f.tenant_id
          AND x.instance_id = f.instance_id AND x.chat_jid = f.chat_jid
        OFFSET 0
    ) AS own ON true
    LEFT JOIN LATERAL (
        SELECT x.chat_jid FROM chats AS x
        WHERE f.variant IS NOT NULL AND x.tenant_id = f.tenant_id
          AND x.instance_id = f.instance_id AND x.chat_jid = f.variant
        OFFSET 0
    ) AS other ON true
)
INSERT INTO chats AS c (tenant_id, instance_id, chat_jid, chat_type, name, unread, deleted)
SELECT tenant_id, instance_id, chat_jid, (array_agg(chat_type ORDER BY ord DESC))[1],
       (array_agg(name ORDER BY ord DESC) FILTER (WHERE name IS NOT NULL))[1],
       (array_agg(unread ORDER BY ord DESC) FILTER (WHERE unread IS NOT NULL))[1],
       (array_agg(deleted ORDER BY ord DESC))[1]
FROM placed
GROUP BY tenant_id, instance_id, chat_jid
ORDER BY tenant_id, instance_id, chat_jid  -- rows lock in key order across processes
ON CONFLICT (tenant_id, instance_id, chat_jid) DO UPDATE SET
    name = coalesce(EXCLUDED.name, c.name),
    unread = coalesce(EXCLUDED.unread, c.unread),
    deleted = EXCLUDED.deleted,
    updated_at = now()

-- name: upsert_groups
WITH staged AS (
    DELETE FROM stage_groups RETURNING *
)
INSERT INTO groups AS g (tenant_id, instance_id, group_jid, subject, metadata)
SELECT tenant_id, instance_id, group_jid,
       (array_agg(subject ORDER BY ord DESC) FILTER (WHERE subject IS NOT NULL))[1],
       (array_agg(metadata ORDER BY ord DESC) FILTER (WHERE metadata IS NOT NULL))[1]::jsonb
FROM staged
GROUP BY tenant_id, instance_id, group_jid
ORDER BY tenant_id, instance_id, group_jid  -- rows lock in key order across processes
ON CONFLICT (tenant_id, instance_id, group_jid) DO UPDATE SET
    subject = coalesce(EXCLUDED.subject, g.subject),
    metadata = coalesce(EXCLUDED.metadata, g.metadata),
    updated_at = now()

-- name: update_instance_state
UPDATE instances
SET state = $3, state_reason = $4, owner_jid = coalesce($5, owner_jid),
    profile_name = coalesce($6, profile_name), state_at = now(),
    qr_code = CASE WHEN $3 = 'open' THEN NULL ELSE qr_code END,
    qr_base64 = CASE WHEN $3 = 'open' THEN NULL ELSE qr_base64 END,
    pairing_code = CASE WHEN $3 = 'open' THEN NULL ELSE pairing_code END
WHERE tenant_id = $1 AND instance_id = $2

-- name: update_instance_qr
UPDATE instances
SET qr_code = $3, qr_base64 = $4, pairing_code = $5, qr_at = now()
WHERE tenant_id = $1 AND instance_id = $2

-- name: find_tenants
SELECT tenant_id, name FROM tenants WHERE tenant_id = $1 OR name = $2 ORDER BY tenant_id = $1 DESC LIMIT 1

-- name: find_sources
SELECT source_id, name FROM sources WHERE source_id = $1 OR name = $2 ORDER BY source_id = $1 DESC LIMIT 1

-- name: insert_instance
INSERT INTO instances (tenant_id, instance_id, source_id, name, apikey) VALUES ($1, $2, $3, $4, $5)

-- name: claim_quarantine
-- Quarantined events whose instance is registered now, oldest first, locked for this replay;
-- not those a replay refused already (an apikey that does not match the instance's).
SELECT q.quarantine_id, q.source_id, q.instance_name, q.event, q.body, i.tenant_id,
       i.instance_id, i.apikey
FROM quarantine AS q
JOIN instances AS i ON i.source_id = q.source_id AND i.name = q.instance_name
WHERE ($1::uuid IS NULL OR q.source_id = $1)
  AND ($2::text IS NULL OR q.instance_name = $2)
  AND q.quarantine_id > $3
  AND q.reason NOT LIKE 'refused:%'
ORDER BY q.quarantine_id
LIMIT $4
FOR UPDATE OF q SKIP LOCKED

-- name: refuse_quarantine
UPDATE quarantine SET reason = $2 WHERE quarantine_id = $1

-- name: delete_quarantine
DELETE FROM quarantine WHERE quarantine_id = ANY($1::bigint[])

-- name: list_quarantine
SELECT q.quarantine_id, s.name AS source, q.instance_name, q.event, q.reason, q.received_at,
       octet_length(q.body) AS bytes
FROM quarantine AS q JOIN sources AS s USING (source_id)
ORDER BY q.quarantine_id
LIMIT $1

-- name: list_messages
SELECT * FROM messages
WHERE tenant_id = $1 AND has_content
  AND ($2::uuid IS NULL OR instance_id = $2)
  AND ($3::text[] IS NULL OR chat_jid = ANY($3))  -- a chat in every form it may be filed as
  AND ($4::timestamptz IS NULL OR (message_ts, seq) < ($4, $5::bigint))
ORDER BY message_ts DESC, seq DESC
LIMIT $6

-- name: get_message
SELECT * FROM messages
WHERE tenant_id = $1 AND instance_id = $2 AND message_id = $3 AND has_content

-- name: list_chats
-- Chats with their last message, newest first, and the rolling analysis of the last 50
-- analysed messages of each.
-- m.* comes first: a record answers a repeated column name with its last value, and a chat
-- without a message (chats.upsert) has m.chat_jid, m.instance_id... NULL.
SELECT m.*, c.instance_id, c.chat_jid, c.chat_type, c.name, c.unread, c.last_message_ts,
       a.avg_sentiment, a.avg_satisfaction, a.analyzed_messages
FROM chats AS c
LEFT JOIN messages AS m
    ON m.tenant_id = c.tenant_id AND m.instance_id = c.instance_id
   AND m.message_id = c.last_message_id AND m.has_content
LEFT JOIN LATERAL (
    SELECT avg(x.sentiment)::float8 AS avg_sentiment, avg(x.satisfaction)::float8 AS avg_satisfaction,
           count(*)::int AS analyzed_messages
    FROM (SELECT sentiment, satisfaction FROM messages AS r
          WHERE r.tenant_id = c.tenant_id AND r.instance_id = c.instance_id
            AND r.chat_jid = c.chat_jid AND r.has_content AND r.analysis_state = 'done'
          ORDER BY r.message_ts DESC LIMIT 50) AS x
) AS a ON true
WHERE c.tenant_id = $1 AND NOT c.deleted AND ($2::uuid IS NULL OR c.instance_id = $2)
ORDER BY c.last_message_ts DESC NULLS LAST, c.chat_jid
LIMIT $3

-- name: list_instances
SELECT name, state, state_reason, owner_jid, profile_name, state_at, qr_code, qr_base64,
       pairing_code, qr_at
FROM instances WHERE tenant_id = $1 ORDER BY name

-- name: count_quarantine
SELECT count(*) FROM quarantine

-- name: naive_lookup_instance
-- Benchmark baseline only: the per-request lookup the in-memory registry replaces.
SELECT i.tenant_id, i.instance_id, i.source_id, i.name
FROM instances AS i JOIN sources AS s USING (source_id)
WHERE s.secret_hash = $1 AND i.name = $2

-- name: naive_insert_message
-- Benchmark baseline only: one row, one statement, one transaction. $20 is the chat's other
-- number form (MessageOp.record): filed under it when that form already has messages.
INSERT INTO messages (tenant_id, instance_id, message_id, has_content, chat_jid, chat_type,
                      sender_jid, sender_phone, from_me, push_name, type, text,
                      quoted_message_id, message_ts, status, edited_text, edit_ts, deleted,
                      reactions)
VALUES ($1, $2, $3, $4,
        CASE WHEN EXISTS (SELECT 1 FROM messages AS v
                          WHERE v.tenant_id = $1 AND v.instance_id = $2 AND v.chat_jid = $20
                            AND v.has_content)
             THEN $20::text ELSE $5 END,
        $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19::jsonb)
ON CONFLICT (tenant_id, instance_id, message_id) DO UPDATE
SET status = GREATEST(messages.status, EXCLUDED.status)
