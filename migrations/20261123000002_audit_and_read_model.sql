-- Who sent the command behind each event (the caller's token name and
-- role), for the audit trail.
ALTER TABLE events ADD COLUMN actor text NOT NULL DEFAULT '';

-- Every node keeps the capacity grid in memory. A changed view row tells
-- them at commit, with the pool's id; they read the row itself (a
-- notification's payload is too small for a view, and a missed one is
-- caught by the poll on updated_at).
CREATE FUNCTION allot_notify_pool_view() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('allot_pool_views', NEW.pool_id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER pool_views_notify
    AFTER INSERT OR UPDATE ON pool_views
    FOR EACH ROW EXECUTE FUNCTION allot_notify_pool_view();

CREATE INDEX pool_views_updated_at ON pool_views (updated_at);
