-- Collected records: one row per (source, stream, primary key), upserted.
CREATE TABLE records (
    source_id  INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    stream     TEXT NOT NULL,
    key        TEXT NOT NULL,
    data       TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, stream, key)
) STRICT, WITHOUT ROWID;

-- The connector's opaque position per (source, stream).
CREATE TABLE checkpoints (
    source_id  INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    stream     TEXT NOT NULL,
    state      TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, stream)
) STRICT;
