-- A node's leases last as long as its heartbeat, instead of each lease
-- carrying an expiry that its owner renews at every tick.
--
-- Renewing locked and updated all 256 lease rows twice a second, whatever
-- the load: about 70 KB of write-ahead log a second on an idle cluster
-- (6 GB a day, shipped to every replica and archive). Now one row per node
-- is written per tick, its heartbeat.
--
-- A lease is in force while its `expires_at` is in the future and its
-- owner's heartbeat is younger than the owner's lease (`nodes.lease_ms`).
-- Nodes of this version take a lease with `expires_at` = 'infinity' and
-- release it by setting `expires_at` to '-infinity'; the fence is, as
-- before, the epoch that each take raises. Leases of nodes of the earlier
-- version keep the expiry they renew, and their heartbeat keeps them in
-- force too. During a rolling upgrade, a node of the earlier version does
-- not take the shards of a crashed node of this version (it waits for an
-- expiry that never comes): nodes of this version take them.
ALTER TABLE nodes ADD COLUMN lease_ms bigint NOT NULL DEFAULT 3000;

COMMENT ON COLUMN nodes.lease_ms IS
    'How long after its last heartbeat the node''s leases stay in force';

-- The leases in force, with their owners' URLs: what routing, the cluster
-- status and operators read.
CREATE VIEW leases_in_force AS
SELECT l.shard, l.owner_node, l.epoch, n.url
  FROM shard_leases l
  JOIN nodes n ON n.node_id = l.owner_node
 WHERE l.expires_at > now()
   AND n.heartbeat_at > now() - n.lease_ms * interval '1 millisecond';
