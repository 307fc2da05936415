//! The cluster: several nodes against one PostgreSQL, with at most one live
//! copy of each pool.
//!
//! Nodes register and heartbeat in the `nodes` table. Pools hash to a fixed
//! number of shards ([`crate::ids::SHARDS`]); each shard has a lease row
//! (owner, epoch, and an expiry that only a release sets) in
//! `shard_leases`. A lease is in force while its owner's heartbeat is
//! younger than the owner's lease, so holding leases writes one row per
//! tick, the heartbeat, however many there are. Every node computes the
//! same placement from the live nodes by rendezvous hashing, takes the
//! leases of the shards it wins once they are free, and hands over what
//! another node now wins: its entities drain, then the lease is released
//! for the next owner to take at once. A crashed node's leases simply run
//! out with its heartbeat.
//!
//! Each acquisition raises the shard's epoch, and every append names the
//! epoch its entity started under ([`crate::journal::Fence`]), checked in
//! the append's transaction: a paused or partitioned ex-owner can still
//! decide, but never persist.
//!
//! Nodes tell each other of joins, leaves and released leases by `NOTIFY`,
//! so a hand-over does not wait for the next tick.

mod placement;
mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::entity::Runtime;
use crate::ids::PoolId;
use crate::metrics::{GaugePart, metrics};

pub use placement::shards_of;
pub use wire::{
    FORWARD_PATH, Forward, Malformed, Op, POSTCARD, Reply, WireProblem, from_text, to_text,
};

/// The channel nodes wake each other on.
const CHANNEL: &str = "allot_cluster";

/// Releases this node's leases ($1) on shards ($2) that it holds under
/// these epochs ($3): the next owner may take them at once. Rows are locked
/// in shard order, as by every statement on several leases, so that nodes
/// taking and releasing at once never wait on each other in a cycle. The
/// lock is FOR NO KEY UPDATE, which appends (holding their leases FOR KEY
/// SHARE) do not wait for: the release does not fence anyone, a take does.
const RELEASE: &str = "
WITH mine AS (
    SELECT l.shard FROM shard_leases l
      JOIN unnest($2::int[], $3::bigint[]) AS h(shard, epoch)
        ON l.shard = h.shard AND l.epoch = h.epoch
     WHERE l.owner_node = $1
     ORDER BY l.shard FOR NO KEY UPDATE OF l
)
UPDATE shard_leases l SET expires_at = '-infinity'
  FROM mine WHERE l.shard = mine.shard";

/// Of the leases this node ($1) holds on shards ($2) under these epochs
/// ($3), those it still holds. A lease lasts as long as its owner's
/// heartbeat, so holding it writes nothing: this only reads.
const STILL_HELD: &str = "
SELECT l.shard FROM shard_leases l
  JOIN unnest($2::int[], $3::bigint[]) AS h(shard, epoch)
    ON l.shard = h.shard AND l.epoch = h.epoch
 WHERE l.owner_node = $1 AND l.expires_at > now()";

/// Takes the leases on shards ($2) that are free for this node ($1): never
/// leased, released, held by a node whose heartbeat is older than its
/// lease, or held by this node's previous run. Returns the shards taken,
/// each with its new epoch, which fences every older writer.
///
/// The rows are locked FOR UPDATE first, in shard order like [`RELEASE`]:
/// appends hold their leases FOR KEY SHARE, which only that lock waits for
/// (the upsert's own lock would not), so a take waits for the appends in
/// flight under the old epoch, and whether a lease is free is judged on
/// its latest version. The upsert updates a row only from the epoch it
/// was locked at, so a lease that another node took first, by inserting
/// its row meanwhile, is left to it.
///
/// An owner's heartbeat is another row, read as of the statement's start.
/// So a lease that changed hands while the take waited for its lock is
/// left alone (its epoch is no longer the one the statement started
/// with): its new owner's heartbeat may be newer than what the statement
/// sees. And a node whose heartbeat came a lease late may lose a lease
/// that the heartbeat had just kept: its appends are then fenced, and
/// until its next tick it may still answer reads of those pools from its
/// entities.
const TAKE: &str = "
WITH current AS (
    SELECT shard, owner_node, epoch, expires_at FROM shard_leases
     WHERE shard = ANY($2) ORDER BY shard FOR UPDATE
)
INSERT INTO shard_leases (shard, owner_node, epoch, expires_at)
SELECT s, $1, coalesce(c.epoch, 0) + 1, 'infinity'
  FROM unnest($2::int[]) AS s LEFT JOIN current c ON c.shard = s
 WHERE c.shard IS NULL
    OR (c.epoch = (SELECT o.epoch FROM shard_leases o WHERE o.shard = c.shard)
        AND (c.owner_node = $1 OR c.expires_at <= now()
             OR NOT EXISTS (SELECT FROM nodes n
                             WHERE n.node_id = c.owner_node
                               AND n.heartbeat_at > now() - n.lease_ms * interval '1 millisecond')))
 ORDER BY s
