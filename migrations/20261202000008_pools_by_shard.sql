-- A node looks for its shards' pools (read-model rows behind their history,
-- every `view_repair_seconds` and at each takeover): with many pools and
-- many nodes, each holds a small part of the table. The shard never
-- changes, so the index leaves the append's update of `last_seq` a HOT one.
CREATE INDEX pools_by_shard ON pools (shard);
