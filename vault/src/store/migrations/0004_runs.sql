-- One row per launch, refused launches included. `failure` is a typed kind
-- (credentials_missing, egress_denied, ...); `detail` is its message.
CREATE TABLE runs (
    id          TEXT PRIMARY KEY,
    source_id   INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    trigger     TEXT NOT NULL,
    state       TEXT NOT NULL,
    failure     TEXT,
    detail      TEXT,
    records     INTEGER NOT NULL DEFAULT 0,
    connector   TEXT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER
) STRICT;
CREATE INDEX runs_by_source ON runs (source_id, started_at);