ON CONFLICT (shard) DO UPDATE
   SET owner_node = EXCLUDED.owner_node, epoch = EXCLUDED.epoch,
       expires_at = EXCLUDED.expires_at
 WHERE shard_leases.epoch = EXCLUDED.epoch - 1
RETURNING shard, epoch";

/// How a node takes part in the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's name, unique in the cluster and stable across restarts:
    /// a restarted node takes back the leases its previous run held at once.
    pub node_id: String,
    /// Where other nodes reach this node's API.
    pub url: String,
    /// Shared by the nodes of a cluster: forwarded requests carry it.
    pub secret: String,
    /// How long this node's leases stay in force after its last heartbeat:
    /// a crashed node's shards move after about this long.
    pub lease: Duration,
    /// How often the node heartbeats, which keeps its leases in force, and
    /// looks at placement.
    pub tick: Duration,
    /// How often the read-model rows of the shards held are looked at for
    /// rows behind their history; never when `None`.
    pub view_repair: Option<Duration>,
}

/// Why the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("cluster membership: {0}")]
    Database(#[from] sqlx::Error),
    /// Another running node has this node's name.
    #[error(
        "a node named `{0}` is running and heartbeating: give every node its own node_id \
         (ALLOT_NODE_ID)"
    )]
    NameTaken(String),
}

/// A node that owns a shard, as other nodes reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Its name.
    pub node: String,
    /// Its API's base URL.
    pub url: String,
}

/// Where the commands of a shard go now.
#[derive(Debug)]
pub enum Route {
    /// This node holds the lease.
    Local,
    /// Another node holds it.
    Remote(Owner),
    /// Nobody does this moment: the shard is moving.
    Unknown,
}

/// Why a forwarded request got no answer.
#[derive(Debug)]
pub struct ForwardError {
    /// Whether the owner may have received it: then only a request that is
    /// safe to repeat may be sent again.
    pub sent: bool,
    /// What happened.
    pub reason: String,
}

/// This node's part in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgPool,
    settings: Settings,
    incarnation: uuid::Uuid,
    runtime: Runtime,
    client: reqwest::Client,
    state: Mutex<State>,
    /// This node's part of `allot_cluster_shards_held`.
    shards_shown: GaugePart,
    /// Ticks and the leave take turns.
    turn: tokio::sync::Mutex<()>,
    wake: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    /// The leases this node holds and serves.
    held: HashMap<u32, Held>,
    /// The owner of every leased shard, as last read.
    owners: HashMap<u32, Owner>,
    /// The live nodes, as last read.
    nodes: Vec<Owner>,
    /// Set when this node leaves: it takes no shard any more.
    leaving: bool,
}

#[derive(Clone, Copy)]
struct Held {
    epoch: i64,
    /// Until when the lease is surely still in force, by the local clock:
    /// the heartbeat that keeps it so was sent before the database set it.
    valid_until: std::time::Instant,
}

/// What a node knows of the cluster, for the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// This node.
    pub node: String,
    /// Shards this node holds leases on.
    pub shards_held: usize,
    /// Every node registered, live or not.
    pub nodes: Vec<NodeStatus>,
}

/// One node, as the cluster sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStatus {
    /// Its name.
    pub node: String,
    /// Its API's base URL.
    pub url: String,
    /// `up` or `leaving`.
    pub state: String,
    /// Whether its heartbeat is fresh.
    pub live: bool,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
    /// Shards it holds unexpired leases on.
    pub shards: i64,
}

