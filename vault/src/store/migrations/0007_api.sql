-- API tokens, stored hashed (SHA-256 of the whole token; tokens carry 256
-- random bits). Owner tokens reach the owner surface only; client tokens
-- reach the read surface only, for one source and the streams listed.
CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('owner', 'client')),
    hash       BLOB NOT NULL UNIQUE,
    owner_id   INTEGER NOT NULL REFERENCES owners(id),
    source_id  INTEGER REFERENCES sources(id) ON DELETE CASCADE,
    streams    TEXT,
    label      TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    CHECK ((kind = 'client') = (source_id IS NOT NULL))
) STRICT;

-- Client reads page through a stream by (updated_at, key).
CREATE INDEX records_by_update ON records (source_id, stream, updated_at, key);
