-- A node stopped while it built `events_by_pool_command` concurrently
-- (migration 15) leaves the index behind marked invalid, and the next
-- start passed over it as existing. PostgreSQL never reads such an index
-- (and may go on updating it): accepted outcomes were then looked up by
-- scanning each pool's events. Built again here if so, in this
-- migration's transaction; appends wait for that build, which only
-- happens after such an interruption.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index
         WHERE indexrelid = to_regclass('events_by_pool_command') AND indisvalid
    ) THEN
        DROP INDEX IF EXISTS events_by_pool_command;
        CREATE INDEX events_by_pool_command ON events
            USING hash ((pool_id || ' ' || command_key)) WHERE command_key IS NOT NULL;
    END IF;
END
$$;
