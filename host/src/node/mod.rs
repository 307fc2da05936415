//! A running node: the database (given, or embedded), the journal, the
//! entity runtime with its plugins, the read model, and the HTTP server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, TokenConfig, TokenError, Tokens};
use crate::cluster::{self, Cluster};
use crate::entity::{self, Runtime};
use crate::journal::{self, Journal};
use crate::pg::{self, EmbeddedPostgres};
use crate::registry::{self, Registry};
use crate::sandbox::{self, Engine, Limits};
use crate::view::{self, ReadModel};

mod http;

pub use http::HttpLimits;

/// The database an embedded PostgreSQL serves Allot from.
const EMBEDDED_DATABASE: &str = "allot";

/// A node's configuration, as read from its TOML file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the API listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The PostgreSQL to use. Without one, an embedded server is started
    /// with its data in `data_dir`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// The embedded PostgreSQL's data folder.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Database connections this node may open.
    #[serde(default = "default_connections")]
    pub max_connections: u32,
    /// Plugin components (`.wasm`) to load at start.
    #[serde(default)]
    pub plugins: Vec<PathBuf>,
    /// Make the `plugins` files the active versions of their capacity
    /// types at start. Without it, a file's version becomes active only for
    /// a type that has none; otherwise it is just stored in the registry.
    #[serde(default)]
    pub activate_plugins: bool,
    /// Who may call the API.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// How pool entities behave.
    #[serde(default)]
    pub entities: EntityConfig,
    /// Seconds between turning readiness off and closing the listener when
    /// the node stops, so that load balancers stop sending first. The node
    /// has handed its shards over by then and forwards what still arrives.
    #[serde(default)]
    pub drain_seconds: u64,
    /// How this node takes part in a cluster.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// What the HTTP server allows a client.
    #[serde(default)]
    pub http: HttpLimits,
}

/// The `[cluster]` section. A node alone is a cluster of one; several
/// nodes on one database share its pools.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster and the same across restarts.
    /// Default: `node-<port>`.
    pub node_id: Option<String>,
    /// Where the other nodes reach this node's API. Default: `http://` and
    /// the listen address (which must then not be a wildcard).
    pub advertise_url: Option<String>,
    /// The secret nodes forward commands to each other with: the same on
    /// every node, and never a user's token. Needed with more than one node.
    pub secret: Option<String>,
    /// Milliseconds a node's shard leases last after its last heartbeat: a
    /// crashed node's pools move to the others after about this long.
    pub lease_ms: u64,
    /// Milliseconds between heartbeats (which keep the leases in force)
    /// and looks at placement.
    pub tick_ms: u64,
    /// Seconds between looks for read-model rows of this node's shards
    /// that are behind their pools' history (changed or lost outside the
    /// node), which are then written again; 0 never looks.
    pub view_repair_seconds: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            advertise_url: None,
            secret: None,
            lease_ms: 3000,
            tick_ms: 500,
            view_repair_seconds: 300,
        }
    }
}

impl ClusterConfig {
    fn settings(&self, listen: SocketAddr) -> Result<cluster::Settings> {
        let wrong = |reason: String| Error::Cluster(reason);
        if self.lease_ms < 500 || self.tick_ms == 0 || self.tick_ms * 2 > self.lease_ms {
            return Err(wrong(format!(
                "lease_ms ({}) must be at least 500 and at least twice tick_ms ({}), \
                 so that a heartbeat keeps the leases before they run out",
                self.lease_ms, self.tick_ms
            )));
        }
        if self.advertise_url.is_some() && self.node_id.is_none() {
            return Err(wrong(
                "set node_id (ALLOT_NODE_ID) with advertise_url: nodes on different hosts \
                 would otherwise share the default name node-<port>"
                    .to_owned(),
            ));
        }
        let node_id = match &self.node_id {
            Some(id) => crate::ids::PoolId::new(id)
                .map_err(|_| {
                    wrong(format!(
                        "node_id `{id}`: use 1 to 128 ASCII letters, digits or -_.:/"
                    ))
                })?
                .to_string(),
            None => format!("node-{}", listen.port()),
        };
        let url = match &self.advertise_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if listen.ip().is_unspecified() => {
                return Err(wrong(format!(
                    "the node listens on {listen}: set advertise_url (ALLOT_ADVERTISE_URL) \
                     to the address other nodes reach it at"
                )));
            }
            None => format!("http://{listen}"),
        };
        let secret = match &self.secret {
            Some(secret) if secret.len() >= 16 => secret.clone(),
            Some(_) => {
                return Err(wrong(
                    "the cluster secret must be at least 16 characters".to_owned(),
                ));
            }
            // Named or given an address for others to reach it at, the node
            // is meant to be one of several, which could never forward to
            // it without the secret they share.
            None if self.node_id.is_some() || self.advertise_url.is_some() => {
                return Err(wrong(
                    "a node with a node_id or advertise_url is one of a cluster: set the \
                     cluster's secret (`secret` in [cluster], or ALLOT_CLUSTER_SECRET), the \
                     same on every node"
                        .to_owned(),
                ));
            }
            // Alone, nobody forwards to this node; a random secret keeps
            // the internal route shut.
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        Ok(cluster::Settings {
            node_id,
            url,
            secret,
            lease: std::time::Duration::from_millis(self.lease_ms),
            tick: std::time::Duration::from_millis(self.tick_ms),
            view_repair: (self.view_repair_seconds > 0)
                .then(|| std::time::Duration::from_secs(self.view_repair_seconds)),
        })
    }
}

