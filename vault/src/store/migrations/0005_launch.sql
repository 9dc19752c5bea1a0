-- The launch seam: queued, retried and cancelled runs, which process runs
-- them, owner interactions, schedules, and sources that need re-auth.
ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN retry_of TEXT;
-- Not started before this time (ms); retries wait out their backoff here.
ALTER TABLE runs ADD COLUMN not_before INTEGER;
-- The process running it; it holds runners/<runner>.lock while alive.
ALTER TABLE runs ADD COLUMN runner TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_by_state ON runs (state, not_before);
-- "Is a run of this source in flight?" on every launch; it also serves the
-- runs of one source, so the older (source_id, started_at) index goes: one
-- index fewer to write per run.
CREATE INDEX runs_by_source_state ON runs (source_id, state);
DROP INDEX runs_by_source;

-- Set when a run failed with auth_rejected; cleared when the owner stores a
-- credential for the source.
ALTER TABLE sources ADD COLUMN needs_reauth TEXT;

-- A question a run asked its owner. The answer itself is never stored
-- here: it is sealed in interaction_answers like a credential.
CREATE TABLE interactions (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    source_id   INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    prompt      TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    deadline    INTEGER NOT NULL,
    answered_at INTEGER
) STRICT;
CREATE INDEX interactions_by_state ON interactions (state, source_id);
-- Child-key index: inserting or deleting a run checks interactions by run.
CREATE INDEX interactions_by_run ON interactions (run_id);

-- An answer waiting for its run, sealed under a data key bound to
-- (source, interaction). Deleted when the run takes it.
CREATE TABLE interaction_answers (
    interaction_id TEXT PRIMARY KEY REFERENCES interactions(id) ON DELETE CASCADE,
    owner_id       INTEGER NOT NULL REFERENCES owners(id),
    source_id      INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    kek_version    INTEGER NOT NULL REFERENCES kek_versions(version),
    wrapped_key    BLOB NOT NULL,
    sealed_value   BLOB NOT NULL
) STRICT;

-- When a source runs on its own: every `interval_secs`, or on a cron
-- expression. `next_at` is the next due time (ms).
CREATE TABLE schedules (
    source_id     INTEGER PRIMARY KEY REFERENCES sources(id) ON DELETE CASCADE,
    interval_secs INTEGER,
    cron          TEXT,
    next_at       INTEGER NOT NULL,
    CHECK ((interval_secs IS NULL) != (cron IS NULL))
) STRICT;
