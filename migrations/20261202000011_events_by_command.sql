-- no-transaction
-- Accepted outcomes by their command's key (see the previous migration).
-- Built without blocking appends: nodes of the earlier version keep
-- writing while the first node of this one starts. A statement of its own,
-- as CONCURRENTLY cannot run inside a transaction.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_by_command ON events (pool_id, command_key)
    WHERE command_key IS NOT NULL
