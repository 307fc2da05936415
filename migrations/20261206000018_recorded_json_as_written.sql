-- Events and recorded outcomes are kept as the text they were written as.
--
-- As `jsonb` they came back with their keys reordered and spaces added:
-- a retried command, whose outcome is read back from the journal,
-- answered it in other bytes than its first answer, and the reservation
-- and history routes showed events in another form than the command that
-- decided them. Nothing looks inside these columns (no index, no
-- operator), so `json`, which keeps the text as given after checking
-- that it is JSON, is all they need; it is also cheaper to write.
--
-- Rows written before keep the form `jsonb` gave them. The change
-- rewrites both tables and their indexes once, holding them locked while
-- it does: about 4 s per million events on a 2-vCPU machine, in which
-- every node's appends wait. It waits at most 10 s for its lock, so that
-- a long read in progress fails the migration (the node then does not
-- start, and applies it on its next start) rather than stalls every
-- query queued behind it. A node of the earlier version, during a rolling
-- upgrade, writes `jsonb` values, which PostgreSQL casts on assignment,
-- and reads the columns as text.
SET LOCAL lock_timeout = '10s';
ALTER TABLE events ALTER COLUMN payload TYPE json;
ALTER TABLE commands ALTER COLUMN outcome TYPE json;
