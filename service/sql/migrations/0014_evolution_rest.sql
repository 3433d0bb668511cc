-- Where to ask an Evolution server what it stored (backfill, service/backfill.py): its REST
-- base URL and an API key (its global key, or an instance token). Without them a source works
-- as before and backfill is off for it. The key is a secret: never logged, never returned.
ALTER TABLE sources ADD COLUMN evolution_url text, ADD COLUMN evolution_apikey text;
