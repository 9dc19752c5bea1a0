-- Every record's key and data are JSON text, checked by SQLite on every
-- write (`json_valid`, RFC 8259), whoever writes: a client page can then
-- send them as they are stored, without parsing each record again. The
-- runtime stores only keys it printed and records it parsed, so the check
-- never refuses one of its writes. A row stored before the check whose
-- key or data is not JSON is kept as a JSON string of its text.
CREATE TABLE records_holding_json (
    source_id  INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    stream     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    key        TEXT NOT NULL CHECK (json_valid(key)),
    data       TEXT NOT NULL CHECK (json_valid(data)),
    run_id     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, stream, updated_at, key)
) STRICT, WITHOUT ROWID;

INSERT INTO records_holding_json (source_id, stream, updated_at, key, data, run_id, created_at)
    SELECT source_id, stream, updated_at,
           CASE WHEN json_valid(key) THEN key ELSE json_quote(key) END,
           CASE WHEN json_valid(data) THEN data ELSE json_quote(data) END,
           run_id, created_at
    FROM records;

DROP TABLE records;
ALTER TABLE records_holding_json RENAME TO records;
CREATE UNIQUE INDEX records_by_key ON records (source_id, stream, key);
