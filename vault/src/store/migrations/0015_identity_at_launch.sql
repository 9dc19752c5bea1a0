-- Every run verifies its account before it collects. When the account a
-- source's credentials belong to changes, the account it was connected to
-- is kept beside the new one until the owner chooses: accept the new
-- account, move its credentials into a source of their own, or discard
-- them. Kept as id and display, so either choice can put it back.
ALTER TABLE sources ADD COLUMN previous_identity_id TEXT;
ALTER TABLE sources ADD COLUMN previous_identity_display TEXT;
-- A change recorded before this version kept only the text shown for the
-- previous account ("name (provider id N)").
UPDATE sources SET previous_identity_display = identity_changed_from
    WHERE identity_changed_from IS NOT NULL;
ALTER TABLE sources DROP COLUMN identity_changed_from;

-- The account a run verified before it collected, as shown to the owner.
ALTER TABLE runs ADD COLUMN account TEXT;