/// The `[entities]` section: how pool entities behave.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntityConfig {
    /// Commands a pool may have queued before callers are told to retry.
    pub mailbox: usize,
    /// Most commands decided and appended as one batch.
    pub max_batch: usize,
    /// Events appended before the next snapshot (taken once the events'
    /// payloads also outweigh the last snapshot).
    pub snapshot_every: u64,
    /// Seconds without a command after which a pool is passivated.
    pub idle_after_seconds: u64,
    /// Group-commit writers: most appends in flight at once, each carrying
    /// the batches of every pool that queued meanwhile.
    pub writers: usize,
    /// Milliseconds an append runs before a further one may start beside
    /// it: appends overlap only when they take longer than this, as on a
    /// disk slow to flush.
    pub overlap_after_ms: u64,
    /// Most pools' batches one writer puts in a transaction: with a slow
    /// disk, a writer appends at most this many batches per flush.
    pub max_group: usize,
    /// Seconds a retry of a keyed command (a reservation id, an
    /// idempotency key) gets its first outcome.
    pub idempotency_window_seconds: u64,
    /// Milliseconds between two writes of a busy pool's read-model row:
    /// other nodes' grids show its changes up to this much later.
    pub view_row_interval_ms: u64,
}

impl Default for EntityConfig {
    fn default() -> Self {
        let settings = entity::Settings::default();
        Self {
            mailbox: settings.mailbox,
            max_batch: settings.max_batch,
            snapshot_every: settings.snapshot_every,
            idle_after_seconds: settings.idle_after.as_secs(),
            writers: settings.writers,
            overlap_after_ms: settings.overlap_after.as_millis() as u64,
            max_group: settings.max_group,
            idempotency_window_seconds: settings.idempotency_window.as_secs(),
            view_row_interval_ms: settings.view_row_interval.as_millis() as u64,
        }
    }
}

