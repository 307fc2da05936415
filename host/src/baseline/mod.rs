//! The classical design Allot replaces, served for comparison by
//! `allot serve --baseline` and measured by `allot bench`.
//!
//! A counter row per pool in PostgreSQL and a conditional update per
//! request, each in its own transaction; reads are SELECTs. It speaks the
//! same API shape as a node for pools of the `quota` type (create, reserve,
//! release, the grid), with the same tokens, errors and middleware, so that
//! a benchmark compares designs and not HTTP stacks.
//!
//! It is built to be a fair opponent: a reservation is one statement (one
//! round trip, one commit) that takes the pool row's lock only for its own
//! update, and a duplicate reservation id is caught by the primary key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sqlx::postgres::{PgPool, PgPoolOptions};
use time::OffsetDateTime;

use crate::api::{
    self, ApiError, Body, Caller, CellOut, CreatePool, Created, Decided, GridPool, GridQuery, Meta,
    PageJson, Path, Query, ReadModelStatus, ReserveBody, Tokens,
};
use crate::ids::{PoolId, SeqNr};
use crate::sandbox::{Json, Problem};

/// The only capacity type the baseline knows: a pool of interchangeable units.
pub const CAPACITY_TYPE: &str = "quota";

/// Its tables, in a schema of their own beside Allot's.
const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS baseline;
CREATE TABLE IF NOT EXISTS baseline.pools (
    pool_id     text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL,
    capacity    bigint NOT NULL,
    used        bigint NOT NULL DEFAULT 0,
    seq_nr      bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS baseline.reservations (
    pool_id         text COLLATE "C" NOT NULL REFERENCES baseline.pools (pool_id),
    reservation_id  text NOT NULL,
    units           bigint NOT NULL,
    seq_nr          bigint NOT NULL,
    released        boolean NOT NULL DEFAULT false,
    reserved_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pool_id, reservation_id)
);
"#;

/// Takes the units if they are free and records the reservation, in one
/// statement: it commits both or neither. A reused id violates the
/// reservations' key and undoes the update with it.
const RESERVE: &str = "
WITH taken AS (
    UPDATE baseline.pools
       SET used = used + $3, seq_nr = seq_nr + 1, updated_at = now()
     WHERE pool_id = $1 AND used + $3 <= capacity
 RETURNING seq_nr
)
INSERT INTO baseline.reservations (pool_id, reservation_id, units, seq_nr)
SELECT $1, $2, $3, seq_nr FROM taken
RETURNING seq_nr";

/// Gives a reservation's units back, once.
const RELEASE: &str = "
WITH released AS (
    UPDATE baseline.reservations SET released = true
     WHERE pool_id = $1 AND reservation_id = $2 AND NOT released
 RETURNING units
)
UPDATE baseline.pools p
   SET used = used - released.units, seq_nr = seq_nr + 1, updated_at = now()
  FROM released
 WHERE p.pool_id = $1
RETURNING p.seq_nr, released.units";

/// Ids sort below this character (`~`), so `[prefix, prefix~)` is the range
/// of ids that start with the prefix.
const ID_CEILING: char = '~';

/// What the handlers share.
#[derive(Clone)]
struct Baseline {
    db: PgPool,
    tokens: Arc<Tokens>,
    ready: Arc<AtomicBool>,
}

impl FromRef<Baseline> for Arc<Tokens> {
    fn from_ref(state: &Baseline) -> Self {
        state.tokens.clone()
    }
}

