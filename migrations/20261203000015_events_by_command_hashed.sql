-- no-transaction
-- Accepted outcomes by pool and command key, in a hash index instead of
-- the B-tree `events_by_command` (dropped by the next migration).
--
-- The B-tree held both texts in every entry, and a load spread over many
-- pools inserts into the middle of it, splitting its pages as it goes. A
-- hash index's entries hold a 4-byte hash: a spread reservation writes
-- about 80 bytes less write-ahead log, a tenth. Look-ups are by equality
-- only. One expression holds both columns, joined by a space (which a
-- pool id never contains), so that a key used in many pools (`order-1`)
-- does not pile into one bucket.
--
-- Built without blocking appends, in a statement of its own, as
-- CONCURRENTLY cannot run inside a transaction.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_by_pool_command ON events
    USING hash ((pool_id || ' ' || command_key)) WHERE command_key IS NOT NULL
