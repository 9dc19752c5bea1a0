-- OAuth clients the operator registered with providers, one per connector.
-- A confidential client's secret is sealed under a data key of its own.
CREATE TABLE oauth_clients (
    connector_id  TEXT PRIMARY KEY,
    authorize_url TEXT NOT NULL,
    token_url     TEXT NOT NULL,
    client_id     TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    kek_version   INTEGER,
    wrapped_key   BLOB,
    sealed_secret BLOB,
    created_at    INTEGER NOT NULL,
    CHECK ((wrapped_key IS NULL) = (sealed_secret IS NULL))
) STRICT;

-- Authorizations started and not completed yet. The state travels through
-- the owner's browser and is kept here only as its SHA-256; the PKCE
-- verifier is sealed. One use each: completing deletes the row.
CREATE TABLE oauth_pending (
    id              TEXT PRIMARY KEY,
    state_hash      BLOB NOT NULL UNIQUE,
    owner_id        INTEGER NOT NULL REFERENCES owners(id),
    source_id       INTEGER NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    credential      TEXT NOT NULL,
    kek_version     INTEGER NOT NULL,
    wrapped_key     BLOB NOT NULL,
    sealed_verifier BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
) STRICT;
