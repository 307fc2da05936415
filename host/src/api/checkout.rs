//! Checkout: reserve capacity, release it, confirm a hold, read the outcome.
//!
//! A reservation id is the caller's: sending the same one again answers the
//! first outcome and never takes capacity twice, which is what makes a
//! retry after a timeout safe.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::ANYONE;
use super::{ApiError, AppState, Body, Caller, Meta, Path, ProblemBody, client_id, pool_id};
use crate::entity::{Outcome, Request};
use crate::ids::{PoolId, SeqNr};
use crate::journal::KeptOutcome;
use crate::sandbox::{Command, Context, Json};

/// A reservation to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    /// The caller's reservation id: 1 to 128 ASCII letters, digits or
    /// `-_.:/`. Unique within the pool; reuse it to retry.
    #[schema(pattern = "^[A-Za-z0-9._:/-]{1,128}$")]
    pub id: String,
    /// What to reserve, in the capacity type's own terms.
    #[schema(value_type = Object)]
    pub request: Json,
}

/// A command that was decided and recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decided {
    /// The pool.
    #[schema(value_type = String)]
    pub pool: PoolId,
    /// The pool's sequence number after the command's events.
    #[schema(value_type = i64)]
    pub seq_nr: SeqNr,
    /// The events the capacity type decided, in order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Json>,
}

/// Path of a reservation.
#[derive(Deserialize)]
pub struct ReservationPath {
    pool: String,
    reservation: String,
}

/// A reservation's status, from the recorded outcomes of its commands.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationStatus {
    /// The pool.
    #[schema(value_type = String)]
    pub pool: PoolId,
    /// The reservation id.
    pub reservation: String,
    /// `reserved`, `confirmed`, `released`, `rejected` or `invalid`.
    pub status: String,
    /// The outcome of the reservation itself.
    #[schema(value_type = Object)]
    pub reserve: Json,
    /// The outcome of its release, if one was sent.
    #[schema(value_type = Option<Object>)]
    pub release: Option<Json>,
    /// The outcome of its confirmation, if one was sent.
    #[schema(value_type = Option<Object>)]
    pub confirm: Option<Json>,
}

/// The answer to a command: its events, or the problem of a refusal.
pub(super) fn decided(pool: PoolId, outcome: Outcome) -> Result<Decided, ApiError> {
    match outcome {
        Outcome::Accepted { seq_nr, events } => Ok(Decided {
            pool,
            seq_nr,
            events,
        }),
        Outcome::Rejected { problem } => Err(ApiError::rejected(problem)),
        Outcome::Invalid { problem } => Err(ApiError::invalid(problem)),
    }
}

/// What makes a command safe to send again: every command has a key, under
/// which its first outcome is answered to every repetition.
#[derive(Clone, Debug)]
pub(crate) enum CommandKey {
    /// A reservation, release or confirmation: its reservation id.
    ReservationId(String),
    /// A planner's command, with the caller's `Idempotency-Key`.
    Caller(String),
    /// A planner's command sent without a key: the one the node gave it,
    /// answered in the `Idempotency-Key` header.
    Given(String),
}

impl CommandKey {
    /// The idempotency key of a type-specific command.
    fn idempotency_key(&self) -> Option<String> {
        match self {
            CommandKey::ReservationId(_) => None,
            CommandKey::Caller(key) | CommandKey::Given(key) => Some(key.clone()),
        }
    }
}

/// Runs a command on its pool for a caller.
pub(super) async fn run(
    state: &AppState,
    caller: &Caller,
    meta: Meta,
    pool: &PoolId,
    command: Command,
    key: &CommandKey,
) -> Result<Outcome, ApiError> {
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let request = Request {
        context: Context {
            now_ms: now_ms as i64,
            request_id: meta.request_id,
            role: caller.role,
        },
        command,
        actor: caller.actor(),
        idempotency_key: key.idempotency_key(),
        deadline: meta.deadline,
    };
    super::route::execute(state, pool, request)
        .await
        .map_err(|e| e.for_command(key))
}

