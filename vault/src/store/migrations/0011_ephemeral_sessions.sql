-- A browser-login source whose session lives only for the run that logged
-- in: 1 erases its session credential when each run ends, so every run
-- asks the owner to log in. 0 keeps the session for later runs.
ALTER TABLE sources ADD COLUMN ephemeral_session INTEGER NOT NULL DEFAULT 0;
