-- What a source does while an upgrade waits for the owner's approval:
-- 0 keeps running its current version, 1 is paused (no run starts) until
-- the owner approves.
ALTER TABLE sources ADD COLUMN pending_paused INTEGER NOT NULL DEFAULT 0;
