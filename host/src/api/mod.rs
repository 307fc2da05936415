//! The REST API: checkout, planning, the capacity grid, and the node's own
//! routes (health, readiness, metrics, the OpenAPI document).
//!
//! One file per route group; [`router`] puts them together with what every
//! route shares: auth (in the handlers, by the [`Caller`] extractor), a body
//! size limit, request ids, metrics, and problem responses for every error.

mod auth;
mod checkout;
mod error;
mod grid;
mod node;
mod openapi;
mod plugins;
mod pools;
mod route;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{
    DefaultBodyLimit, FromRef, FromRequest, FromRequestParts, MatchedPath, Request,
};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::time::Instant;
use tracing::Instrument;

pub use auth::{Caller, TokenConfig, TokenError, Tokens};
pub use error::{ApiError, ProblemBody};
pub use openapi::document;

// The baseline server answers in the same shapes.
pub(crate) use auth::{ANYONE, PLANNING};
pub(crate) use checkout::{Decided, ReserveBody};
pub(crate) use grid::{CellOut, GridPool, GridQuery, PageJson, ReadModelStatus, time_ms};
pub(crate) use pools::{CreatePool, Created};

use crate::entity::Runtime;
use crate::ids::PoolId;
use crate::metrics::{RouteLabels, metrics};
use crate::view::ReadModel;

/// Largest request body taken, in bytes. Configs, requests and commands are
/// small documents; anything larger is a mistake or an attack.
pub const BODY_LIMIT: usize = 256 * 1024;

/// How long a command may take when the caller does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest a caller may ask a command to take.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// The header a caller sets its own deadline with, in milliseconds.
pub const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("allot-timeout-ms");

/// The request id header, taken from the caller when valid, else made up.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// What the handlers share: one reference count to clone per request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of a node's API.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// The pool entities of this node.
    pub runtime: Runtime,
    /// The capacity grid.
    pub read_model: ReadModel,
    /// Who may call.
    pub tokens: Arc<Tokens>,
    /// Cleared when the node starts shutting down, so that load balancers
    /// stop sending before the listener closes.
    pub ready: Arc<AtomicBool>,
    /// The plugin registry.
    pub registry: crate::registry::Registry,
    /// This node's part in the cluster: who owns which pool.
    pub cluster: crate::cluster::Cluster,
}

impl FromRef<AppState> for Arc<Tokens> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

