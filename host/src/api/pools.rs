//! Planning: create pools, shape their capacity with the type's own
//! commands, and read a pool consistently, its audit trail, and its past.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::auth::{ANYONE, Allowed, Planning};
use super::checkout::{CommandKey, Decided, decided, run};
use super::grid::CellOut;
use super::route::caught_up;
use super::{ApiError, AppState, Body, Caller, Meta, Path, ProblemBody, Query, client_id, pool_id};
use crate::entity::Point;
use crate::ids::{PoolId, SeqNr};
use crate::journal::AuditedEvent;
use crate::sandbox::{Command, Json, View};

/// The header that makes a type-specific command safe to retry.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Most events per page of a pool's history.
const MAX_EVENTS_PAGE: i64 = 1_000;

/// A pool to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    /// The pool's id: 1 to 128 ASCII letters, digits or `-_.:/`.
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,128}$")]
    pub id: String,
    /// Its capacity type (`logistics`, `warehouse`, `vehicle-load`, …).
    pub capacity_type: String,
    /// Its config, in the capacity type's own terms.
    #[schema(value_type = Object)]
    pub config: Json,
}

/// A created pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct Created {
    /// The pool.
    #[schema(value_type = String)]
    pub pool: PoolId,
    /// Its capacity type.
    pub capacity_type: String,
    /// False when the same pool existed already, with the same type and config.
    pub created: bool,
}

/// A type-specific command.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// The command's name, as the capacity type documents it (`add_van`).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub name: String,
    /// Its arguments.
    #[schema(value_type = Object)]
    pub payload: Json,
}

/// A pool's state as its capacity type shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolState {
    /// The pool.
    #[schema(value_type = String)]
    pub pool: PoolId,
    /// Its capacity type.
    pub capacity_type: String,
    /// The state includes every event up to this one.
    #[schema(value_type = i64)]
    pub seq_nr: SeqNr,
    /// The capacity grid cells.
    pub cells: Vec<CellOut>,
    /// Type-specific details.
    #[schema(value_type = Object)]
    pub details: Json,
}

impl PoolState {
    fn new(pool: PoolId, capacity_type: String, seq_nr: SeqNr, view: View) -> Self {
        Self {
            pool,
            capacity_type,
            seq_nr,
            cells: view.cells.iter().map(CellOut::from).collect(),
            details: view.details,
        }
    }
}

/// Which part of the history to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this sequence number (default 0: from the start).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many events (default 100, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A page of a pool's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// The pool.
    #[schema(value_type = String)]
    pub pool: PoolId,
    /// The events, with who caused them and which plugin decided them.
    pub events: Vec<AuditedEvent>,
    /// Pass as `after` for the next page; absent at the end.
    pub next_after: Option<i64>,
}

/// A point in a pool's history: give `seq` or `at`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StateQuery {
    /// The state right after this event (0: as created).
    #[param(minimum = 0)]
    seq: Option<i64>,
    /// The state after every event appended at or before this time (RFC 3339).
    at: Option<String>,
}

/// Create a pool of a capacity type.
#[utoipa::path(
    post,
    path = "/v1/pools",
    tag = "planning",
    request_body = CreatePool,
    responses(
        (status = 201, description = "Created", body = Created),
        (status = 200, description = "The same pool existed already", body = Created),
        (status = 400, description = "Malformed request or id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not a planner or operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The pool exists with another type or config (`pool_exists`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unknown capacity type, or the type refuses the config", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable; retry", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A plugin fault or an internal error; the command took no effect", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    _: Allowed<Planning>,
    meta: Meta,
    Body(body): Body<CreatePool>,
) -> Result<(StatusCode, axum::Json<Created>), ApiError> {
    let pool = pool_id(&body.id)?;
    let create = || {
        state
            .runtime
            .create_pool(&pool, &body.capacity_type, &body.config)
    };
    let created = match create().await {
        Err(crate::entity::Error::UnknownCapacityType(_))
            if caught_up(&state, &body.capacity_type, meta.deadline).await? =>
        {
            create().await
        }
        created => created,
    };
    let created = match created {
        Err(crate::entity::Error::UnknownCapacityType(name)) => {
            return Err(ApiError::unknown_capacity_type(&name));
        }
        other => other?,
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(Created {
            pool,
            capacity_type: body.capacity_type,
            created,
        }),
    ))
}

/// Read a pool's state through its entity: it includes every command
/// answered before the request.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool}",
    tag = "planning",
    params(("pool" = String, Path, description = "The pool's id", pattern = "^[A-Za-z0-9._:/-]{1,128}$")),
    responses(
        (status = 200, description = "The pool's state", body = PoolState),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such pool", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable; retry", body = ProblemBody, content_type = "application/problem+json"),
        (status = 400, description = "Malformed request, id, query or header", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    meta: Meta,
    Path(pool): Path<String>,
) -> Result<axum::Json<PoolState>, ApiError> {
    caller.require(ANYONE)?;
    let pool = pool_id(&pool)?;
    let (seq_nr, view) = super::route::view(&state, &pool, meta.deadline).await?;
    let capacity_type = match state.read_model.get(&pool) {
        Some(held) => held.capacity_type.clone(),
        None => state.runtime.journal().pool(&pool).await?.capacity_type,
    };
    Ok(axum::Json(PoolState::new(
        pool,
        capacity_type,
        seq_nr,
        view,
    )))
}

