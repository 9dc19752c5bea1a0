-- Data directory settings recorded at init (key wrapper, production mode).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Owners exist from day one; a single-owner deployment has exactly one.
CREATE TABLE owners (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) STRICT;

-- AUTOINCREMENT: ids are never reused, and they are part of every
-- credential's associated data.
CREATE TABLE sources (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id   INTEGER NOT NULL REFERENCES owners(id),
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (owner_id, name)
) STRICT;

-- One row per key-encryption key version. `params` says how to reach the KEK
-- (key file name, KDF parameters and salt, or HSM object label); `verifier`
-- is a random key wrapped by it, so a wrong KEK is detected before any data
-- is touched.
CREATE TABLE kek_versions (
    version    INTEGER PRIMARY KEY,
    params     TEXT NOT NULL,
    verifier   BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
) STRICT;

-- A revoked credential keeps its metadata row, but its wrapped data key is
-- destroyed (NULL), so the sealed value can never be opened again.
CREATE TABLE credentials (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id     INTEGER NOT NULL REFERENCES owners(id),
    source_id    INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    class        TEXT NOT NULL,
    provenance   TEXT NOT NULL,
    version      INTEGER NOT NULL,
    kek_version  INTEGER NOT NULL REFERENCES kek_versions(version),
    wrapped_key  BLOB,
    sealed_value BLOB NOT NULL,
    value_len    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    rotated_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    UNIQUE (source_id, name)
) STRICT;
CREATE INDEX credentials_by_kek ON credentials (kek_version);

-- Append-only, hash-chained: hash = SHA-256(prev_hash || row fields).
-- Owner, source and credential are names, so rows outlive deleted sources.
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    owner      TEXT,
    source     TEXT,
    credential TEXT,
    run_id     TEXT,
    outcome    TEXT NOT NULL,
    prev_hash  BLOB NOT NULL,
    hash       BLOB NOT NULL
) STRICT;
