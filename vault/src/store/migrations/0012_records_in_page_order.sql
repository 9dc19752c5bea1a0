-- Records are kept in the order clients page through them: by
-- (source, stream, updated_at, key). A page is then one range of the
-- table, where it was a range of an index and a table lookup per record.
-- The connector's key stays unique per (source, stream); upserts name it.
-- The columns are declared in the primary key's order (older SQLite
-- command-line shells misreport a WITHOUT ROWID table whose key columns
-- are out of order as corrupt).
CREATE TABLE records_in_page_order (
    source_id  INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    stream     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    key        TEXT NOT NULL,
    data       TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, stream, updated_at, key)
) STRICT, WITHOUT ROWID;

INSERT INTO records_in_page_order (source_id, stream, key, data, run_id, created_at, updated_at)
    SELECT source_id, stream, key, data, run_id, created_at, updated_at FROM records;

DROP TABLE records;
ALTER TABLE records_in_page_order RENAME TO records;
CREATE UNIQUE INDEX records_by_key ON records (source_id, stream, key);