impl EntityConfig {
    fn settings(&self) -> entity::Settings {
        entity::Settings {
            mailbox: self.mailbox.max(1),
            max_batch: self.max_batch.max(1),
            snapshot_every: self.snapshot_every.max(1),
            idle_after: std::time::Duration::from_secs(self.idle_after_seconds.max(1)),
            writers: self.writers.max(1),
            overlap_after: std::time::Duration::from_millis(self.overlap_after_ms),
            max_group: self.max_group.max(1),
            idempotency_window: std::time::Duration::from_secs(
                self.idempotency_window_seconds.max(1),
            ),
            view_row_interval: std::time::Duration::from_millis(self.view_row_interval_ms),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_connections() -> u32 {
    16
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            database_url: None,
            data_dir: None,
            max_connections: default_connections(),
            plugins: Vec::new(),
            activate_plugins: false,
            tokens: Vec::new(),
            entities: EntityConfig::default(),
            drain_seconds: 0,
            cluster: ClusterConfig::default(),
            http: HttpLimits::default(),
        }
    }
}

impl Config {
    /// Reads a config file; relative plugin paths and data folders are taken
    /// from the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for plugin in &mut config.plugins {
            *plugin = base.join(&*plugin);
        }
        if let Some(dir) = &mut config.data_dir {
            *dir = base.join(&*dir);
        }
        Ok(config)
    }

    /// Applies the environment: `ALLOT_LISTEN`, `ALLOT_DATABASE_URL`,
    /// `ALLOT_TOKENS` (`name=role:token,…`, instead of the file's tokens),
    /// `ALLOT_NODE_ID`, `ALLOT_ADVERTISE_URL` and `ALLOT_CLUSTER_SECRET`.
    pub fn with_env(self) -> Result<Self> {
        self.with_vars(|name| std::env::var(name).ok())
    }

    /// Applies the variables `var` gives, as [`Config::with_env`] does.
    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        if let Some(listen) = var("ALLOT_LISTEN") {
            self.listen = listen.parse().map_err(|_| Error::Env {
                name: "ALLOT_LISTEN",
                reason: format!("`{listen}` is not an address such as 127.0.0.1:8080"),
            })?;
        }
        // Empty counts as unset, as a shell's `ALLOT_DATABASE_URL=` means.
        if let Some(url) = var("ALLOT_DATABASE_URL")
            && !url.is_empty()
        {
            self.database_url = Some(url);
        }
        // Instead of the file's tokens, so that a file's tokens (the
        // example's, say) can be replaced without editing it.
        if let Some(tokens) = var("ALLOT_TOKENS")
            && !tokens.trim().is_empty()
        {
            self.tokens = Tokens::parse_list(&tokens)?;
        }
        if let Some(node_id) = var("ALLOT_NODE_ID") {
            self.cluster.node_id = Some(node_id);
        }
        if let Some(url) = var("ALLOT_ADVERTISE_URL") {
            self.cluster.advertise_url = Some(url);
        }
        if let Some(secret) = var("ALLOT_CLUSTER_SECRET") {
            self.cluster.secret = Some(secret);
        }
        Ok(self)
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config file is unreadable or wrong.
    #[error("config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An environment variable is wrong.
    #[error("{name}: {reason}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// No way to reach a database.
    #[error(
        "no database: set `database_url` (or ALLOT_DATABASE_URL), or `data_dir` for an embedded PostgreSQL"
    )]
    NoDatabase,
    /// A token is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The embedded PostgreSQL failed.
    #[error(transparent)]
    Postgres(#[from] pg::Error),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// A plugin failed to load.
    #[error("plugin {path}: {source}")]
    Plugin {
        /// Its file.
        path: PathBuf,
        /// Why.
        source: registry::Error,
    },
    /// The plugin registry failed.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// A plugin file is unreadable.
    #[error("plugin {path}: {source}")]
    PluginFile {
        /// Its file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The wasm engine failed to start.
    #[error(transparent)]
    Engine(sandbox::Error),
    /// The read model failed to load.
    #[error(transparent)]
    ReadModel(#[from] view::Error),
    /// The cluster settings are wrong.
    #[error("[cluster]: {0}")]
    Cluster(String),
    /// Joining the cluster failed.
    #[error(transparent)]
    Join(#[from] cluster::Error),
    /// The API cannot listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Results of starting a node.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A running node. [`Node::stop`] shuts it down in order.
pub struct Node {
    addr: SocketAddr,
    /// Follows plugin activations made anywhere.
    follower: JoinHandle<()>,
    /// Deletes recorded outcomes older than the idempotency window.
    pruner: JoinHandle<()>,
    drain: std::time::Duration,
    state: AppState,
    server: JoinHandle<()>,
    stop: oneshot::Sender<()>,
    /// Dropped last: the database outlives everything that uses it.
    postgres: Option<EmbeddedPostgres>,
}

impl Node {
    /// Starts a node: database, journal (migrated), plugins, read model, API.
    #[tracing::instrument(name = "node", skip_all, fields(listen = %config.listen))]
    pub async fn start(config: Config) -> Result<Self> {
        let tokens = Tokens::new(&config.tokens)?;
        if tokens.is_empty() {
            tracing::warn!("no tokens are configured: every API call will be refused");
        }
        let (url, postgres) = match (&config.database_url, &config.data_dir) {
            (Some(url), _) => (url.clone(), None),
            (None, Some(dir)) => {
                let postgres = start_postgres(dir.clone()).await?;
                (postgres.url(EMBEDDED_DATABASE), Some(postgres))
            }
            (None, None) => return Err(Error::NoDatabase),
        };
        // Bound first: with port 0 the cluster must advertise the real port.
        let (listener, addr) = bind(config.listen).await.map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
        let cluster_settings = config.cluster.settings(addr)?;
        let journal = Journal::connect(&url, config.max_connections).await?;
        let runtime = Runtime::new(journal.clone(), config.entities.settings());
        let pruner = tokio::spawn(prune_outcomes(
            journal.clone(),
            config.entities.settings().idempotency_window,
        ));
        let engine = Engine::new(Limits::default()).map_err(Error::Engine)?;
        let registry = Registry::new(journal.db().clone(), engine);
        for path in &config.plugins {
            seed(&registry, path, config.activate_plugins).await?;
        }
        runtime.report_refused_swaps_to(undo_refused_activations(
            registry.clone(),
            runtime.clone(),
            cluster_settings.node_id.clone(),
        ));
        // Listening first: an activation made meanwhile is not missed.
        let follower = registry.follow(runtime.clone()).await?;
        let types = registry.apply_active(&runtime).await?;
        tracing::info!(capacity_types = types, "active plugin versions loaded");
        let read_model = ReadModel::start(journal.db().clone(), view::Settings::default()).await?;
        let sink = read_model.clone();
        runtime.publish_views_to(Arc::new(move |pool, capacity_type, seq_nr, view| {
            sink.publish(pool, capacity_type, seq_nr, view)
        }));
        let cluster =
            Cluster::join(journal.db().clone(), cluster_settings, runtime.clone()).await?;
        let state = AppState::new(api::Shared {
            runtime,
            read_model,
            tokens: Arc::new(tokens),
            ready: Arc::new(AtomicBool::new(true)),
            registry,
            cluster,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let app = api::router(state.clone());
        let http_limits = config.http;
        let server = tokio::spawn(async move {
            http::serve(listener, app, http_limits, async {
                let _ = stopped.await;
            })
            .await
        });
        tracing::info!(%addr, "node is up");
        Ok(Self {
            addr,
            follower,
            pruner,
            drain: std::time::Duration::from_secs(config.drain_seconds),
            state,
            server,
            stop,
            postgres,
        })
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The entity runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.state.runtime
    }

    /// The plugin registry.
    pub fn registry(&self) -> &Registry {
        &self.state.registry
    }

    /// The read model.
    pub fn read_model(&self) -> &ReadModel {
        &self.state.read_model
    }

    /// The embedded PostgreSQL's URL for a database, if this node runs one.
    pub fn embedded_database_url(&self) -> Option<String> {
        self.postgres.as_ref().map(|pg| pg.url(EMBEDDED_DATABASE))
    }

    /// This node's part in the cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.state.cluster
    }

    /// Stops in order: readiness off; shards handed over (entities drained,
    /// leases released); for `drain_seconds`, requests still arriving are
    /// forwarded to the new owners; then no new connections, requests in
    /// flight answered, database last.
    pub async fn stop(self) {
        api::set_ready(&self.state, false);
        self.state.cluster.leave().await;
        if !self.drain.is_zero() {
            tracing::info!(
                seconds = self.drain.as_secs(),
                "draining before closing the listener"
            );
            tokio::time::sleep(self.drain).await;
        }
        let _ = self.stop.send(());
        if let Err(error) = self.server.await {
            tracing::warn!("the API server task failed: {error}");
        }
        self.follower.abort();
        self.pruner.abort();
        self.state.cluster.clone().stop().await;
        self.state.runtime.shutdown().await;
        drop(self.state);
        if let Some(postgres) = self.postgres {
            tokio::task::spawn_blocking(move || drop(postgres))
                .await
                .ok();
        }
    }
}

/// What a node does when one of its live pools cannot move to its type's
/// newly active version (activated through another node, whose replay
/// check it passed or was forced past): it undoes that activation on every
/// node, as the activating node does for its own pools, so that no version
/// is ever active for some pools and not others. One undo at a time per
/// version, however many pools refuse it.
fn undo_refused_activations(
    registry: Registry,
    runtime: Runtime,
    node_id: String,
) -> entity::SwapRefusals {
    let undoing: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    Arc::new(move |pool, capacity_type, digest, reason| {
        if !undoing.lock().expect("undoing").insert(digest.to_owned()) {
            return;
        }
        let (registry, runtime, undoing) = (registry.clone(), runtime.clone(), undoing.clone());
        let (capacity_type, digest) = (capacity_type.to_owned(), digest.to_owned());
        let why = format!("system: pool {pool} on node {node_id} cannot move to it: {reason}");
        tokio::spawn(async move {
            match registry.undo(&runtime, &capacity_type, &digest, &why).await {
                Ok(Some(activation)) => tracing::warn!(
                    capacity_type,
                    undone = %digest,
                    active = %activation.digest,
                    "an activation a live pool here cannot follow was undone"
                ),
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(capacity_type, %digest, "undoing an activation failed: {error}")
                }
            }
            undoing.lock().expect("undoing").remove(&digest);
        });
    })
}

/// How often a node deletes recorded outcomes past the idempotency window.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Recorded outcomes deleted per statement, so that no delete holds many
/// rows locked for long.
const PRUNE_BATCH: i64 = 10_000;

/// Deletes recorded outcomes (refusals, mostly) once the idempotency
/// window is past: a retry is no longer answered with them, and without
/// this every refused reservation would be kept for ever.
async fn prune_outcomes(journal: Journal, window: std::time::Duration) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        loop {
            match journal.prune_outcomes(window, PRUNE_BATCH).await {
                Ok(deleted) if deleted < PRUNE_BATCH as u64 => break,
                Ok(_) => tokio::task::yield_now().await,
                Err(error) => {
                    tracing::warn!("deleting old recorded outcomes failed: {error}");
                    break;
                }
            }
        }
    }
}

/// Listens on `addr`; returns the listener and the address it took (the
/// port chosen when `addr` asks for port 0).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Uploads a plugin file named in the config to the registry, and activates
/// it when asked to, or when its capacity type has no active version yet.
async fn seed(registry: &Registry, path: &Path, activate: bool) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| Error::PluginFile {
        path: path.to_owned(),
        source,
    })?;
    let (version, _) = registry
        .upload(bytes, None, "config")
        .await
        .map_err(|source| Error::Plugin {
            path: path.to_owned(),
            source,
        })?;
    let active = registry.active().await?;
    let current = active.get(&version.capacity_type);
    if current.is_none() || (activate && current != Some(&version.digest)) {
        registry
            .activate(&version.capacity_type, &version.digest, "config")
            .await?;
    }
    Ok(())
}