impl Cluster {
    /// Joins the cluster: registers this node, takes the shards it may take
    /// now, and keeps doing so in the background. Entities of `runtime` start
    /// only for shards this node holds, and append under their lease epoch.
    pub async fn join(db: PgPool, settings: Settings, runtime: Runtime) -> Result<Self, Error> {
        let inner = Arc::new(Inner {
            db,
            incarnation: uuid::Uuid::new_v4(),
            runtime,
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(30))
                // Nodes talk directly: a proxy could answer for an owner
                // that had already decided.
                .no_proxy()
                .build()
                .expect("an HTTP client with default TLS-less settings builds"),
            state: Mutex::default(),
            shards_shown: GaugePart::of(&metrics().cluster_shards_held),
            turn: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            tasks: Mutex::default(),
            settings,
        });
        let weak = Arc::downgrade(&inner);
        inner.runtime.fence_with(Arc::new(move |shard| {
            weak.upgrade().and_then(|inner| inner.epoch(shard))
        }));
        let mut listener = PgListener::connect_with(&inner.db).await?;
        listener.listen(CHANNEL).await?;
        inner.register().await?;
        inner.tick().await?;
        let listen = tokio::spawn(wake_on_notify(listener, Arc::downgrade(&inner)));
        let ticks = tokio::spawn(tick_forever(Arc::downgrade(&inner)));
        inner.tasks.lock().expect("tasks").extend([listen, ticks]);
        if let Some(every) = inner.settings.view_repair {
            let repairs = tokio::spawn(repair_forever(Arc::downgrade(&inner), every));
            inner.tasks.lock().expect("tasks").push(repairs);
        }
        tracing::info!(
            node = %inner.settings.node_id,
            shards = inner.state.lock().expect("cluster state").held.len(),
            "joined the cluster"
        );
        Ok(Self { inner })
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.inner.settings.node_id
    }

    /// Whether `secret` is the cluster's, compared in constant time.
    pub fn admits(&self, secret: &str) -> bool {
        let ours = self.inner.settings.secret.as_bytes();
        let theirs = secret.as_bytes();
        ours.len() == theirs.len()
            && ours
                .iter()
                .zip(theirs)
                .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                == 0
    }

    /// Where commands for `pool` go now, as far as this node knows.
    pub fn route(&self, pool: &PoolId) -> Route {
        let shard = pool.shard();
        if self.inner.epoch(shard).is_some() {
            return Route::Local;
        }
        let state = self.inner.state.lock().expect("cluster state");
        match state.owners.get(&shard) {
            Some(owner) if owner.node != self.inner.settings.node_id => {
                Route::Remote(owner.clone())
            }
            _ => Route::Unknown,
        }
    }

    /// Takes note that an append under this epoch of `shard` was fenced:
    /// another node holds the shard now. Its pools stop here at once, rather
    /// than at the next tick, and commands go to the new owner.
    pub fn fenced(&self, shard: u32, epoch: i64) {
        let lost = {
            let mut state = self.inner.state.lock().expect("cluster state");
            match state.held.get(&shard) {
                Some(held) if held.epoch == epoch => state.held.remove(&shard).is_some(),
                _ => false,
            }
        };
        if lost {
            tracing::warn!(
                shard,
                epoch,
                "an append was fenced: the shard has another owner"
            );
            metrics().cluster_leases_lost.inc();
            let runtime = self.inner.runtime.clone();
            tokio::spawn(async move { runtime.stop_shards(&HashSet::from([shard])).await });
            self.inner.wake.notify_one();
        }
    }

    /// Asks the database who owns `pool`'s shard now, after a route failed.
    pub async fn resolve(&self, pool: &PoolId) {
        let shard = pool.shard();
        let found: Result<Option<(String, String)>, sqlx::Error> =
            sqlx::query_as("SELECT owner_node, url FROM leases_in_force WHERE shard = $1")
                .bind(shard as i32)
                .fetch_optional(&self.inner.db)
                .await;
        let mut state = self.inner.state.lock().expect("cluster state");
        match found {
            Ok(Some((node, url))) => {
                state.owners.insert(shard, Owner { node, url });
            }
            Ok(None) => {
                state.owners.remove(&shard);
            }
            Err(error) => tracing::warn!(shard, "cannot look up the shard's owner: {error}"),
        }
    }

    /// Sends work for a pool to its owner and returns the owner's reply.
    pub async fn forward(
        &self,
        owner: &Owner,
        forward: &Forward,
        timeout: Duration,
    ) -> Result<Reply, ForwardError> {
        let body = postcard::to_stdvec(forward).expect("forwarded work serializes");
        let response = self
            .inner
            .client
            .post(format!("{}{FORWARD_PATH}", owner.url))
            .bearer_auth(&self.inner.settings.secret)
            .header(reqwest::header::CONTENT_TYPE, POSTCARD)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| ForwardError {
                sent: !e.is_connect(),
                reason: format!("{}: {e}", owner.node),
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ForwardError {
            sent: true,
            reason: format!("{}: {e}", owner.node),
        })?;
        if !status.is_success() {
            // Not a reply of the protocol. A wrong secret, a malformed
            // message or a node without the route decided nothing; any other
            // status (a gateway's timeout, say) may hide a decision.
            let refused = matches!(status.as_u16(), 400 | 401 | 404 | 405);
            return Err(ForwardError {
                sent: !refused,
                reason: format!(
                    "{} answered {status}: {}",
                    owner.node,
                    String::from_utf8_lossy(&bytes)
                ),
            });
        }
        postcard::from_bytes(&bytes).map_err(|e| ForwardError {
            sent: true,
            reason: format!("{}: unreadable reply: {e}", owner.node),
        })
    }

    /// What this node knows of the cluster.
    pub async fn status(&self) -> Result<Status, sqlx::Error> {
        let rows: Vec<(String, String, String, bool, i64, i64)> = sqlx::query_as(
            "SELECT n.node_id, n.url, n.state,
                    n.heartbeat_at > now() - n.lease_ms * interval '1 millisecond',
                    (extract(epoch FROM now() - n.heartbeat_at) * 1000)::bigint,
                    (SELECT count(*) FROM leases_in_force l WHERE l.owner_node = n.node_id)
               FROM nodes n ORDER BY n.node_id",
        )
        .fetch_all(&self.inner.db)
        .await?;
        Ok(Status {
            node: self.inner.settings.node_id.clone(),
            shards_held: self.inner.state.lock().expect("cluster state").held.len(),
            nodes: rows
                .into_iter()
                .map(
                    |(node, url, state, live, heartbeat_age_ms, shards)| NodeStatus {
                        node,
                        url,
                        state,
                        live,
                        heartbeat_age_ms,
                        shards,
                    },
                )
                .collect(),
        })
    }

    /// Leaves the cluster in order: takes no shard any more, lets the
    /// entities of every shard it holds finish what is queued, then releases
    /// the leases, so that the next owners take them at once. Requests that
    /// still reach this node are forwarded to them.
    pub async fn leave(&self) {
        let inner = &self.inner;
        let _turn = inner.turn.lock().await;
        inner.state.lock().expect("cluster state").leaving = true;
        let marked = inner
            .bounded(
                sqlx::query(
                    "UPDATE nodes SET state = 'leaving' WHERE node_id = $1 AND incarnation = $2",
                )
                .bind(&inner.settings.node_id)
                .bind(inner.incarnation)
                .execute(&inner.db),
            )
            .await;
        if let Err(error) = marked {
            tracing::warn!("cannot mark this node as leaving: {error}");
        }
        inner.notify().await;
        let all: HashSet<u32> = inner
            .state
            .lock()
            .expect("cluster state")
            .held
            .keys()
            .copied()
            .collect();
        let count = all.len();
        inner.hand_over(all).await;
        tracing::info!(shards = count, "left the cluster: every lease released");
    }

    /// Stops taking part: no more heartbeats, and the node's row is removed.
    pub async fn stop(self) {
        for task in self.inner.tasks.lock().expect("tasks").drain(..) {
            task.abort();
        }
        let removed = self
            .inner
            .bounded(
                sqlx::query("DELETE FROM nodes WHERE node_id = $1 AND incarnation = $2")
                    .bind(&self.inner.settings.node_id)
                    .bind(self.inner.incarnation)
                    .execute(&self.inner.db),
            )
            .await;
        if let Err(error) = removed {
            tracing::warn!("cannot remove this node from the cluster table: {error}");
        }
        self.inner.notify().await;
    }
}

