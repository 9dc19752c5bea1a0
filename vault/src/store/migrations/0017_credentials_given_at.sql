-- When the owner last gave a credential's value (stored it, authorized,
-- answered, imported), kept when the host or a connector refreshes it: a
-- verification older than it says nothing of the value given. A refreshed
-- row stored before this version keeps when it was first stored.
ALTER TABLE credentials ADD COLUMN given_at INTEGER;
UPDATE credentials SET given_at = CASE
    WHEN provenance IN ('oauth-refresh', 'connector-refresh') THEN created_at
    ELSE rotated_at END;
