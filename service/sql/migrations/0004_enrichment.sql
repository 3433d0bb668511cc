-- Enrichment: the reconciler looks for messages still waiting for analysis (their enqueue was
-- lost while Redis was down, or a worker died with them). Pending rows are few at any time,
-- so a partial index keeps that look-up cheap however big the table grows.
CREATE INDEX messages_pending ON messages (content_at)
    WHERE has_content AND analysis_state = 'pending';
