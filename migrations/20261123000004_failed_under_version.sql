-- A pool whose events a plugin version cannot replay is failed *for that
-- version*: another version (a rollback, a fix) tries again, and clears the
-- mark when it succeeds.
ALTER TABLE pools ADD COLUMN failed_digest text;
