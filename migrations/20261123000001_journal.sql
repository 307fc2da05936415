-- The journal: pools, their events, snapshots, decided commands, and the
-- read-model rows of the capacity grid.

CREATE TABLE pools (
    pool_id        text PRIMARY KEY,
    capacity_type  text NOT NULL,
    config         jsonb NOT NULL,
    -- Pools hash to a fixed number of shards; ownership is leased per shard.
    shard          integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Where the pool's history ends. Appends lock the row, compare this with
    -- the seq they continue from, and move it: reading it through the lock
    -- gives the value a writer that was waited on left behind.
    last_seq       bigint NOT NULL DEFAULT 0,
    -- Set when the pool's events cannot be replayed; it then refuses commands.
    failed_reason  text
);

CREATE TABLE events (
    pool_id         text NOT NULL REFERENCES pools (pool_id),
    seq_nr          bigint NOT NULL CHECK (seq_nr > 0),
    payload         jsonb NOT NULL,
    -- Provenance: which plugin version decided it, for which request, when.
    plugin_name     text NOT NULL,
    plugin_version  text NOT NULL,
    plugin_digest   text NOT NULL,
    request_id      text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- Every append states the numbers it writes: two writers can never both
    -- extend the same history.
    PRIMARY KEY (pool_id, seq_nr)
);

CREATE TABLE snapshots (
    pool_id        text NOT NULL REFERENCES pools (pool_id),
    seq_nr         bigint NOT NULL,
    state_version  integer NOT NULL,
    plugin_digest  text NOT NULL,
    state          bytea NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, seq_nr)
);

-- The first outcome of every command that carried an idempotency key
-- (a reservation id, or a key the caller chose), written in the same
-- transaction as the command's events.
CREATE TABLE commands (
    pool_id          text NOT NULL REFERENCES pools (pool_id),
    idempotency_key  text NOT NULL,
    seq_nr           bigint NOT NULL,
    outcome          jsonb NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, idempotency_key)
);

-- The read model: each pool's latest view, as of seq_nr.
CREATE TABLE pool_views (
    pool_id        text PRIMARY KEY REFERENCES pools (pool_id),
    capacity_type  text NOT NULL,
    seq_nr         bigint NOT NULL,
    view           jsonb NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Shard leases; the cluster fills them. An append that names a lease epoch
-- succeeds only while that epoch is current.
CREATE TABLE shard_leases (
    shard       integer PRIMARY KEY,
    owner_node  text NOT NULL,
    epoch       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);