/// The API's routes over this state.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/pools", post(pools::create))
        .route("/pools/{pool}", get(pools::show))
        .route("/pools/{pool}/commands", post(pools::command))
        .route("/pools/{pool}/events", get(pools::events))
        .route("/pools/{pool}/state", get(pools::state_at))
        .route("/pools/{pool}/reservations", post(checkout::reserve))
        .route(
            "/pools/{pool}/reservations/{reservation}",
            get(checkout::reservation),
        )
        .route(
            "/pools/{pool}/reservations/{reservation}/release",
            post(checkout::release),
        )
        .route(
            "/pools/{pool}/reservations/{reservation}/confirm",
            post(checkout::confirm),
        )
        .route("/grid", get(grid::grid))
        .route("/cluster", get(node::cluster))
        .route("/capacity-types", get(node::capacity_types))
        .route(
            "/capacity-types/{capacity_type}/activate",
            post(plugins::activate),
        )
        .route(
            "/capacity-types/{capacity_type}/rollback",
            post(plugins::rollback),
        )
        .route(
            "/capacity-types/{capacity_type}/check",
            post(plugins::check),
        )
        .route(
            "/capacity-types/{capacity_type}/shadow",
            post(plugins::start_shadow)
                .get(plugins::shadow_report)
                .delete(plugins::stop_shadow),
        )
        .route(
            "/plugins",
            get(plugins::versions)
                .post(plugins::upload)
                .layer(DefaultBodyLimit::max(plugins::UPLOAD_LIMIT)),
        );
    Router::new()
        .nest("/v1", v1)
        .route(crate::cluster::FORWARD_PATH, post(route::forwarded))
        .route("/healthz", get(node::health))
        .route("/readyz", get(node::ready))
        .route("/metrics", get(node::metrics))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async {
            ApiError::not_found(
                "not_found",
                "no such route (an id with `/` goes into a path as `%2F`)",
            )
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// Gives every request an id and records its latency by route template.
pub(crate) async fn observe(mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let id = request
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| PoolId::new(v).is_ok())
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    // A fixed set: a label per method name a client makes up would grow
    // the metrics without bound.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("request", request_id = %id, method, route = %route);
    let mut response = next.run(request).instrument(span).await;
    metrics()
        .http_requests
        .get_or_create(&RouteLabels {
            method: method.to_owned(),
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[derive(Clone)]
struct RequestId(String);

/// A request id for a request that came without one, as a UUID: a random
/// one drawn once per process, with a counter mixed into its low bits.
/// Unique, and cheap: no randomness asked of the kernel per request.
fn new_request_id() -> String {
    static BASE: OnceLock<u128> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u128());
    // The top two bits of the low half are the UUID's variant: left alone.
    let n = NEXT.fetch_add(1, Ordering::Relaxed) & ((1 << 62) - 1);
    uuid::Uuid::from_u128(base ^ u128::from(n)).to_string()
}

/// What a command handler needs from the request besides its body: the
/// request id and the deadline.
pub struct Meta {
    /// The request id.
    pub request_id: String,
    /// When the caller stops waiting.
    pub deadline: Instant,
}

impl<S: Send + Sync> FromRequestParts<S> for Meta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_else(new_request_id);
        let timeout = match parts.headers.get(&TIMEOUT_HEADER) {
            None => DEFAULT_TIMEOUT,
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
                .filter(|t| !t.is_zero() && *t <= MAX_TIMEOUT)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_timeout",
                        format!(
                            "{TIMEOUT_HEADER} must be a number of milliseconds from 1 to {}",
                            MAX_TIMEOUT.as_millis()
                        ),
                    )
                })?,
        };
        Ok(Self {
            request_id,
            deadline: Instant::now() + timeout,
        })
    }
}

/// A JSON body whose rejections are problems.
///
/// Text with NUL characters is refused here: PostgreSQL cannot store them,
/// and a plugin that echoed one back (in a message, say) would fail.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let json_content = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == mime::APPLICATION
                    && (m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON))
            });
        if !json_content {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = read_body(request, state, BODY_TIMEOUT).await?;
        if bytes.windows(6).any(|w| w == b"\\u0000") {
            return Err(ApiError::bad_request(
                "nul_character",
                "the body contains a NUL character (\\u0000), which cannot be stored",
            ));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Self(value))
    }
}

/// How long a JSON body may take to arrive, once its head has: a client
/// that sends a body a byte at a time is answered 408, not waited for.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a request's body, within the route's size limit and `within`.
pub(crate) async fn read_body<S: Send + Sync>(
    request: Request,
    state: &S,
    within: Duration,
) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(within, axum::body::Bytes::from_request(request, state)).await {
        Ok(read) => read.map_err(ApiError::from_bytes_rejection),
        Err(_) => Err(ApiError::body_timeout(within)),
    }
}

/// Query parameters whose rejections are problems.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        no_nul(parts.uri.query().unwrap_or_default())?;
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Path parameters whose rejections are problems.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        no_nul(parts.uri.path())?;
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// Refuses a percent-encoded NUL in a path or query: no name or id may
/// hold one, and PostgreSQL cannot store it.
fn no_nul(raw: &str) -> Result<(), ApiError> {
    if raw
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%00"))
    {
        return Err(ApiError::bad_request(
            "nul_character",
            "the path or query contains a NUL character (%00)",
        ));
    }
    Ok(())
}

/// Checks a pool id from a path.
pub(crate) fn pool_id(id: &str) -> Result<PoolId, ApiError> {
    Ok(PoolId::new(id)?)
}

/// Checks a reservation id or idempotency key: the same rules as pool ids.
pub(crate) fn client_id(id: &str) -> Result<String, ApiError> {
    PoolId::new(id)?;
    Ok(id.to_owned())
}

/// Marks the node as no longer ready.
pub fn set_ready(state: &AppState, ready: bool) {
    state.ready.store(ready, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_request_ids_are_distinct_random_uuids() {
        let ids: Vec<String> = (0..1000).map(|_| new_request_id()).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version(), Some(uuid::Version::Random));
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        }
    }
}
