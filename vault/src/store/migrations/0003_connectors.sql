-- Installed connector versions. The component itself is stored in
-- components/<digest>.wasm in the data directory; `manifest` is what its
-- describe() returned at install, `approved` what the operator approved.
CREATE TABLE connectors (
    id           TEXT NOT NULL,
    version      TEXT NOT NULL,
    digest       TEXT NOT NULL,
    api_version  TEXT NOT NULL,
    manifest     TEXT NOT NULL,
    approved     TEXT NOT NULL,
    installed_at INTEGER NOT NULL,
    PRIMARY KEY (id, version)
) STRICT;

-- A source runs one connector with its own non-secret setup values.
ALTER TABLE sources ADD COLUMN connector_id TEXT;
ALTER TABLE sources ADD COLUMN connector_version TEXT;
ALTER TABLE sources ADD COLUMN setup TEXT NOT NULL DEFAULT '{}';