/// Reserve capacity.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/reservations",
    tag = "checkout",
    params(("pool" = String, Path, description = "The pool's id (percent-encode `/` as `%2F`)", pattern = "^[A-Za-z0-9._:/-]{1,128}$")),
    request_body = ReserveBody,
    responses(
        (status = 201, description = "Reserved (or reserved before with this id)", body = Decided),
        (status = 400, description = "Malformed request or id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such pool", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The rules refuse it; `code` is the capacity type's", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The request does not fit the capacity type", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Not decided (overloaded, or out of time before it was decided); sending it again is safe", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "Decided, but whether it was recorded is unknown (`outcome_unknown`): send it again with the same id", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A plugin fault or an internal error; the command took no effect", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn reserve(
    State(state): State<AppState>,
    caller: Caller,
    meta: Meta,
    Path(pool): Path<String>,
    Body(body): Body<ReserveBody>,
) -> Result<(StatusCode, axum::Json<Decided>), ApiError> {
    caller.require(ANYONE)?;
    let pool = pool_id(&pool)?;
    let id = client_id(&body.id)?;
    let key = CommandKey::ReservationId(id.clone());
    let command = Command::Reserve {
        id,
        request: body.request,
    };
    let outcome = run(&state, &caller, meta, &pool, command, &key).await?;
    Ok((StatusCode::CREATED, axum::Json(decided(pool, outcome)?)))
}

/// Release a reservation: its capacity is free again.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/reservations/{reservation}/release",
    tag = "checkout",
    params(
        ("pool" = String, Path, description = "The pool's id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"),
        ("reservation" = String, Path, description = "The reservation id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"),
    ),
    responses(
        (status = 200, description = "Released (or released before)", body = Decided),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such pool", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The rules refuse it (an unknown reservation, say)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Not decided (overloaded, or out of time before it was decided); sending it again is safe", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "Decided, but whether it was recorded is unknown (`outcome_unknown`): send it again", body = ProblemBody, content_type = "application/problem+json"),
        (status = 400, description = "Malformed request, id, query or header", body = ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A plugin fault or an internal error; the command took no effect", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    meta: Meta,
    Path(path): Path<ReservationPath>,
) -> Result<axum::Json<Decided>, ApiError> {
    on_reservation(&state, &caller, meta, &path, |id| Command::Release { id }).await
}

/// Confirm a hold, for capacity types that hold before they book.
#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/reservations/{reservation}/confirm",
    tag = "checkout",
    params(
        ("pool" = String, Path, description = "The pool's id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"),
        ("reservation" = String, Path, description = "The reservation id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"),
    ),
    responses(
        (status = 200, description = "Confirmed (or confirmed before)", body = Decided),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such pool", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The rules refuse it (the hold expired, say)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The capacity type has no holds", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Not decided (overloaded, or out of time before it was decided); sending it again is safe", body = ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "Decided, but whether it was recorded is unknown (`outcome_unknown`): send it again", body = ProblemBody, content_type = "application/problem+json"),
        (status = 400, description = "Malformed request, id, query or header", body = ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A plugin fault or an internal error; the command took no effect", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    meta: Meta,
    Path(path): Path<ReservationPath>,
) -> Result<axum::Json<Decided>, ApiError> {
    on_reservation(&state, &caller, meta, &path, |id| Command::Confirm { id }).await
}

/// Runs a command on an existing reservation, named by the path.
async fn on_reservation(
    state: &AppState,
    caller: &Caller,
    meta: Meta,
    path: &ReservationPath,
    command: fn(String) -> Command,
) -> Result<axum::Json<Decided>, ApiError> {
    caller.require(ANYONE)?;
    let pool = pool_id(&path.pool)?;
    let id = client_id(&path.reservation)?;
    let key = CommandKey::ReservationId(id.clone());
    let outcome = run(state, caller, meta, &pool, command(id), &key).await?;
    Ok(axum::Json(decided(pool, outcome)?))
}

/// Read what became of a reservation.
#[utoipa::path(
    get,
    path = "/v1/pools/{pool}/reservations/{reservation}",
    tag = "checkout",
    params(
        ("pool" = String, Path, description = "The pool's id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"),
        ("reservation" = String, Path, description = "The reservation id", pattern = "^[A-Za-z0-9._:/-]{1,128}$"),
    ),
    responses(
        (status = 200, description = "The reservation's outcomes", body = ReservationStatus),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such pool or reservation", body = ProblemBody, content_type = "application/problem+json"),
        (status = 400, description = "Malformed request, id, query or header", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now; retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn reservation(
    State(state): State<AppState>,
    caller: Caller,
    Path(path): Path<ReservationPath>,
) -> Result<axum::Json<ReservationStatus>, ApiError> {
    caller.require(ANYONE)?;
    let pool = pool_id(&path.pool)?;
    let id = client_id(&path.reservation)?;
    let journal = state.runtime.journal();
    journal.pool(&pool).await?;
    let keys = ["reserve", "release", "confirm"].map(|verb| format!("{verb}:{id}"));
    let mut outcomes = journal.outcomes_of(&pool, &keys).await?;
    let [reserve, release, confirm] = keys.map(|key| outcomes.remove(&key).map(shown));
    let reserve = reserve.ok_or_else(|| {
        ApiError::not_found(
            "unknown_reservation",
            format!("pool `{pool}` has no reservation `{id}`"),
        )
    })?;
    let kind = |outcome: &Json| match serde_json::from_str::<Outcome>(outcome.get()) {
        Ok(Outcome::Accepted { .. }) => "accepted",
        Ok(Outcome::Rejected { .. }) => "rejected",
        Ok(Outcome::Invalid { .. }) => "invalid",
        Err(_) => "unreadable",
    };
    let accepted = |outcome: &Option<Json>| outcome.as_ref().is_some_and(|o| kind(o) == "accepted");
    let status = if accepted(&release) {
        "released"
    } else if accepted(&confirm) {
        "confirmed"
    } else {
        match kind(&reserve) {
            "accepted" => "reserved",
            other => other,
        }
    };
    Ok(axum::Json(ReservationStatus {
        pool,
        reservation: id,
        status: status.to_owned(),
        reserve,
        release,
        confirm,
    }))
}

/// A kept outcome as commands answer it.
fn shown(kept: KeptOutcome) -> Json {
    match kept {
        KeptOutcome::Accepted { seq_nr, events } => {
            serde_json::value::to_raw_value(&Outcome::Accepted { seq_nr, events })
                .expect("outcomes serialize")
        }
        KeptOutcome::Recorded { outcome, .. } => outcome,
    }
}
