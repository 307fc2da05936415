//! The node's own routes: health, readiness, metrics, and what is loaded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::ANYONE;
use super::{ApiError, AppState, Caller, ProblemBody};
use crate::metrics::metrics as registry;

/// How long readiness waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The node is up.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// A capacity type this node runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct CapacityType {
    /// Its name, as pools are created with.
    pub name: String,
    /// The plugin that implements it.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "node",
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the node takes traffic and reaches its database.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "node",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Shutting down, or the database is unreachable", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Result<axum::Json<Health>, ApiError> {
    if !state.ready.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable(
            "not_ready",
            "this node is starting or shutting down",
        ));
    }
    let ping = sqlx::query("SELECT 1").execute(state.runtime.journal().db());
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(axum::Json(Health {
            status: "ok".into(),
        })),
        _ => Err(ApiError::unavailable(
            "journal_unavailable",
            "the database does not answer",
        )),
    }
}

/// Metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        registry().encode(),
    )
}

/// The capacity types pools can be created with.
#[utoipa::path(
    get,
    path = "/v1/capacity-types",
    tag = "node",
    responses(
        (status = 200, description = "The loaded capacity types", body = Vec<CapacityType>),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn capacity_types(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<Vec<CapacityType>>, ApiError> {
    caller.require(ANYONE)?;
    Ok(axum::Json(
        state
            .runtime
            .plugins()
            .iter()
            .map(|p| CapacityType {
                name: p.info().capacity_type.clone(),
                plugin: p.info().name.clone(),
                version: p.info().version.clone(),
            })
            .collect(),
    ))
}

/// The cluster as this node sees it: every registered node, whether its
/// heartbeat is fresh, and how many shards each holds.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "node",
    responses(
        (status = 200, description = "The cluster's nodes", body = crate::cluster::Status),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The database does not answer", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn cluster(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<crate::cluster::Status>, ApiError> {
    caller.require(ANYONE)?;
    let status = state
        .cluster
        .status()
        .await
        .map_err(|e| ApiError::from(crate::journal::Error::Database(e)))?;
    Ok(axum::Json(status))
}
