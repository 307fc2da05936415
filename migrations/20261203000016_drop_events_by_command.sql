-- no-transaction
-- Replaced by the hash index `events_by_pool_command`. Nodes of the
-- earlier version, during a rolling upgrade, still find the outcomes they
-- look for, by scanning the pool's events through the primary key.
DROP INDEX CONCURRENTLY IF EXISTS events_by_command
