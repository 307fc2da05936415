//! The plugin registry, for operators: upload a component, list versions,
//! activate one for its capacity type, roll back.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Allowed, Operating};
use super::{ApiError, AppState, Body, Path, ProblemBody, Query};
use crate::entity::ShadowReport;
use crate::registry::{Activation, Report, Version};

/// Largest component taken, in bytes.
pub const UPLOAD_LIMIT: usize = 32 * 1024 * 1024;

/// Uploads read at once by one node process: what uploads can make it
/// hold in memory is this many times [`UPLOAD_LIMIT`]. Uploads are rare
/// and operators' own; one more waits for its turn at most
/// [`UPLOAD_WAIT`], then is told to retry.
const UPLOADS_AT_ONCE: usize = 2;

/// How long an upload waits for one in progress to finish.
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long an upload's body may take to arrive: 32 MiB at about 1 MB/s.
const UPLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Turns to read an upload's body.
static UPLOADS: Semaphore = Semaphore::const_new(UPLOADS_AT_ONCE);

/// Which versions to list, or what an upload must implement.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TypeQuery {
    /// Only this capacity type; for an upload, the type it must implement.
    capacity_type: Option<String>,
}

/// A component's bytes, for the OpenAPI document.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct ComponentBytes(Vec<u8>);

/// The version to activate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// Its digest, `sha256:<hex>`, as the upload answered.
    pub digest: String,
    /// Activate even if it cannot replay the history of existing pools.
    #[serde(default)]
    pub force: bool,
}

/// The version to check.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// Its digest, `sha256:<hex>`.
    pub digest: String,
    /// Check a random sample of this many pools instead of all.
    #[schema(minimum = 1)]
    pub sample: Option<usize>,
}

/// An activation and the replay check it passed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Activated {
    /// The activation.
    pub activation: Activation,
    /// What the replay check found.
    pub check: Report,
}

