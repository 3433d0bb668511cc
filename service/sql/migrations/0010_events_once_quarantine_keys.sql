-- Events kept as received (calls, labels, instance lifecycle, unknown future events) are stored
-- once per instance, like every other write: a redelivery of the same event with the same data
-- (Evolution retrying a webhook whose answer it missed, the global and per-instance webhooks
-- both firing, a quarantine replay of an event that also arrived live, concurrent replays) is a
-- no-op. The digest covers the event name and the data as jsonb prints it (key order and
-- spacing do not matter).

ALTER TABLE events ADD COLUMN digest bytea;
UPDATE events SET digest = sha256(convert_to(event || E'\n' || coalesce(data::text, ''), 'UTF8'));
DELETE FROM events a USING events b
WHERE a.tenant_id = b.tenant_id AND a.instance_id = b.instance_id AND a.digest = b.digest
  AND a.event_id > b.event_id;
ALTER TABLE events ALTER COLUMN digest SET NOT NULL;
CREATE UNIQUE INDEX events_once ON events (tenant_id, instance_id, digest);

-- Quarantine keeps no instance apikey: the copy of the body has it removed and only its hash
-- is kept beside it (a replay checks it against the instance's key like a live post would).
-- Rows expire (SENSE_QUARANTINE_RETENTION_DAYS), found by age.
ALTER TYPE sense_quarantine_in ADD ATTRIBUTE apikey_hash bytea;
ALTER TABLE quarantine ADD COLUMN apikey_hash bytea;
CREATE INDEX quarantine_received ON quarantine (received_at);

-- sense_ingest() of 0008, with the events insert made idempotent, the quarantine insert
-- keeping the apikey hash, and a chat's last message chosen by (time, id), so that messages
-- of the same second give the same last message in any delivery order (the only changes).
-- Returns the messages whose content is stored and that this call created or changed, as the
-- live stream shows them (the columns of api.message_from_row and the commit position), so
-- that nobody reads them back after the commit.
CREATE OR REPLACE FUNCTION sense_ingest(
    lids sense_lid_in[],
    msgs sense_message_in[],
    contacts_in sense_contact_in[],
    chats_in sense_chat_in[],
    groups_in sense_group_in[],
    states_in sense_state_in[],
    qrs_in sense_qr_in[],
    events_in sense_event_in[],
    quarantine_in sense_quarantine_in[]
) RETURNS TABLE (
    tenant_id uuid, instance_id uuid, message_id text, created boolean, chat_jid text,
    chat_type text, sender_jid text, sender_phone text, from_me boolean, push_name text,
    type text, text text, status smallint, edited_text text, edit_ts bigint, deleted boolean,
    reactions jsonb, quoted_message_id text, message_ts timestamptz, analysis_state text,
    sentiment real, emotion text, satisfaction smallint, analysis_error text, seq bigint,
    content_xid bigint
)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    s record;
BEGIN
    IF cardinality(lids) > 0 THEN
        -- Learn @lid -> phone pairs (the latest one wins); move what is already filed under a
        -- newly learned @lid: lid chats and their messages, and messages whose sender was that
        -- @lid (group members, §7: the phone is told by any payload, earlier or later).
        WITH learned AS (
            INSERT INTO lid_map AS l (tenant_id, lid_jid, phone_jid)
            SELECT DISTINCT ON (x.tenant_id, x.lid_jid) x.tenant_id, x.lid_jid, x.phone_jid
            FROM unnest(lids) WITH ORDINALITY AS x(tenant_id, lid_jid, phone_jid, ord)
            ORDER BY x.tenant_id, x.lid_jid, x.ord DESC
            ON CONFLICT (tenant_id, lid_jid) DO UPDATE
                SET phone_jid = EXCLUDED.phone_jid, learned_at = now()
                WHERE l.phone_jid <> EXCLUDED.phone_jid
            RETURNING l.tenant_id, l.lid_jid, l.phone_jid
        ),
        moved_messages AS (
            UPDATE messages AS m
            SET chat_jid = learned.phone_jid,
                chat_type = 'user',
                sender_jid = CASE WHEN m.sender_jid = learned.lid_jid
                                  THEN learned.phone_jid ELSE m.sender_jid END,
                sender_phone = CASE WHEN m.sender_jid = learned.lid_jid
                                    THEN split_part(learned.phone_jid, '@', 1)
                                    ELSE m.sender_phone END,
                updated_at = now()
            FROM learned
            WHERE m.tenant_id = learned.tenant_id AND m.chat_type = 'lid'
              AND m.chat_jid = learned.lid_jid
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
            WHERE c.tenant_id = learned.tenant_id AND c.chat_type = 'lid'
              AND c.chat_jid = learned.lid_jid
            RETURNING c.tenant_id, c.instance_id, learned.phone_jid, c.name, c.unread, c.deleted,
                      c.last_message_id, c.last_message_ts
        )
        INSERT INTO chats AS c (tenant_id, instance_id, chat_jid, chat_type, name, unread,
                                deleted, last_message_id, last_message_ts)
        SELECT DISTINCT ON (mc.tenant_id, mc.instance_id, mc.phone_jid)
               mc.tenant_id, mc.instance_id, mc.phone_jid, 'user', mc.name, mc.unread,
               mc.deleted, mc.last_message_id, mc.last_message_ts
        FROM moved_chats AS mc
        ORDER BY mc.tenant_id, mc.instance_id, mc.phone_jid, mc.last_message_ts DESC NULLS LAST,
                 mc.last_message_id DESC
        ON CONFLICT (tenant_id, instance_id, chat_jid) DO UPDATE SET
            name = coalesce(c.name, EXCLUDED.name),
            unread = coalesce(c.unread, EXCLUDED.unread),
            last_message_id = CASE WHEN (EXCLUDED.last_message_ts, EXCLUDED.last_message_id)
                                        > (coalesce(c.last_message_ts, '-infinity'::timestamptz),
                                           coalesce(c.last_message_id, ''))
                                   THEN EXCLUDED.last_message_id ELSE c.last_message_id END,
            last_message_ts = GREATEST(c.last_message_ts, EXCLUDED.last_message_ts),
            updated_at = now();
    END IF;

    IF cardinality(msgs) > 0 THEN
        -- Content: first one wins (duplicates change nothing). Status: only forward. Edit:
        -- newest wins. Deleted: sticky. Reactions: newest per reactor.
        -- One person, one chat (webhook doc §7: BR with / without the 9th digit, MX 1, AR 9):
        -- a user chat whose number has a second form (chat_variant) is filed under the form
        -- this instance already has a chat for (its own form first, so nothing filed moves);
        -- when neither exists yet and this batch brings both, both land on the longer form
        -- whatever their order. Later messages then find that chat, so the first form stored
        -- stays the conversation's JID.
        RETURN QUERY
        WITH batch AS (
            SELECT * FROM unnest(msgs)
        ),
        batch_forms AS (
            SELECT DISTINCT b.tenant_id, b.instance_id, b.chat_jid
            FROM batch AS b
            WHERE b.has_content AND b.chat_variant IS NOT NULL
        ),
        placed AS (
            SELECT b.*,
                   CASE WHEN b.chat_variant IS NULL OR own.chat_jid IS NOT NULL THEN b.chat_jid
                        WHEN other.chat_jid IS NOT NULL THEN b.chat_variant
                        WHEN bv.chat_jid IS NOT NULL
                             AND length(b.chat_variant) > length(b.chat_jid)
                            THEN b.chat_variant
                        ELSE b.chat_jid END AS filed_jid
            FROM batch AS b
            -- One primary-key probe per row. As plain joins the planner, which knows nothing
            -- of the array, may hash all of chats / lid_map; OFFSET 0 keeps each lookup a
            -- lateral subquery (LIMIT 1 would be dropped on a unique key).
            LEFT JOIN LATERAL (
                SELECT x.chat_jid FROM chats AS x
                WHERE b.chat_variant IS NOT NULL AND x.tenant_id = b.tenant_id
                  AND x.instance_id = b.instance_id AND x.chat_jid = b.chat_jid
                OFFSET 0
            ) AS own ON true
            LEFT JOIN LATERAL (
                SELECT x.chat_jid FROM chats AS x
                WHERE b.chat_variant IS NOT NULL AND x.tenant_id = b.tenant_id
                  AND x.instance_id = b.instance_id AND x.chat_jid = b.chat_variant
                OFFSET 0
            ) AS other ON true
            LEFT JOIN batch_forms AS bv
                ON b.chat_variant IS NOT NULL AND bv.tenant_id = b.tenant_id
               AND bv.instance_id = b.instance_id AND bv.chat_jid = b.chat_variant
        ),
        staged AS (
            SELECT p.tenant_id, p.instance_id, p.message_id, p.has_content,
                   CASE WHEN lc.phone_jid IS NOT NULL THEN lc.phone_jid
                        ELSE p.filed_jid END AS chat_jid,
                   CASE WHEN lc.phone_jid IS NOT NULL THEN 'user' ELSE p.chat_type END
                       AS chat_type,
                   -- the sender of a message in a 1:1 chat is that chat: it shows one way too
                   CASE WHEN ls.phone_jid IS NOT NULL THEN ls.phone_jid
                        WHEN p.filed_jid <> p.chat_jid AND p.sender_jid = p.chat_jid
                            THEN p.filed_jid
                        ELSE p.sender_jid END AS sender_jid,
                   CASE WHEN ls.phone_jid IS NOT NULL THEN split_part(ls.phone_jid, '@', 1)
                        WHEN p.filed_jid <> p.chat_jid AND p.sender_jid = p.chat_jid
                            THEN split_part(p.filed_jid, '@', 1)
                        ELSE p.sender_phone END AS sender_phone,
                   p.from_me, p.push_name, p.type, p.text, p.quoted_message_id, p.message_ts,
                   p.status, p.edited_text, p.edit_ts, p.deleted, p.reactions::jsonb AS reactions
            FROM placed AS p
            LEFT JOIN LATERAL (
                SELECT l.phone_jid FROM lid_map AS l
                WHERE p.chat_type = 'lid' AND l.tenant_id = p.tenant_id
                  AND l.lid_jid = p.chat_jid
                OFFSET 0
            ) AS lc ON true
            LEFT JOIN LATERAL (
                SELECT l.phone_jid FROM lid_map AS l
                WHERE p.sender_jid LIKE '%@lid' AND l.tenant_id = p.tenant_id
                  AND l.lid_jid = p.sender_jid
                OFFSET 0
            ) AS ls ON true
            -- rows lock in key order whatever the join plan (flushers of other processes
            -- overlap)
            ORDER BY p.tenant_id, p.instance_id, p.message_id
        ),
        upserted AS (
            INSERT INTO messages AS m (
                tenant_id, instance_id, message_id, has_content, content_at, chat_jid,
                chat_type, sender_jid, sender_phone, from_me, push_name, type, text,
                quoted_message_id, message_ts, status, edited_text, edit_ts, deleted,
                reactions, analysis_state
            )
            SELECT st.tenant_id, st.instance_id, st.message_id, st.has_content,
                   CASE WHEN st.has_content THEN now() END, st.chat_jid, st.chat_type,
                   st.sender_jid, st.sender_phone, st.from_me, st.push_name, st.type, st.text,
                   st.quoted_message_id, st.message_ts, st.status, st.edited_text, st.edit_ts,
                   st.deleted, st.reactions,
                   CASE WHEN st.has_content AND st.text IS NULL THEN 'skipped'
                        ELSE 'pending' END
            FROM staged AS st
            ON CONFLICT (tenant_id, instance_id, message_id) DO UPDATE SET
                has_content = m.has_content OR EXCLUDED.has_content,
                content_at = CASE WHEN m.has_content THEN m.content_at
                                  ELSE EXCLUDED.content_at END,
                chat_jid = CASE WHEN m.has_content THEN m.chat_jid ELSE EXCLUDED.chat_jid END,
                chat_type = CASE WHEN m.has_content THEN m.chat_type
                                 ELSE EXCLUDED.chat_type END,
                sender_jid = CASE WHEN m.has_content THEN m.sender_jid
                                  ELSE EXCLUDED.sender_jid END,
                sender_phone = CASE WHEN m.has_content THEN m.sender_phone
                                    ELSE EXCLUDED.sender_phone END,
                from_me = CASE WHEN m.has_content THEN m.from_me ELSE EXCLUDED.from_me END,
                push_name = CASE WHEN m.has_content THEN m.push_name
                                 ELSE EXCLUDED.push_name END,
                type = CASE WHEN m.has_content THEN m.type ELSE EXCLUDED.type END,
                text = CASE WHEN m.has_content THEN m.text ELSE EXCLUDED.text END,
                quoted_message_id = CASE WHEN m.has_content THEN m.quoted_message_id
                                         ELSE EXCLUDED.quoted_message_id END,
                message_ts = CASE WHEN m.has_content THEN m.message_ts
                                  ELSE EXCLUDED.message_ts END,
                analysis_state = CASE WHEN m.has_content THEN m.analysis_state
                                      ELSE EXCLUDED.analysis_state END,
                status = GREATEST(m.status, EXCLUDED.status),
                edited_text = CASE WHEN EXCLUDED.edit_ts > coalesce(m.edit_ts, -1)
                                        OR (EXCLUDED.edit_ts = m.edit_ts
                                            AND m.edited_text IS NULL)
                                   THEN EXCLUDED.edited_text ELSE m.edited_text END,
                edit_ts = GREATEST(m.edit_ts, EXCLUDED.edit_ts),
                deleted = m.deleted OR EXCLUDED.deleted,
                reactions = sense_merge_reactions(m.reactions, EXCLUDED.reactions),
                updated_at = now()
            WHERE NOT m.has_content
               OR EXCLUDED.status > coalesce(m.status, -1)
               OR EXCLUDED.edit_ts > coalesce(m.edit_ts, -1)
               OR (EXCLUDED.edit_ts = m.edit_ts AND m.edited_text IS NULL
                   AND EXCLUDED.edited_text IS NOT NULL)
               OR (EXCLUDED.deleted AND NOT m.deleted)
               OR EXCLUDED.reactions <> '{}'::jsonb
            RETURNING m.tenant_id, m.instance_id, m.message_id, m.has_content, m.chat_jid,
                      m.chat_type, m.sender_jid, m.sender_phone, m.from_me, m.push_name,
                      m.type, m.text, m.status, m.edited_text, m.edit_ts, m.deleted,
                      m.reactions, m.quoted_message_id, m.message_ts, m.analysis_state,
                      m.sentiment, m.emotion, m.satisfaction, m.analysis_error, m.seq,
                      m.content_xid, (m.content_at = now()) AS created
        ),
        chats_touched AS (
            INSERT INTO chats AS c (tenant_id, instance_id, chat_jid, chat_type,
                                    last_message_id, last_message_ts)
            SELECT DISTINCT ON (u.tenant_id, u.instance_id, u.chat_jid)
                   u.tenant_id, u.instance_id, u.chat_jid, u.chat_type, u.message_id,
                   u.message_ts
            FROM upserted AS u
            WHERE u.created AND u.chat_jid IS NOT NULL
            ORDER BY u.tenant_id, u.instance_id, u.chat_jid, u.message_ts DESC NULLS LAST,
                     u.message_id DESC
            ON CONFLICT (tenant_id, instance_id, chat_jid) DO UPDATE SET
                -- the latest message; of messages of the same second (WhatsApp timestamps are
                -- whole seconds) the greatest id, so that any delivery order gives the same
                last_message_id = CASE WHEN (EXCLUDED.last_message_ts, EXCLUDED.last_message_id)
                                            > (coalesce(c.last_message_ts,
                                                        '-infinity'::timestamptz),
                                               coalesce(c.last_message_id, ''))
                                       THEN EXCLUDED.last_message_id
                                       ELSE c.last_message_id END,
                last_message_ts = GREATEST(c.last_message_ts, EXCLUDED.last_message_ts),
                deleted = false,
                updated_at = now()
        )
        SELECT u.tenant_id, u.instance_id, u.message_id, u.created, u.chat_jid, u.chat_type,
               u.sender_jid, u.sender_phone, u.from_me, u.push_name, u.type, u.text, u.status,
               u.edited_text, u.edit_ts, u.deleted, u.reactions, u.quoted_message_id,
               u.message_ts, u.analysis_state, u.sentiment, u.emotion, u.satisfaction,
               u.analysis_error, u.seq, u.content_xid::text::bigint
        FROM upserted AS u
        WHERE u.has_content;
    END IF;

    IF cardinality(contacts_in) > 0 THEN
        -- Several rows for one contact merge like consecutive upserts would: the latest
        -- non-null value of each field wins. A number with a second form (BR 9th digit, MX 1,
        -- AR 9) is filed under the form this instance knows (a contact or chat of its own form
        -- first, then of the other), else, both forms in this batch, under the longer: one
        -- person, one contact, named like their chat.
        WITH forms AS (
            SELECT x.*, sense_phone_variant(x.jid) AS variant
            FROM unnest(contacts_in) WITH ORDINALITY
                 AS x(tenant_id, instance_id, jid, push_name, profile_pic_url, ord)
        ),
        placed AS (
            SELECT f.tenant_id, f.instance_id, f.push_name, f.profile_pic_url, f.ord,
                   CASE WHEN f.variant IS NULL OR own.known THEN f.jid
                        WHEN other.known
                          OR (length(f.variant) > length(f.jid)
                              AND EXISTS (SELECT 1 FROM forms AS g
                                          WHERE g.tenant_id = f.tenant_id
                                            AND g.instance_id = f.instance_id
                                            AND g.jid = f.variant))
                            THEN f.variant
                        ELSE f.jid END AS jid
            FROM forms AS f
            -- primary-key probes, only for numbers with a second form
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
        SELECT p.tenant_id, p.instance_id, p.jid,
               (array_agg(p.push_name ORDER BY p.ord DESC)
                    FILTER (WHERE p.push_name IS NOT NULL))[1],
               (array_agg(p.profile_pic_url ORDER BY p.ord DESC)
                    FILTER (WHERE p.profile_pic_url IS NOT NULL))[1]
        FROM placed AS p
        GROUP BY p.tenant_id, p.instance_id, p.jid
        ORDER BY p.tenant_id, p.instance_id, p.jid  -- rows lock in key order across processes
        ON CONFLICT (tenant_id, instance_id, jid) DO UPDATE SET
            push_name = coalesce(EXCLUDED.push_name, c.push_name),
            profile_pic_url = coalesce(EXCLUDED.profile_pic_url, c.profile_pic_url),
            updated_at = now();
    END IF;

    IF cardinality(chats_in) > 0 THEN
        -- 2.3.7 still sends chats.* with the @lid after its upserts named the phone (and lost
        -- the LID). An @lid whose phone is known is that phone's chat; one we cannot place only
        -- updates a lid chat that messages created, so it never shows up as a second, empty
        -- chat of the same person. Likewise a number with a second form updates the chat of
        -- the form this instance has (its own first), else, both forms in this batch, the
        -- longer one.
        WITH resolved AS (
            SELECT x.tenant_id, x.instance_id, coalesce(l.phone_jid, x.chat_jid) AS chat_jid,
                   CASE WHEN l.phone_jid IS NOT NULL THEN 'user' ELSE x.chat_type END
                       AS chat_type,
                   x.name, x.unread, x.deleted, x.ord
            FROM unnest(chats_in) WITH ORDINALITY
                 AS x(tenant_id, instance_id, chat_jid, chat_type, name, unread, deleted, ord)
            LEFT JOIN LATERAL (  -- a probe per row, not a hash of lid_map
                SELECT y.phone_jid FROM lid_map AS y
                WHERE x.chat_type = 'lid' AND y.tenant_id = x.tenant_id
                  AND y.lid_jid = x.chat_jid
                OFFSET 0
            ) AS l ON true
            WHERE x.chat_type <> 'lid' OR l.phone_jid IS NOT NULL
               OR EXISTS (SELECT 1 FROM chats AS y  -- OFFSET 0: a probe, not a hashed subplan
                          WHERE y.tenant_id = x.tenant_id AND y.instance_id = x.instance_id
                            AND y.chat_jid = x.chat_jid OFFSET 0)
        ),
        forms AS (
            SELECT r.*,
                   CASE WHEN r.chat_type = 'user' THEN sense_phone_variant(r.chat_jid) END
                       AS variant
            FROM resolved AS r
        ),
        placed AS (
            SELECT f.tenant_id, f.instance_id, f.chat_type, f.name, f.unread, f.deleted, f.ord,
                   CASE WHEN f.variant IS NULL OR own.chat_jid IS NOT NULL THEN f.chat_jid
                        WHEN other.chat_jid IS NOT NULL THEN f.variant
                        WHEN length(f.variant) > length(f.chat_jid)
                             AND EXISTS (SELECT 1 FROM forms AS g
                                         WHERE g.tenant_id = f.tenant_id
                                           AND g.instance_id = f.instance_id
                                           AND g.chat_jid = f.variant)
                            THEN f.variant
                        ELSE f.chat_jid END AS chat_jid
            FROM forms AS f
            LEFT JOIN LATERAL (
                SELECT y.chat_jid FROM chats AS y
                WHERE f.variant IS NOT NULL AND y.tenant_id = f.tenant_id
                  AND y.instance_id = f.instance_id AND y.chat_jid = f.chat_jid
                OFFSET 0
            ) AS own ON true
            LEFT JOIN LATERAL (
                SELECT y.chat_jid FROM chats AS y
                WHERE f.variant IS NOT NULL AND y.tenant_id = f.tenant_id
                  AND y.instance_id = f.instance_id AND y.chat_jid = f.variant
                OFFSET 0
            ) AS other ON true
        )
        INSERT INTO chats AS c (tenant_id, instance_id, chat_jid, chat_type, name, unread,
                                deleted)
        SELECT p.tenant_id, p.instance_id, p.chat_jid,
               (array_agg(p.chat_type ORDER BY p.ord DESC))[1],
               (array_agg(p.name ORDER BY p.ord DESC) FILTER (WHERE p.name IS NOT NULL))[1],
               (array_agg(p.unread ORDER BY p.ord DESC) FILTER (WHERE p.unread IS NOT NULL))[1],
               (array_agg(p.deleted ORDER BY p.ord DESC))[1]
        FROM placed AS p
        GROUP BY p.tenant_id, p.instance_id, p.chat_jid
        ORDER BY p.tenant_id, p.instance_id, p.chat_jid  -- rows lock in key order
        ON CONFLICT (tenant_id, instance_id, chat_jid) DO UPDATE SET
            name = coalesce(EXCLUDED.name, c.name),
            unread = coalesce(EXCLUDED.unread, c.unread),
            deleted = EXCLUDED.deleted,
            updated_at = now();
    END IF;

    IF cardinality(groups_in) > 0 THEN
        INSERT INTO groups AS g (tenant_id, instance_id, group_jid, subject, metadata)
        SELECT x.tenant_id, x.instance_id, x.group_jid,
               (array_agg(x.subject ORDER BY x.ord DESC) FILTER (WHERE x.subject IS NOT NULL))[1],
               (array_agg(x.metadata ORDER BY x.ord DESC)
                    FILTER (WHERE x.metadata IS NOT NULL))[1]::jsonb
        FROM unnest(groups_in) WITH ORDINALITY
             AS x(tenant_id, instance_id, group_jid, subject, metadata, ord)
        GROUP BY x.tenant_id, x.instance_id, x.group_jid
        ORDER BY x.tenant_id, x.instance_id, x.group_jid  -- rows lock in key order
        ON CONFLICT (tenant_id, instance_id, group_jid) DO UPDATE SET
            subject = coalesce(EXCLUDED.subject, g.subject),
            metadata = coalesce(EXCLUDED.metadata, g.metadata),
            updated_at = now();
    END IF;

    -- Connection states and QR codes are rare: applied one by one, in arrival order.
    FOR s IN SELECT * FROM unnest(states_in) LOOP
        UPDATE instances AS i
        SET state = s.state, state_reason = s.state_reason,
            owner_jid = coalesce(s.owner_jid, i.owner_jid),
            profile_name = coalesce(s.profile_name, i.profile_name), state_at = now(),
            qr_code = CASE WHEN s.state = 'open' THEN NULL ELSE i.qr_code END,
            qr_base64 = CASE WHEN s.state = 'open' THEN NULL ELSE i.qr_base64 END,
            pairing_code = CASE WHEN s.state = 'open' THEN NULL ELSE i.pairing_code END
        WHERE i.tenant_id = s.tenant_id AND i.instance_id = s.instance_id;
    END LOOP;
    FOR s IN SELECT * FROM unnest(qrs_in) LOOP
        UPDATE instances AS i
        SET qr_code = s.qr_code, qr_base64 = s.qr_base64, pairing_code = s.pairing_code,
            qr_at = now()
        WHERE i.tenant_id = s.tenant_id AND i.instance_id = s.instance_id;
    END LOOP;

    IF cardinality(events_in) > 0 THEN
        INSERT INTO events (tenant_id, instance_id, event, data, digest)
        SELECT x.tenant_id, x.instance_id, x.event, x.data::jsonb,
               sha256(convert_to(x.event || E'\n' || coalesce(x.data::jsonb::text, ''), 'UTF8'))
        FROM unnest(events_in) AS x
        ON CONFLICT (tenant_id, instance_id, digest) DO NOTHING;
    END IF;
    IF cardinality(quarantine_in) > 0 THEN
        INSERT INTO quarantine (source_id, instance_name, event, reason, body, apikey_hash)
        SELECT x.source_id, x.instance_name, x.event, x.reason, x.body, x.apikey_hash
        FROM unnest(quarantine_in) AS x;
    END IF;
    RETURN;
END
$fn$;
