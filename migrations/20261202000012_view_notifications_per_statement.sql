-- One notification per statement that writes read-model rows, instead of
-- one per row: each lists the rows it is about, a line `<pool> <seq>` each,
-- at most 50 lines (a payload is held under 8,000 bytes). PostgreSQL
-- delivers every notification to every listening node and wakes each of
-- them for it; the view writer writes tens of rows per statement.
--
-- A node of an earlier version reads only the first line and finds the
-- other rows by its poll, a few seconds later, until it is upgraded.
CREATE FUNCTION allot_notify_pool_views() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    lines text;
BEGIN
    FOR lines IN
        SELECT string_agg(pool_id || ' ' || seq_nr, E'\n')
          FROM (SELECT pool_id, seq_nr, (row_number() OVER () - 1) / 50 AS chunk
                  FROM changed) numbered
         GROUP BY chunk
    LOOP
        PERFORM pg_notify('allot_pool_views', lines);
    END LOOP;
    RETURN NULL;
END;
$$;

DROP TRIGGER pool_views_notify ON pool_views;
DROP FUNCTION allot_notify_pool_view();

-- A trigger with a transition table takes one kind of event; an upsert
-- fires both.
CREATE TRIGGER pool_views_notify_inserted
    AFTER INSERT ON pool_views REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION allot_notify_pool_views();
CREATE TRIGGER pool_views_notify_updated
    AFTER UPDATE ON pool_views REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION allot_notify_pool_views();
