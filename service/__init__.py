"""sense-ingest: multi-tenant receiver for the Evolution API webhook."""
