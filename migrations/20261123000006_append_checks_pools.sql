-- The append statement locks each pool's row and checks its history under
-- that lock before it writes events, outcomes and views, and pools are
-- never deleted: these foreign keys only repeated that check, once per row
-- written, on the hottest path there is.
ALTER TABLE events DROP CONSTRAINT events_pool_id_fkey;
ALTER TABLE commands DROP CONSTRAINT commands_pool_id_fkey;
ALTER TABLE pool_views DROP CONSTRAINT pool_views_pool_id_fkey;
