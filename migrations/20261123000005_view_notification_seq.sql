-- A view notification names the seq the row is as of (`<pool> <seq>`), so
-- that a node which holds that view already (it wrote it) need not read
-- the row back.
CREATE OR REPLACE FUNCTION allot_notify_pool_view() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('allot_pool_views', NEW.pool_id || ' ' || NEW.seq_nr);
    RETURN NULL;
END;
$$;
