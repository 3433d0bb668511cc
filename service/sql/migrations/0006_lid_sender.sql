-- Group senders filed under a bare @lid are moved to the phone when a later payload tells it
-- (upsert_lid_map, moved_senders): find them without scanning the tenant's messages.
CREATE INDEX messages_lid_sender ON messages (tenant_id, sender_jid) WHERE sender_jid LIKE '%@lid';
