-- How a message reached us: NULL = a webhook, 'backfill' = recovered from Evolution's
-- REST API (service/backfill.py), so that dashboards and alerts can tell the two apart.
-- Not indexed: the analysis update stays HOT (migration 0009).
ALTER TABLE messages ADD COLUMN origin text;