impl Inner {
    fn lease_ms(&self) -> i64 {
        self.settings.lease.as_millis() as i64
    }

    /// A database call that gives up after a lease: what it would have
    /// done (release a lease, say) happens by expiry anyway, and a node
    /// stopping with its database gone must not hang.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.settings.lease, call).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("the database did not answer in time".to_owned()),
        }
    }

    /// The epoch of this node's lease on `shard`, while surely valid.
    fn epoch(&self, shard: u32) -> Option<i64> {
        let state = self.state.lock().expect("cluster state");
        state
            .held
            .get(&shard)
            .filter(|held| held.valid_until > std::time::Instant::now())
            .map(|held| held.epoch)
    }

    async fn register(&self) -> Result<(), Error> {
        let previous: Option<(uuid::Uuid, bool)> = sqlx::query_as(
            "SELECT incarnation, heartbeat_at > now() - $2 * interval '1 millisecond'
               FROM nodes WHERE node_id = $1",
        )
        .bind(&self.settings.node_id)
        .bind(self.lease_ms())
        .fetch_optional(&self.db)
        .await?;
        if let Some((_, true)) = previous {
            // A crashed run of this node leaves a fresh heartbeat behind for
            // up to a lease; a node of the same name that still runs keeps
            // it fresh.
            tracing::info!(
                node = %self.settings.node_id,
                "a node of this name was alive moments ago; waiting for its heartbeat to end"
            );
            let deadline = std::time::Instant::now() + self.settings.lease * 2;
            loop {
                tokio::time::sleep(self.settings.tick.min(Duration::from_millis(200))).await;
                let alive: Option<bool> = sqlx::query_scalar(
                    "SELECT heartbeat_at > now() - $2 * interval '1 millisecond'
                       FROM nodes WHERE node_id = $1",
                )
                .bind(&self.settings.node_id)
                .bind(self.lease_ms())
                .fetch_optional(&self.db)
                .await?;
                if alive != Some(true) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(Error::NameTaken(self.settings.node_id.clone()));
                }
            }
        }
        sqlx::query(
            "INSERT INTO nodes (node_id, url, incarnation, state, lease_ms)
             VALUES ($1, $2, $3, 'up', $4)
             ON CONFLICT (node_id) DO UPDATE
                SET url = EXCLUDED.url, incarnation = EXCLUDED.incarnation, state = 'up',
                    started_at = now(), heartbeat_at = now(), lease_ms = EXCLUDED.lease_ms",
        )
        .bind(&self.settings.node_id)
        .bind(&self.settings.url)
        .bind(self.incarnation)
        .bind(self.lease_ms())
        .execute(&self.db)
        .await?;
        self.notify().await;
        Ok(())
    }

    async fn notify(&self) {
        let sent = self
            .bounded(
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(&self.settings.node_id)
                    .execute(&self.db),
            )
            .await;
        if let Err(error) = sent {
            tracing::debug!("cannot wake the other nodes: {error}");
        }
    }

    /// One round: heartbeat, see which leases are still held, look at
    /// placement, hand over what another node wins, take what this node
    /// wins and is free.
    async fn tick(self: &Arc<Self>) -> Result<(), sqlx::Error> {
        let _turn = self.turn.lock().await;
        let me = &self.settings.node_id;

        let leaving = self.state.lock().expect("cluster state").leaving;
        // The heartbeat keeps every lease of this node in force for a lease
        // from when the database sets it, which is after `beat_sent`.
        let beat_sent = std::time::Instant::now();
        let valid_until = beat_sent + self.settings.lease.mul_f64(0.9);
        let beat = sqlx::query(
            "UPDATE nodes SET heartbeat_at = now(),
                    state = CASE WHEN $3 THEN 'leaving' ELSE state END
              WHERE node_id = $1 AND incarnation = $2",
        )
        .bind(me)
        .bind(self.incarnation)
        .bind(leaving)
        .execute(&self.db)
        .await?;
        let replaced = beat.rows_affected() == 0;
        if replaced && !leaving {
            tracing::error!(
                "another process registered as node `{me}`: this one takes no more shards"
            );
            self.state.lock().expect("cluster state").leaving = true;
        }

        // A lease another node took meanwhile is no longer this node's, and
        // its entities here stop. The others stay in force for a lease,
        // unless the heartbeat was not this process's.
        let (shards, epochs): (Vec<i32>, Vec<i64>) = {
            let state = self.state.lock().expect("cluster state");
            state
                .held
                .iter()
                .map(|(shard, held)| (*shard as i32, held.epoch))
                .unzip()
        };
        if !shards.is_empty() {
            let kept: Vec<i32> = sqlx::query_scalar(STILL_HELD)
                .bind(me)
                .bind(&shards)
                .bind(&epochs)
                .fetch_all(&self.db)
                .await?;
            let kept: HashSet<u32> = kept.into_iter().map(|s| s as u32).collect();
            let lost: HashSet<u32> = {
                let mut state = self.state.lock().expect("cluster state");
                let lost: HashSet<u32> = state
                    .held
                    .keys()
                    .filter(|shard| !kept.contains(shard))
                    .copied()
                    .collect();
                for shard in &lost {
                    state.held.remove(shard);
                }
                if !replaced {
                    for shard in &kept {
                        if let Some(held) = state.held.get_mut(shard) {
                            held.valid_until = valid_until;
                        }
                    }
                }
                lost
            };
            if !lost.is_empty() {
                tracing::warn!(
                    shards = lost.len(),
                    "leases were lost to other nodes; their pools stop here"
                );
                metrics().cluster_leases_lost.inc_by(lost.len() as u64);
                self.runtime.stop_shards(&lost).await;
            }
        }

        // Placement among the live nodes.
        let live: Vec<(String, String)> = sqlx::query_as(
            "SELECT node_id, url FROM nodes
              WHERE state = 'up' AND heartbeat_at > now() - lease_ms * interval '1 millisecond'
              ORDER BY node_id",
        )
        .fetch_all(&self.db)
        .await?;
        let leaving = self.state.lock().expect("cluster state").leaving;
        let mut names: Vec<String> = live.iter().map(|(node, _)| node.clone()).collect();
        if !leaving && !names.contains(me) {
            names.push(me.clone());
        }
        let wanted: HashSet<u32> = if leaving {
            HashSet::new()
        } else {
            shards_of(me, &names).into_iter().collect()
        };
        let (give, take): (HashSet<u32>, Vec<i32>) = {
            let state = self.state.lock().expect("cluster state");
            let give = state
                .held
                .keys()
                .filter(|shard| !wanted.contains(shard))
                .copied()
                .collect();
            let take = wanted
                .iter()
                .filter(|shard| !state.held.contains_key(shard))
                .map(|shard| *shard as i32)
                .collect();
            (give, take)
        };
        if !give.is_empty() && !leaving {
            tracing::info!(
                shards = give.len(),
                "handing shards over to nodes that joined"
            );
            // In the background: the drain must not hold up the heartbeat
            // that keeps every other lease of this node in force.
            let inner = self.clone();
            tokio::spawn(async move { inner.hand_over(give).await });
        }
        if !take.is_empty() {
            // In force, like every lease of this node, by the heartbeat
            // above.
            let taken: Vec<(i32, i64)> = sqlx::query_as(TAKE)
                .bind(me)
                .bind(&take)
                .fetch_all(&self.db)
                .await?;
            if !taken.is_empty() {
                tracing::info!(shards = taken.len(), "took shard leases");
                let shards: Vec<u32> = taken.iter().map(|(shard, _)| *shard as u32).collect();
                {
                    let mut state = self.state.lock().expect("cluster state");
                    for (shard, epoch) in taken {
                        state.held.insert(shard as u32, Held { epoch, valid_until });
                    }
                }
                // A previous owner that died between an append and its view
                // left the row behind; in the background, like a hand-over.
                let runtime = self.runtime.clone();
                tokio::spawn(async move {
                    if let Err(error) = runtime.repair_views(&shards).await {
                        tracing::warn!("cannot look for read-model rows to repair: {error}");
                    }
                });
            }
        }

        // Who owns what, for routing.
        let owners: Vec<(i32, String, String)> =
            sqlx::query_as("SELECT shard, owner_node, url FROM leases_in_force")
                .fetch_all(&self.db)
                .await?;
        let mut state = self.state.lock().expect("cluster state");
        state.owners = owners
            .into_iter()
            .map(|(shard, node, url)| (shard as u32, Owner { node, url }))
            .collect();
        state.nodes = live
            .into_iter()
            .map(|(node, url)| Owner { node, url })
            .collect();
        self.shards_shown.show(state.held.len());
        metrics().cluster_nodes_live.set(state.nodes.len() as i64);
        Ok(())
    }

    /// Gives shards up in order: no new entity starts for them, the live
    /// ones finish what is queued, then the leases are released and the
    /// other nodes told.
    async fn hand_over(&self, shards: HashSet<u32>) {
        if shards.is_empty() {
            return;
        }
        let released: Vec<(i32, i64)> = {
            let mut state = self.state.lock().expect("cluster state");
            shards
                .iter()
                .filter_map(|shard| {
                    state
                        .held
                        .remove(shard)
                        .map(|held| (*shard as i32, held.epoch))
                })
                .collect()
        };
        // A pool with a long queue must not keep the shard from its next
        // owner for long: past a lease, the lease is released anyway, and
        // whatever the old entities still append is fenced.
        if tokio::time::timeout(self.settings.lease, self.runtime.stop_shards(&shards))
            .await
            .is_err()
        {
            tracing::warn!(
                shards = shards.len(),
                "entities did not drain within a lease; releasing their shards anyway"
            );
        }
        let (shards, epochs): (Vec<i32>, Vec<i64>) = released.into_iter().unzip();
        let done = self
            .bounded(
                sqlx::query(RELEASE)
                    .bind(&self.settings.node_id)
                    .bind(&shards)
                    .bind(&epochs)
                    .execute(&self.db),
            )
            .await;
        match done {
            Ok(_) => self.notify().await,
            // They stay in force while this node heartbeats: until it
            // stops, or a lease after its last heartbeat.
            Err(error) => tracing::warn!("cannot release leases: {error}"),
        }
        self.shards_shown
            .show(self.state.lock().expect("cluster state").held.len());
    }
}

