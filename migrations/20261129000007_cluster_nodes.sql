-- Cluster membership. Every node registers here and heartbeats; a node is
-- live while its heartbeat is younger than a lease. Shard leases
-- (shard_leases) name their owner by node_id.
CREATE TABLE nodes (
    node_id      text PRIMARY KEY,
    -- Where the other nodes reach its API.
    url          text NOT NULL,
    -- One per process run: a restarted node registers anew under its name.
    incarnation  uuid NOT NULL,
    state        text NOT NULL CHECK (state IN ('up', 'leaving')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