/// Send a type-specific command: change capacity, move a van, add a shift…
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/commands",
    tag = "planning",
    params(
        ("pool" = String, Path, description = "The pool's id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: a command sent again with the same key answers its first outcome. Without one, the node gives the command a key and answers it in this header", pattern = "^[A-Za-z0-9._:/-]{1,128}$"),
    ),
    request_body = CommandBody,
    responses(
        (status = 200, description = "Decided and recorded", body = Decided),
        (status = 400, description = "Malformed request", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not a planner or operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such pool", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The rules refuse it; `code` is the capacity type's", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unknown command or arguments for the type", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Not decided (overloaded, or out of time before it was decided); sending it again is safe", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "Decided, but whether it was recorded is unknown (`outcome_unknown`): send it again with the same key (the one in `idempotency_key` if you sent none)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A plugin fault or an internal error; the command took no effect", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn command(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<Planning>,
    meta: Meta,
    headers: HeaderMap,
    Path(pool): Path<String>,
    Body(body): Body<CommandBody>,
) -> Result<(HeaderMap, axum::Json<Decided>), ApiError> {
    let pool = pool_id(&pool)?;
    // Every command is keyed: one sent without a key gets one, answered in
    // the header, so that an unknown outcome can be resolved by a safe retry.
    let key = match headers.get(&IDEMPOTENCY_KEY) {
        None => CommandKey::Given(format!("auto-{}", uuid::Uuid::new_v4())),
        Some(value) => CommandKey::Caller(client_id(value.to_str().map_err(|_| {
            ApiError::bad_request("invalid_id", "the Idempotency-Key header is not ASCII")
        })?)?),
    };
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if body.name.is_empty() || body.name.len() > 64 || !body.name.chars().all(name_char) {
        return Err(ApiError::bad_request(
            "invalid_command_name",
            "a command name has 1 to 64 ASCII letters, digits, `_` or `-`",
        ));
    }
    let command = Command::Custom {
        name: body.name,
        payload: body.payload,
    };
    let outcome = run(&state, &caller, meta, &pool, command, &key).await?;
    let decided = decided(pool, outcome).map_err(|e| e.for_command(&key))?;
    let mut answer = HeaderMap::new();
    if let CommandKey::Given(given) = &key {
        answer.insert(
            IDEMPOTENCY_KEY,
            HeaderValue::from_str(given).expect("a generated key is a header value"),
        );
    }
    Ok((answer, axum::Json(decided)))
}

/// Read a pool's history: every event, who caused it, when, and which plugin
/// version decided it.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool}/events",
    tag = "planning",
    params(("pool" = String, Path, description = "The pool's id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"), EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventsPage),
        (status = 400, description = "Bad paging", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not a planner or operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such pool", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now; retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    _: Allowed<Planning>,
    Path(pool): Path<String>,
    Query(query): Query<EventsQuery>,
) -> Result<axum::Json<EventsPage>, ApiError> {
    let pool = pool_id(&pool)?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if after < 0 || !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`after` must be 0 or more and `limit` 1 to {MAX_EVENTS_PAGE}"),
        ));
    }
    let journal = state.runtime.journal();
    journal.pool(&pool).await?;
    let events = journal.audit(&pool, SeqNr(after), limit).await?;
    let next_after = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.seq_nr.0))
        .flatten();
    Ok(axum::Json(EventsPage {
        pool,
        events,
        next_after,
    }))
}

/// Read a pool's state as it was after a given event or at a given time,
/// rebuilt from its events.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool}/state",
    tag = "planning",
    params(("pool" = String, Path, description = "The pool's id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"), StateQuery),
    responses(
        (status = 200, description = "The state then", body = PoolState),
        (status = 400, description = "Neither or both of `seq` and `at`, or a bad value", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not a planner or operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such pool", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now; retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn state_at(
    State(state): State<AppState>,
    _: Allowed<Planning>,
    meta: Meta,
    Path(pool): Path<String>,
    Query(query): Query<StateQuery>,
) -> Result<axum::Json<PoolState>, ApiError> {
    let pool = pool_id(&pool)?;
    let point = match (query.seq, query.at) {
        (Some(seq), None) if seq >= 0 => Point::Seq(SeqNr(seq)),
        (None, Some(at)) => Point::Time(
            OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339).map_err(
                |e| ApiError::bad_request("invalid_query", format!("`at` is not RFC 3339: {e}")),
            )?,
        ),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "give either `seq` (0 or more) or `at` (an RFC 3339 time)",
            ));
        }
    };
    let record = state.runtime.journal().pool(&pool).await?;
    caught_up(&state, &record.capacity_type, meta.deadline).await?;
    let (seq_nr, view) = state.runtime.state_at(&pool, point).await?;
    Ok(axum::Json(PoolState::new(
        pool,
        record.capacity_type,
        seq_nr,
        view,
    )))
}
