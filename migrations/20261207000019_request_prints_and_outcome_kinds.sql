-- What a keyed command asked for, and which recorded outcomes took effect.
--
-- `command_print` on the event that completes a keyed command, and
-- `request_print` on an outcome recorded without events, hold the first
-- 16 bytes of the SHA-256 of the command as decided (its kind, name and
-- canonical JSON arguments): a key sent again with another request is
-- then refused rather than answered with the first request's outcome.
-- `accepted` tells outcomes that took effect (kept for retries) from
-- refusals (kept only to answer "what became of it"), so that recovering
-- a pool reads the few that took effect and not every refusal of the
-- idempotency window.
--
-- New columns without a default change only the catalogue: no rewrite.
-- Rows written before, and rows a node of the earlier build writes during
-- a rolling upgrade, have none of them: they are read as before (taking
-- effect, and with no request to compare).
SET LOCAL lock_timeout = '10s';
ALTER TABLE events ADD COLUMN command_print bytea;
ALTER TABLE commands ADD COLUMN request_print bytea;
ALTER TABLE commands ADD COLUMN accepted boolean;