/// Errors of starting the baseline server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The baseline keeps everything in PostgreSQL and needs one.
    #[error("the baseline needs `database_url` (or ALLOT_DATABASE_URL)")]
    NoDatabase,
    /// A token is unusable.
    #[error(transparent)]
    Token(#[from] api::TokenError),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The API cannot listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Serves the baseline until `shutdown` completes.
pub async fn serve(
    config: crate::node::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let url = config.database_url.as_deref().ok_or(Error::NoDatabase)?;
    let db = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // A broken connection fails its statement, which callers retry;
        // a ping before every statement would cost a round trip each.
        .test_before_acquire(false)
        .connect(url)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&db).await?;
    let state = Baseline {
        db,
        tokens: Arc::new(Tokens::new(&config.tokens)?),
        ready: Arc::new(AtomicBool::new(true)),
    };
    let (listener, addr) =
        crate::node::bind(config.listen)
            .await
            .map_err(|source| Error::Listen {
                addr: config.listen,
                source,
            })?;
    eprintln!("the baseline is serving on http://{addr}");
    let ready = state.ready.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            ready.store(false, Ordering::SeqCst);
        })
        .await
        .map_err(|source| Error::Listen { addr, source })
}

fn router(state: Baseline) -> Router {
    let v1 = Router::new()
        .route("/pools", post(create))
        .route("/pools/{pool}/reservations", post(reserve))
        .route(
            "/pools/{pool}/reservations/{reservation}/release",
            post(release),
        )
        .route("/grid", get(grid));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/readyz", get(ready))
        .fallback(|| async {
            ApiError::not_found(
                "not_found",
                "the baseline serves pools, checkout and the grid",
            )
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(api::BODY_LIMIT))
        .layer(middleware::from_fn(api::observe))
        .with_state(state)
}

async fn ready(State(state): State<Baseline>) -> StatusCode {
    if state.ready.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The `quota` type's config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaConfig {
    name: String,
    units: u64,
}

/// The `quota` type's reservation request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaRequest {
    units: u64,
}

fn problem(code: &str, message: impl Into<String>) -> Problem {
    Problem {
        code: code.into(),
        message: message.into(),
    }
}

fn database(error: sqlx::Error) -> ApiError {
    match error {
        sqlx::Error::PoolTimedOut => ApiError::unavailable("overloaded", "no database connection"),
        other => ApiError::internal(&other),
    }
}

/// Units as PostgreSQL's bigint takes them.
fn units(units: u64) -> Result<i64, ApiError> {
    i64::try_from(units).map_err(|_| {
        ApiError::invalid(problem(
            "invalid_units",
            format!("at most {} units", i64::MAX),
        ))
    })
}

fn json(value: serde_json::Value) -> Json {
    RawValue::from_string(value.to_string()).expect("serialised JSON is JSON")
}

async fn create(
    State(state): State<Baseline>,
    caller: Caller,
    Body(body): Body<CreatePool>,
) -> Result<(StatusCode, axum::Json<Created>), ApiError> {
    caller.require(api::PLANNING)?;
    let pool = api::pool_id(&body.id)?;
    if body.capacity_type != CAPACITY_TYPE {
        return Err(ApiError::unknown_capacity_type(&body.capacity_type));
    }
    let config: QuotaConfig = serde_json::from_str(body.config.get())
        .map_err(|e| ApiError::invalid(problem("invalid_config", e.to_string())))?;
    let capacity = units(config.units)?;
    let inserted = sqlx::query(
        "INSERT INTO baseline.pools (pool_id, name, capacity) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(pool.as_str())
    .bind(&config.name)
    .bind(capacity)
    .execute(&state.db)
    .await
    .map_err(database)?
    .rows_affected();
    let status = if inserted == 1 {
        StatusCode::CREATED
    } else {
        let same: Option<bool> = sqlx::query_scalar(
            "SELECT name = $2 AND capacity = $3 FROM baseline.pools WHERE pool_id = $1",
        )
        .bind(pool.as_str())
        .bind(&config.name)
        .bind(capacity)
        .fetch_optional(&state.db)
        .await
        .map_err(database)?;
        if same != Some(true) {
            return Err(ApiError::rejected(problem(
                "pool_exists",
                format!("pool `{pool}` exists with another config"),
            )));
        }
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(Created {
            pool,
            capacity_type: CAPACITY_TYPE.into(),
            created: status == StatusCode::CREATED,
        }),
    ))
}