/// Starts the embedded PostgreSQL and makes sure Allot's database exists.
async fn start_postgres(dir: PathBuf) -> Result<EmbeddedPostgres> {
    let postgres = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
        .await
        .expect("the PostgreSQL launcher does not panic")?;
    let admin = postgres.url("postgres");
    let create = async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(EMBEDDED_DATABASE)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            sqlx::query("CREATE DATABASE allot")
                .execute(&mut conn)
                .await?;
        }
        Ok::<_, sqlx::Error>(())
    };
    create
        .await
        .map_err(|e| Error::Journal(journal::Error::Database(e)))?;
    Ok(postgres)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/allot.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.tokens.len(), 3);
        assert_eq!(config.drain_seconds, 5);
        assert_eq!(config.entities.writers, 4);
        assert_eq!(config.http.max_connections, 4096);
    }

    #[test]
    fn the_example_tokens_are_refused_and_allot_tokens_replaces_them() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/allot.toml");
        let config = Config::load(&path).unwrap();
        let refused = Tokens::check_secret(&config.tokens, &[]).unwrap_err();
        assert!(matches!(refused, TokenError::NotSecret(_)), "{refused}");
        let own = "shop=checkout:9f2c4e1a7b3d5f60,ops=operator:4d8e2a6c1f9b3e07";
        let config = config
            .with_vars(|name| (name == "ALLOT_TOKENS").then(|| own.to_owned()))
            .unwrap();
        assert_eq!(config.tokens.len(), 2);
        Tokens::check_secret(&config.tokens, &[]).unwrap();
        for weak in ["aaaaaaaaaaaaaaaa", "abababababababab", "dev-planner-token"] {
            let tokens = Tokens::parse_list(&format!("x=planner:{weak}")).unwrap();
            assert!(
                Tokens::check_secret(&tokens, &["dev-planner-token"]).is_err(),
                "{weak}"
            );
        }
    }

    #[test]
    fn a_named_node_needs_the_cluster_secret() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let named = ClusterConfig {
            node_id: Some("allot-1".into()),
            ..ClusterConfig::default()
        };
        let error = named.settings(listen).unwrap_err();
        assert!(error.to_string().contains("secret"), "{error}");
        let secret = ClusterConfig {
            secret: Some("a-long-shared-secret-0001".into()),
            ..named
        };
        secret.settings(listen).unwrap();
        // Alone and unnamed, the node makes up a secret no one knows.
        ClusterConfig::default().settings(listen).unwrap();
    }

    #[test]
    fn group_commit_is_configured_in_the_entities_section() {
        let config: Config =
            toml::from_str("[entities]\nwriters = 2\noverlap_after_ms = 20\nmax_group = 1024\n")
                .unwrap();
        let settings = config.entities.settings();
        assert_eq!(settings.writers, 2);
        assert_eq!(settings.overlap_after, std::time::Duration::from_millis(20));
        assert_eq!(settings.max_group, 1024);

        let defaults = Config::default().entities.settings();
        let expected = entity::Settings::default();
        assert_eq!(defaults.writers, expected.writers);
        assert_eq!(defaults.overlap_after, expected.overlap_after);
        assert_eq!(defaults.max_group, expected.max_group);

        let wrong = toml::from_str::<Config>("[entities]\noverlap_after = 20\n").unwrap_err();
        assert!(wrong.to_string().contains("overlap_after"), "{wrong}");
    }
}
