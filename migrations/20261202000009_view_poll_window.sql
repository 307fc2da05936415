-- The read model's backstop poll finds the rows changed since its last
-- round by the ten-second window of their latest change instead of by
-- `updated_at`. An index on a column that every write changes keeps
-- PostgreSQL from updating the row in place (a HOT update: no new index
-- entries, the old version pruned without a vacuum), and a pool's view is
-- written at every batch; its window changes once in ten seconds at most.
CREATE FUNCTION allot_view_window(at timestamptz) RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN floor(extract(epoch FROM at) / 10)::bigint;

-- Writers set it at each update; an insert takes the default (as do the
-- inserts of a node not yet upgraded, during a rolling restart).
ALTER TABLE pool_views ADD COLUMN changed_window bigint NOT NULL DEFAULT 0;
UPDATE pool_views SET changed_window = allot_view_window(updated_at);
ALTER TABLE pool_views ALTER COLUMN changed_window SET DEFAULT allot_view_window(now());
DROP INDEX pool_views_updated_at;
CREATE INDEX pool_views_changed_window ON pool_views (changed_window);

-- Room on each page for the next versions of its rows, so that they stay
-- on the page (which a HOT update needs).
ALTER TABLE pool_views SET (fillfactor = 50);
