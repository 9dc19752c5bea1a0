-- The setup engine's facts about each source: how it is set up, what its
-- last verification said, and which account it turned out to be.
ALTER TABLE sources ADD COLUMN modality TEXT;
ALTER TABLE sources ADD COLUMN identity_id TEXT;
ALTER TABLE sources ADD COLUMN identity_display TEXT;
ALTER TABLE sources ADD COLUMN verified_at INTEGER;
ALTER TABLE sources ADD COLUMN verify_failure_kind TEXT;
ALTER TABLE sources ADD COLUMN verify_failure TEXT;
ALTER TABLE sources ADD COLUMN verify_failed_at INTEGER;
-- The identity the owner confirmed although another source of the same
-- connector is connected to it.
ALTER TABLE sources ADD COLUMN confirmed_identity TEXT;

-- A modality of a connector version is proven once a source set up with it
-- verified and then collected successfully (or the catalog ships a proof).
CREATE TABLE proofs (
    connector_id TEXT NOT NULL,
    version      TEXT NOT NULL,
    modality     TEXT NOT NULL,
    evidence     TEXT NOT NULL,
    proven_at    INTEGER NOT NULL,
    PRIMARY KEY (connector_id, version, modality)
) STRICT;

-- A newer installed version that asks for more than the source's version
-- did, waiting for the owner's approval; the source keeps running its
-- current version meanwhile. `pending_changes` lists what it asks for (JSON).
ALTER TABLE sources ADD COLUMN pending_version TEXT;
ALTER TABLE sources ADD COLUMN pending_changes TEXT;

-- Set when a verification found a different account than the source was
-- connected to; cleared when the owner confirms the switch.
ALTER TABLE sources ADD COLUMN identity_changed_from TEXT;