fn reserved(pool: PoolId, seq_nr: i64, id: &str, units: i64) -> Decided {
    Decided {
        pool,
        seq_nr: SeqNr(seq_nr),
        events: vec![json(
            json!({ "type": "reserved", "reservation_id": id, "units": units }),
        )],
    }
}

async fn reserve(
    State(state): State<Baseline>,
    caller: Caller,
    meta: Meta,
    Path(pool): Path<String>,
    Body(body): Body<ReserveBody>,
) -> Result<(StatusCode, axum::Json<Decided>), ApiError> {
    caller.require(api::ANYONE)?;
    let pool = api::pool_id(&pool)?;
    let id = api::client_id(&body.id)?;
    let request: QuotaRequest = serde_json::from_str(body.request.get())
        .map_err(|e| ApiError::invalid(problem("invalid_request", e.to_string())))?;
    if request.units == 0 {
        return Err(ApiError::invalid(problem(
            "invalid_units",
            "reserve at least one unit",
        )));
    }
    let units = units(request.units)?;
    let taken = within(
        meta,
        sqlx::query_scalar::<_, i64>(RESERVE)
            .bind(pool.as_str())
            .bind(&id)
            .bind(units)
            .fetch_optional(&state.db),
    )
    .await?;
    match taken {
        Ok(Some(seq_nr)) => Ok((
            StatusCode::CREATED,
            axum::Json(reserved(pool, seq_nr, &id, units)),
        )),
        // Taken already (a retry), or no pool, or not enough units: the
        // rare paths ask again.
        Ok(None) => Err(refusal(&state.db, &pool, &id, units).await?),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            let (seq_nr, units): (i64, i64) = sqlx::query_as(
                "SELECT seq_nr, units FROM baseline.reservations
                  WHERE pool_id = $1 AND reservation_id = $2",
            )
            .bind(pool.as_str())
            .bind(&id)
            .fetch_one(&state.db)
            .await
            .map_err(database)?;
            Ok((
                StatusCode::CREATED,
                axum::Json(reserved(pool, seq_nr, &id, units)),
            ))
        }
        Err(e) => Err(database(e)),
    }
}

/// Why a reservation took nothing.
async fn refusal(db: &PgPool, pool: &PoolId, id: &str, asked: i64) -> Result<ApiError, ApiError> {
    let row: Option<(i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT p.capacity, p.used,
                (SELECT units FROM baseline.reservations r
                  WHERE r.pool_id = p.pool_id AND r.reservation_id = $2)
           FROM baseline.pools p WHERE p.pool_id = $1",
    )
    .bind(pool.as_str())
    .bind(id)
    .fetch_optional(db)
    .await
    .map_err(database)?;
    Ok(match row {
        None => ApiError::not_found("unknown_pool", format!("no pool `{pool}`")),
        Some((_, _, Some(_))) => {
            ApiError::rejected(problem("duplicate_reservation", format!("{id} exists")))
        }
        Some((capacity, used, None)) => ApiError::rejected(problem(
            "quota_exhausted",
            format!("{} units left, {asked} asked", (capacity - used).max(0)),
        )),
    })
}

async fn release(
    State(state): State<Baseline>,
    caller: Caller,
    meta: Meta,
    Path((pool, id)): Path<(String, String)>,
) -> Result<axum::Json<Decided>, ApiError> {
    caller.require(api::ANYONE)?;
    let pool = api::pool_id(&pool)?;
    let id = api::client_id(&id)?;
    let released = within(
        meta,
        sqlx::query_as::<_, (i64, i64)>(RELEASE)
            .bind(pool.as_str())
            .bind(&id)
            .fetch_optional(&state.db),
    )
    .await?
    .map_err(database)?;
    let (seq_nr, units) = match released {
        Some(released) => released,
        None => {
            // Released before (a retry answers the same), or never made.
            let before: Option<(i64, i64)> = sqlx::query_as(
                "SELECT (SELECT seq_nr FROM baseline.pools WHERE pool_id = $1), units
                   FROM baseline.reservations
                  WHERE pool_id = $1 AND reservation_id = $2 AND released",
            )
            .bind(pool.as_str())
            .bind(&id)
            .fetch_optional(&state.db)
            .await
            .map_err(database)?;
            before.ok_or_else(|| {
                ApiError::rejected(problem(
                    "unknown_reservation",
                    format!("no reservation {id}"),
                ))
            })?
        }
    };
    Ok(axum::Json(Decided {
        pool,
        seq_nr: SeqNr(seq_nr),
        events: vec![json(
            json!({ "type": "released", "reservation_id": id, "units": units }),
        )],
    }))
}

