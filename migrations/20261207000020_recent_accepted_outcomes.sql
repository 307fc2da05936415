-- no-transaction
-- The outcomes recovery reads: those of a pool within the idempotency
-- window that took effect (or that an earlier build recorded without
-- saying). Refusals, however many, are not in it.
--
-- Built without blocking appends, in a statement of its own, as
-- CONCURRENTLY cannot run inside a transaction.
CREATE INDEX CONCURRENTLY IF NOT EXISTS commands_recent_accepted
    ON commands (pool_id, recorded_at) WHERE accepted IS NOT FALSE
