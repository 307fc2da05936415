//! Where a pool's commands run: on this node when it holds the pool's
//! shard, else on the owner, forwarded. A shard that is moving (its owner
//! gone, or saying it no longer owns it) is looked up again and retried
//! until the caller's deadline; only work that is safe to repeat (a keyed
//! command, a read) is sent again once it may have arrived.

use std::time::Duration;

use axum::extract::{Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::{ApiError, AppState, MAX_TIMEOUT};
use crate::cluster::{Forward, Op, POSTCARD, Reply, Route, from_text, to_text};
use crate::entity::{self, OUTCOME_GRACE, Outcome, Request};
use crate::ids::{PoolId, SeqNr};
use crate::journal;
use crate::metrics::{ForwardLabels, metrics};
use crate::registry;
use crate::sandbox::View;

/// The longest pause between two tries of a moving shard.
const MOST_PAUSE: Duration = Duration::from_millis(100);

/// What is asked of a pool's entity.
enum Work {
    Execute(Request),
    View,
}

/// What the entity answered.
enum Done {
    Outcome(Outcome),
    View(SeqNr, View),
}

/// Decides a command on its pool, wherever the pool lives.
pub(super) async fn execute(
    state: &AppState,
    pool: &PoolId,
    request: Request,
) -> Result<Outcome, ApiError> {
    let deadline = request.deadline;
    match routed(state, pool, deadline, Work::Execute(request)).await? {
        Done::Outcome(outcome) => Ok(outcome),
        Done::View(..) => unreachable!("a command is answered with an outcome"),
    }
}

/// Reads a pool through its entity, wherever the pool lives.
pub(super) async fn view(
    state: &AppState,
    pool: &PoolId,
    deadline: Instant,
) -> Result<(SeqNr, View), ApiError> {
    match routed(state, pool, deadline, Work::View).await? {
        Done::View(seq_nr, view) => Ok((seq_nr, view)),
        Done::Outcome(_) => unreachable!("a read is answered with a view"),
    }
}

/// Routes work to its pool. A command that may have reached an owner which
/// did not answer is never answered "not decided" afterwards: if the
/// deadline then passes, its outcome is unknown.
async fn routed(
    state: &AppState,
    pool: &PoolId,
    deadline: Instant,
    work: Work,
) -> Result<Done, ApiError> {
    let command = matches!(work, Work::Execute(_));
    let mut maybe_arrived = false;
    let done = route_until_answered(state, pool, deadline, work, &mut maybe_arrived).await;
    match done {
        Err(error) if command && maybe_arrived && error.code() == "deadline_passed" => {
            Err(entity::Error::OutcomeUnknown.into())
        }
        done => done,
    }
}

async fn route_until_answered(
    state: &AppState,
    pool: &PoolId,
    deadline: Instant,
    work: Work,
    maybe_arrived: &mut bool,
) -> Result<Done, ApiError> {
    let mut pause = Duration::from_millis(2);
    loop {
        match state.cluster.route(pool) {
            Route::Local => match local(state, pool, deadline, &work).await {
                Err(entity::Error::NotOwner(_)) => {}
                Err(entity::Error::Journal(journal::Error::Fenced { shard, epoch })) => {
                    state.cluster.fenced(shard, epoch);
                }
                done => return done.map_err(ApiError::from),
            },
            Route::Remote(owner) => {
                let forward = Forward {
                    pool: pool.to_string(),
                    timeout_ms: deadline
                        .saturating_duration_since(Instant::now())
                        .as_millis() as u64,
                    op: match &work {
                        Work::Execute(request) => Op::execute(request),
                        Work::View => Op::View,
                    },
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                // A little past the longest the owner may take to answer a
                // command it took in time, so that its answer (even "out of
                // time") arrives.
                let timeout = remaining + OUTCOME_GRACE + Duration::from_millis(250);
                match state.cluster.forward(&owner, &forward, timeout).await {
                    Ok(Reply::NotOwner) => count("not_owner"),
                    Ok(reply) => {
                        count("answered");
                        return answer(reply);
                    }
                    Err(failure) => {
                        count("failed");
                        *maybe_arrived |= failure.sent;
                        let repeatable = match &work {
                            Work::Execute(request) => request.key().is_some(),
                            Work::View => true,
                        };
                        if failure.sent && !repeatable {
                            tracing::warn!(
                                "a forwarded command without a key may or may not have \
                                 taken effect: {}",
                                failure.reason
                            );
                            return Err(ApiError::outcome_unknown(
                                "the node owning the pool did not answer; the command may have \
                                 taken effect. Send commands with an Idempotency-Key to make \
                                 retries safe",
                            ));
                        }
                        tracing::debug!("forwarding failed, looking again: {}", failure.reason);
                    }
                }
            }
            Route::Unknown => {}
        }
        if Instant::now() + pause >= deadline {
            return Err(entity::Error::DeadlinePassed.into());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MOST_PAUSE);
        state.cluster.resolve(pool).await;
    }
}

fn count(result: &'static str) {
    metrics()
        .forwarded
        .get_or_create(&ForwardLabels { result })
        .inc();
}

async fn local(
    state: &AppState,
    pool: &PoolId,
    deadline: Instant,
    work: &Work,
) -> entity::Result<Done> {
    loop {
        let done = match work {
            Work::Execute(request) => state
                .runtime
                .execute(pool, request.clone())
                .await
                .map(Done::Outcome),
            Work::View => state
                .runtime
                .view(pool, deadline)
                .await
                .map(|(seq_nr, view)| Done::View(seq_nr, view)),
        };
        match done {
            // The pool's start failed for want of its type, so nothing was
            // decided: once the node runs the type, the work is done again,
            // as soon as the failed start has let go of the pool.
            Err(entity::Error::UnknownCapacityType(capacity_type)) if Instant::now() < deadline => {
                if !caught_up(state, &capacity_type, deadline).await? {
                    return Err(entity::Error::UnknownCapacityType(capacity_type));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            done => return done,
        }
    }
}

/// Whether this node runs `capacity_type`, once it has looked in the
/// registry for an active version it has not loaded: work for a type
/// activated through another node can arrive before the activation's
/// notification does. Waits at most until `deadline`.
pub(super) async fn caught_up(
    state: &AppState,
    capacity_type: &str,
    deadline: Instant,
) -> entity::Result<bool> {
    let catch_up = state.registry.catch_up(&state.runtime, capacity_type);
    match tokio::time::timeout_at(deadline, catch_up).await {
        Ok(Ok(runs)) => Ok(runs),
        Ok(Err(registry::Error::Database(error))) => {
            Err(entity::Error::Journal(journal::Error::Database(error)))
        }
        Ok(Err(error)) => {
            tracing::warn!(capacity_type, "cannot run the active version: {error}");
            Ok(false)
        }
        Err(_) => Err(entity::Error::DeadlinePassed),
    }
}

fn answer(reply: Reply) -> Result<Done, ApiError> {
    let malformed = |e: crate::cluster::Malformed| ApiError::internal(&e);
    match reply {
        Reply::Outcome(outcome) => Ok(Done::Outcome(from_text(&outcome).map_err(malformed)?)),
        Reply::View { seq_nr, view } => Ok(Done::View(
            SeqNr(seq_nr),
            from_text(&view).map_err(malformed)?,
        )),
        Reply::Problem(problem) => Err(ApiError::from_wire(problem)),
        Reply::NotOwner => unreachable!("handled by the caller"),
    }
}

/// The internal route other nodes forward work to. It takes the cluster's
/// secret, not a user's token, and never forwards further: a node that does
/// not own the pool says so, and the sender looks again.
pub async fn forwarded(State(state): State<AppState>, request: HttpRequest) -> Response {
    let secret = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !secret.is_some_and(|s| state.cluster.admits(s)) {
        return ApiError::unauthenticated("forwarded work needs the cluster's secret")
            .into_response();
    }
    // Read only once the secret is known good.
    let body = match super::read_body(request, &(), super::BODY_TIMEOUT).await {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let forward: Forward = match postcard::from_bytes(&body) {
        Ok(forward) => forward,
        Err(error) => {
            return ApiError::bad_request("malformed_forward", error.to_string()).into_response();
        }
    };
    let reply = match reply_to(&state, forward).await {
        Ok(reply) => reply,
        Err(error) => Reply::Problem(error.to_wire()),
    };
    let bytes = postcard::to_stdvec(&reply).expect("replies serialize");
    (StatusCode::OK, [(header::CONTENT_TYPE, POSTCARD)], bytes).into_response()
}

async fn reply_to(state: &AppState, forward: Forward) -> Result<Reply, ApiError> {
    let pool = PoolId::new(&forward.pool)?;
    if !matches!(state.cluster.route(&pool), Route::Local) {
        return Ok(Reply::NotOwner);
    }
    let deadline = Instant::now() + Duration::from_millis(forward.timeout_ms).min(MAX_TIMEOUT);
    let work = match forward.op {
        Op::Execute {
            context,
            command,
            actor,
            idempotency_key,
        } => Work::Execute(Request {
            context,
            command: command
                .into_command()
                .map_err(|e| ApiError::bad_request("malformed_forward", e.to_string()))?,
            actor,
            idempotency_key,
            deadline,
        }),
        Op::View => Work::View,
    };
    match local(state, &pool, deadline, &work).await {
        Ok(Done::Outcome(outcome)) => Ok(Reply::Outcome(to_text(&outcome))),
        Ok(Done::View(seq_nr, view)) => Ok(Reply::View {
            seq_nr: seq_nr.0,
            view: to_text(&view),
        }),
        Err(entity::Error::NotOwner(_)) => Ok(Reply::NotOwner),
        Err(entity::Error::Journal(journal::Error::Fenced { shard, epoch })) => {
            state.cluster.fenced(shard, epoch);
            Ok(Reply::NotOwner)
        }
        Err(error) => Err(error.into()),
    }
}
