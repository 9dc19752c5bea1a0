-- Per-connector run limits the operator set; a limit left out of the JSON
-- object keeps the host's default.
CREATE TABLE connector_limits (
    connector_id TEXT PRIMARY KEY,
    limits       TEXT NOT NULL
) STRICT;
