-- A stored schedule that can never fire again (a cron expression past its
-- last year, an interval out of range) is disabled with the reason, which
-- the owner sees, instead of failing every scheduler tick. Setting the
-- schedule again clears it.
ALTER TABLE schedules ADD COLUMN disabled TEXT;