/// Ticks every `tick`, and at once when another node says something moved.
async fn tick_forever(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let tick = strong.settings.tick;
        let woken = async {
            strong.wake.notified().await;
            // Let a burst of notifications settle into one tick.
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = woken => {}
        }
        // Bounded: a tick stuck on a lost database must not hold the turn
        // that leaving needs.
        match tokio::time::timeout(tick.max(Duration::from_millis(100)) * 2, strong.tick()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("cluster tick failed: {error}"),
            Err(_) => tracing::warn!("cluster tick took too long; trying again"),
        }
    }
}

/// Now and then, writes the read-model rows of the shards held that are
/// behind their pools' history. A shard's new owner repairs its rows when it
/// takes it; this covers rows that fall behind while a node keeps its
/// shards: changed or lost outside the node.
async fn repair_forever(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let held: Vec<u32> = {
            let state = strong.state.lock().expect("cluster state");
            state.held.keys().copied().collect()
        };
        let runtime = strong.runtime.clone();
        drop(strong);
        if held.is_empty() {
            continue;
        }
        if let Err(error) = runtime.repair_views(&held).await {
            tracing::warn!("cannot look for read-model rows to repair: {error}");
        }
    }
}

async fn wake_on_notify(mut listener: PgListener, inner: Weak<Inner>) {
    loop {
        let received = listener.try_recv().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match received {
            Ok(Some(notification)) if notification.payload() == inner.settings.node_id => {}
            Ok(_) => inner.wake.notify_one(),
            Err(error) => {
                tracing::warn!("cannot listen for cluster changes: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
