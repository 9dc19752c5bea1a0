-- The few rows the setup view asks after on every view, in indexes of
-- their own: a source's unfinished runs, and its pending interactions in
-- the order they were asked. Without them the view's lookups built a
-- temporary table for the list of unfinished states and sorted the
-- pending interactions on every view.
CREATE INDEX runs_active ON runs (source_id)
    WHERE state IN ('queued', 'running', 'waiting_for_owner');
CREATE INDEX interactions_pending ON interactions (source_id, created_at)
    WHERE state = 'pending';