/// List the stored plugin versions.
#[utoipa::path(
    get,
    path = "/v1/plugins",
    tag = "plugins",
    params(TypeQuery),
    responses(
        (status = 200, description = "Versions by capacity type, newest first", body = Vec<Version>),
        (status = 400, description = "A bad query", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now; retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn versions(
    State(state): State<AppState>,
    _: Allowed<Operating>,
    Query(query): Query<TypeQuery>,
) -> Result<axum::Json<Vec<Version>>, ApiError> {
    let versions = state
        .registry
        .versions(query.capacity_type.as_deref())
        .await?;
    Ok(axum::Json(versions))
}

/// Upload a component: it is compiled, its contract and info checked, and
/// stored. Nothing is activated.
#[utoipa::path(
    post,
    path = "/v1/plugins",
    tag = "plugins",
    params(TypeQuery),
    request_body(content = ComponentBytes, content_type = "application/octet-stream", description = "The component (`.wasm`), as `application/wasm` or any other content type"),
    responses(
        (status = 201, description = "Stored", body = Version),
        (status = 200, description = "Stored already", body = Version),
        (status = 400, description = "A bad query or unreadable body", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Over 32 MiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a usable component (`invalid_plugin`), or of another capacity type (`capacity_type_mismatch`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now, or other uploads are being read (`uploads_busy`); retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn upload(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<Operating>,
    Query(query): Query<TypeQuery>,
    request: Request,
) -> Result<(StatusCode, axum::Json<Version>), ApiError> {
    // The caller's role was checked from the headers; only now, with a
    // turn, is the body read.
    let turn = tokio::time::timeout(UPLOAD_WAIT, UPLOADS.acquire())
        .await
        .map_err(|_| {
            ApiError::unavailable(
                "uploads_busy",
                format!("{UPLOADS_AT_ONCE} uploads are being read; retry shortly"),
            )
        })?
        .expect("the upload semaphore is never closed");
    let bytes = super::read_body(request, &(), UPLOAD_TIMEOUT).await?;
    drop(turn);
    let (version, stored) = state
        .registry
        .upload(
            bytes.to_vec(),
            query.capacity_type.as_deref(),
            &caller.actor(),
        )
        .await?;
    let status = if stored {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(version)))
}

/// Make a stored version the one that decides its capacity type, on every
/// node, after a replay check over every pool of the type. Live pools move
/// to it at their next command.
#[utoipa::path(
    post,
    path = "/v1/capacity-types/{capacity_type}/activate",
    tag = "plugins",
    params(("capacity_type" = String, Path, description = "The capacity type")),
    request_body = ActivateBody,
    responses(
        (status = 200, description = "Active, on this node already", body = Activated),
        (status = 409, description = "It cannot replay existing pools' history (`replay_check_failed`), or a live pool could not move to it and the activation was rolled back (`activation_rolled_back`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 400, description = "A malformed body", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The version implements another capacity type", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now; retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn activate(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<Operating>,
    Path(capacity_type): Path<String>,
    Body(body): Body<ActivateBody>,
) -> Result<axum::Json<Activated>, ApiError> {
    let (activation, check) = state
        .registry
        .activate_checked(
            &state.runtime,
            &capacity_type,
            &body.digest,
            &caller.actor(),
            body.force,
        )
        .await?;
    Ok(axum::Json(Activated { activation, check }))
}

/// Rebuild existing pools of the type with a stored version, beside the
/// active one, and report the pools it cannot rebuild or rebuilds into
/// another view. Nothing changes (a node that had not heard of the type's
/// latest activation yet loads that version first, to compare with it).
#[utoipa::path(
    post,
    path = "/v1/capacity-types/{capacity_type}/check",
    tag = "plugins",
    params(("capacity_type" = String, Path, description = "The capacity type")),
    request_body = CheckBody,
    responses(
        (status = 200, description = "The report", body = Report),
        (status = 400, description = "A malformed body", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The version implements another capacity type", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now; retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn check(
    State(state): State<AppState>,
    _: Allowed<Operating>,
    Path(capacity_type): Path<String>,
    Body(body): Body<CheckBody>,
) -> Result<axum::Json<Report>, ApiError> {
    let candidate = state
        .registry
        .candidate(&capacity_type, &body.digest)
        .await?;
    if body.sample == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_body",
            "`sample` must be 1 or more",
        ));
    }
    let report = state
        .registry
        .check(&state.runtime, &candidate, body.sample)
        .await?;
    Ok(axum::Json(report))
}

/// Make active again the version that was active before the current one,
/// after the same replay check as an activation, and move live pools to it.
#[utoipa::path(
    post,
    path = "/v1/capacity-types/{capacity_type}/rollback",
    tag = "plugins",
    params(("capacity_type" = String, Path, description = "The capacity type"), RollbackQuery),
    responses(
        (status = 200, description = "The previous version is active again", body = Activation),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "No earlier version (`no_previous_version`), it cannot replay existing pools (`replay_check_failed`; `force=true` rolls back anyway), or a live pool could not move (`activation_rolled_back`)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now, or another activation of the type is in progress (`activation_in_progress`); retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rollback(
    State(state): State<AppState>,
    Allowed(caller, _): Allowed<Operating>,
    Path(capacity_type): Path<String>,
    Query(query): Query<RollbackQuery>,
) -> Result<axum::Json<Activation>, ApiError> {
    let (activation, _check) = state
        .registry
        .rollback(
            &state.runtime,
            &capacity_type,
            &caller.actor(),
            query.force.unwrap_or(false),
        )
        .await?;
    Ok(axum::Json(activation))
}

/// How to roll back.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RollbackQuery {
    /// Roll back even if the previous version cannot replay the history
    /// of existing pools.
    force: Option<bool>,
}

/// The version to shadow with.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowBody {
    /// Its digest, `sha256:<hex>`.
    pub digest: String,
}

/// Start shadowing a capacity type with a stored version, on this node:
/// from each live pool's next command on, it decides every command too; its
/// decisions are compared with the real ones and never recorded.
#[utoipa::path(
    post,
    path = "/v1/capacity-types/{capacity_type}/shadow",
    tag = "plugins",
    params(("capacity_type" = String, Path, description = "The capacity type")),
    request_body = ShadowBody,
    responses(
        (status = 200, description = "Shadowing from now on (a previous shadow is replaced)", body = ShadowReport),
        (status = 400, description = "A malformed body", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such version", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over 256 KiB", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Body not sent as application/json", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The version implements another capacity type", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Unavailable now; retry (Retry-After)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn start_shadow(
    State(state): State<AppState>,
    _: Allowed<Operating>,
    Path(capacity_type): Path<String>,
    Body(body): Body<ShadowBody>,
) -> Result<axum::Json<ShadowReport>, ApiError> {
    let candidate = state
        .registry
        .candidate(&capacity_type, &body.digest)
        .await?;
    Ok(axum::Json(state.runtime.start_shadow(candidate)))
}

/// What the capacity type's shadow found so far on this node: agreements,
/// disagreements (with the latest examples) and failures.
#[utoipa::path(
    get,
    path = "/v1/capacity-types/{capacity_type}/shadow",
    tag = "plugins",
    params(("capacity_type" = String, Path, description = "The capacity type")),
    responses(
        (status = 200, description = "The report so far", body = ShadowReport),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No shadow (`no_shadow`)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn shadow_report(
    State(state): State<AppState>,
    _: Allowed<Operating>,
    Path(capacity_type): Path<String>,
) -> Result<axum::Json<ShadowReport>, ApiError> {
    state
        .runtime
        .shadow_report(&capacity_type)
        .map(axum::Json)
        .ok_or_else(|| no_shadow(&capacity_type))
}

/// Stop the capacity type's shadow; answers its final report.
#[utoipa::path(
    delete,
    path = "/v1/capacity-types/{capacity_type}/shadow",
    tag = "plugins",
    params(("capacity_type" = String, Path, description = "The capacity type")),
    responses(
        (status = 200, description = "Stopped; the final report", body = ShadowReport),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an operator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No shadow (`no_shadow`)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn stop_shadow(
    State(state): State<AppState>,
    _: Allowed<Operating>,
    Path(capacity_type): Path<String>,
) -> Result<axum::Json<ShadowReport>, ApiError> {
    state
        .runtime
        .stop_shadow(&capacity_type)
        .map(axum::Json)
        .ok_or_else(|| no_shadow(&capacity_type))
}

fn no_shadow(capacity_type: &str) -> ApiError {
    ApiError::not_found(
        "no_shadow",
        format!("no version shadows capacity type `{capacity_type}` on this node"),
    )
}
