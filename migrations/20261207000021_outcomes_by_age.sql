-- no-transaction
-- Recorded outcomes by age, for the nodes that delete those older than
-- the idempotency window a batch at a time.
CREATE INDEX CONCURRENTLY IF NOT EXISTS commands_by_age ON commands (recorded_at)
