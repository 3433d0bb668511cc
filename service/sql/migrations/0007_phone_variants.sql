-- The other form of one person's number as a JID (webhook doc §7: BR with / without the 9th
-- digit, MX 1, AR 9), or NULL. The SQL twin of jid::phone_variant for canonical JIDs, used by
-- the cold paths (chats.*, contacts.*) whose staging rows carry no variant; messages carry one
-- computed natively. tests/integration/test_webhook.py holds it to the native function.
CREATE FUNCTION sense_phone_variant(jid text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT CASE
        -- BR: a mobile (6-9 in the 8-digit form) after a DDD without a 0
        WHEN jid ~ '^55[1-9]{2}9[6-9][0-9]{7}@s\.whatsapp\.net$' THEN overlay(jid PLACING '' FROM 5 FOR 1)
        WHEN jid ~ '^55[1-9]{2}[6-9][0-9]{7}@s\.whatsapp\.net$' THEN overlay(jid PLACING '9' FROM 5 FOR 0)
        -- MX: a national number starts with 2-9
        WHEN jid ~ '^521[2-9][0-9]{9}@s\.whatsapp\.net$' THEN overlay(jid PLACING '' FROM 3 FOR 1)
        WHEN jid ~ '^52[2-9][0-9]{9}@s\.whatsapp\.net$' THEN overlay(jid PLACING '1' FROM 3 FOR 0)
        -- AR: a geographic number starts with 1-3
        WHEN jid ~ '^549[1-3][0-9]{9}@s\.whatsapp\.net$' THEN overlay(jid PLACING '' FROM 3 FOR 1)
        WHEN jid ~ '^54[1-3][0-9]{9}@s\.whatsapp\.net$' THEN overlay(jid PLACING '9' FROM 3 FOR 0)
    END
$$;
