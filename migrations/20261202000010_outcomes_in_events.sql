-- A leaner append: an accepted command's outcome is its events, and the
-- history's end is the events' own.
--
-- The outcome of an accepted command repeated its events in a row of
-- `commands` of its own. Now the command's last event carries its
-- idempotency key and how many events the command decided (that one and
-- those just before it): the outcome is read back from them (the index is
-- the next migration's). `commands` keeps the outcomes that have no events
-- to carry them (refusals, and acceptances that changed nothing), and
-- those written before. The host writes both columns or neither; a CHECK
-- would cost every append the parsing of its expression again.
ALTER TABLE events ADD COLUMN command_key text;
ALTER TABLE events ADD COLUMN command_events integer;

-- Appends no longer lock and move the pool's row: the (pool_id, seq_nr) key
-- refuses a second writer of the same number, and each append checks that
-- the history ends where it continues from. `last_seq` stays for nodes of
-- earlier versions during a rolling upgrade.
COMMENT ON COLUMN pools.last_seq IS
    'No longer moved by appends (since 20261202000010); the history ends at max(events.seq_nr)';

-- Nothing selects by these columns: statistics of them would only make
-- each ANALYZE sort a sample of JSON documents and state blobs.
ALTER TABLE events ALTER COLUMN payload SET STATISTICS 0;
ALTER TABLE commands ALTER COLUMN outcome SET STATISTICS 0;
ALTER TABLE pool_views ALTER COLUMN view SET STATISTICS 0;
ALTER TABLE snapshots ALTER COLUMN state SET STATISTICS 0;