/// Runs a statement within the caller's deadline, as a node runs a command:
/// past it, the caller is told to retry. An abandoned statement either
/// committed or not; a retry under the same id finds out which.
async fn within<T>(
    meta: Meta,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<Result<T, sqlx::Error>, ApiError> {
    tokio::time::timeout_at(meta.deadline, statement)
        .await
        .map_err(|_| ApiError::unavailable("deadline_exceeded", "the database took too long"))
}

async fn grid(
    State(state): State<Baseline>,
    caller: Caller,
    Query(query): Query<GridQuery>,
) -> Result<Response, ApiError> {
    caller.require(api::ANYONE)?;
    let limit = query.page_size()?;
    // Quota cells have no time range: `from` and `to` are checked, and keep
    // every cell.
    for (name, value) in [("from", &query.from), ("to", &query.to)] {
        if let Some(value) = value {
            api::time_ms(name, value)?;
        }
    }
    if let Some(after) = &query.after {
        api::pool_id(after)?;
    }
    if query
        .capacity_type
        .as_deref()
        .is_some_and(|t| t != CAPACITY_TYPE)
    {
        return Ok(page(Vec::new(), limit));
    }
    let prefix = query.prefix.unwrap_or_default();
    let rows: Vec<(String, String, i64, i64, i64, OffsetDateTime)> = sqlx::query_as(
        "SELECT pool_id, name, capacity, used, seq_nr, updated_at FROM baseline.pools
          WHERE pool_id >= $1 AND pool_id < $2 AND pool_id > $3
          ORDER BY pool_id LIMIT $4",
    )
    .bind(&prefix)
    .bind(format!("{prefix}{ID_CEILING}"))
    // Every bound is a bound of the index scan: a page after another
    // starts where that one ended, rather than filtering from the prefix's
    // first pool. Pool ids are never empty, so "" keeps them all.
    .bind(query.after.as_deref().unwrap_or(""))
    .bind(limit as i64 + 1)
    .fetch_all(&state.db)
    .await
    .map_err(database)?;
    let pools = rows
        .into_iter()
        .filter_map(|(pool, name, capacity, used, seq_nr, updated_at)| {
            let (capacity, used) = (capacity.max(0) as u64, used.max(0) as u64);
            Some(GridPool {
                pool: PoolId::new(&pool).ok()?,
                capacity_type: CAPACITY_TYPE.into(),
                seq_nr: SeqNr(seq_nr),
                updated_at,
                cells: vec![CellOut {
                    key: "units".into(),
                    labels: [("quota".to_owned(), name)].into(),
                    start_ms: None,
                    end_ms: None,
                    unit: "units".into(),
                    capacity,
                    used,
                    held: 0,
                    free: capacity.saturating_sub(used),
                    open: true,
                }],
            })
        })
        .collect();
    Ok(page(pools, limit))
}

/// A page of at most `limit` pools, from up to one more.
fn page(mut pools: Vec<GridPool>, limit: usize) -> Response {
    let next = (pools.len() > limit).then(|| {
        pools.truncate(limit);
        pools.last().map(|p| p.pool.clone())
    });
    let mut json = PageJson::for_entries(pools.len());
    for pool in &pools {
        json.push(pool);
    }
    json.finish(
        next.flatten().as_ref().map(PoolId::as_str),
        &ReadModelStatus {
            listening: true,
            lag_ms: 0,
        },
    )
}
