//! Every error of the API becomes a JSON problem (RFC 9457) with a stable
//! `code`, here and nowhere else. Internal details are logged, never sent.

use std::borrow::Cow;

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::checkout::CommandKey;
use crate::cluster::WireProblem;
use crate::entity;
use crate::ids::InvalidId;
use crate::journal;
use crate::sandbox::{self, Problem};

/// Seconds a client is asked to wait before retrying a 503.
const RETRY_AFTER_SECONDS: u32 = 1;

/// The body of every error response (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// `urn:allot:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time, for people.
    pub detail: String,
    /// Stable and machine-readable: branch on this. A capacity type's own
    /// codes (such as `slot_full`) are passed on as the plugin gave them.
    pub code: String,
    /// Whether the same request may succeed if sent again unchanged, and
    /// can take effect at most once however often it is sent.
    pub retryable: bool,
    /// For a planner's command sent without an `Idempotency-Key`: the key
    /// the node gave it. Sending the command again with this key is safe,
    /// and answers its first outcome if it took effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// An error the API answers with.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    title: Cow<'static, str>,
    detail: String,
    retryable: bool,
    idempotency_key: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            title: Cow::Borrowed(title),
            detail: detail.into(),
            retryable: false,
            idempotency_key: None,
        }
    }

    fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// 400: the request is not what the route takes.
    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request", detail)
    }

    /// 401: no valid token.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Unauthenticated",
            detail,
        )
    }

    /// 403: the token's role may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404: the named thing does not exist.
    pub fn not_found(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, "Not found", detail)
    }

    /// 405: the route exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "this route does not take that method",
        )
    }

    /// 409: the capacity type's rules refuse the command in the pool's state.
    pub fn rejected(problem: Problem) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            &problem.code,
            "Rejected by the capacity type's rules",
            problem.message,
        )
    }

    /// 422: the command does not fit the capacity type.
    pub fn invalid(problem: Problem) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            &problem.code,
            "Invalid for the capacity type",
            problem.message,
        )
    }

    /// 422 for an unknown capacity type named in a request body.
    pub fn unknown_capacity_type(name: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_capacity_type",
            "Unknown capacity type",
            format!("no plugin is loaded for capacity type `{name}`"),
        )
    }

    /// 503: the node cannot answer now; retry shortly.
    pub fn unavailable(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, "Unavailable", detail).retryable()
    }

    /// 502: the command may or may not have taken effect (a node this one
    /// passed it to did not answer after it may have arrived, or its
    /// commit's answer was lost). Not retryable until [`Self::for_command`]
    /// says how the caller retries safely.
    pub fn outcome_unknown(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "outcome_unknown",
            "Outcome unknown",
            detail,
        )
    }

    /// The error of a command, said with how its caller retries it: an
    /// unknown outcome is retryable only for a command that carried its
    /// caller's own key, and names the key the node gave a command sent
    /// without one.
    pub(crate) fn for_command(mut self, key: &CommandKey) -> Self {
        if let CommandKey::Given(given) = key {
            self.idempotency_key = Some(given.clone());
        }
        if self.code != "outcome_unknown" {
            return self;
        }
        let what = std::mem::take(&mut self.detail);
        match key {
            CommandKey::ReservationId(id) => {
                self.retryable = true;
                self.detail = format!(
                    "{what}. Send it again with the same reservation id `{id}`: that is safe, \
                     and answers the first outcome if it took effect"
                );
            }
            CommandKey::Caller(_) => {
                self.retryable = true;
                self.detail = format!(
                    "{what}. Send it again with the same Idempotency-Key: that is safe, and \
                     answers the first outcome if it took effect"
                );
            }
            CommandKey::Given(given) => {
                self.retryable = false;
                self.detail = format!(
                    "{what}. Sent again as it was, it could take effect twice; send it again \
                     with the header `Idempotency-Key: {given}`, which answers the first \
                     outcome if it took effect, or look for this request's id in the pool's \
                     events"
                );
            }
        }
        self
    }

    /// 408: the body did not arrive in time.
    pub fn body_timeout(within: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "Request timeout",
            format!("the body did not arrive within {} s", within.as_secs()),
        )
    }

    /// 500, with the cause logged and not sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!("internal error: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the node failed to answer; the cause is in its log",
        )
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The problem as it travels between nodes.
    pub(crate) fn to_wire(&self) -> WireProblem {
        WireProblem {
            status: self.status.as_u16(),
            code: self.code.clone(),
            title: self.title.to_string(),
            detail: self.detail.clone(),
            retryable: self.retryable,
        }
    }

    /// A problem another node answered with, passed on as it is.
    pub(crate) fn from_wire(problem: WireProblem) -> Self {
        Self {
            status: StatusCode::from_u16(problem.status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: problem.code,
            title: Cow::Owned(problem.title),
            detail: problem.detail,
            retryable: problem.retryable,
            idempotency_key: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:allot:problem:{}", self.code),
            title: self.title.into_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code,
            retryable: self.retryable,
            idempotency_key: self.idempotency_key,
        };
        let body_key = body.idempotency_key.clone();
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(key) = body_key.and_then(|k| HeaderValue::from_str(&k).ok()) {
            headers.insert(super::pools::IDEMPOTENCY_KEY, key);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, RETRY_AFTER_SECONDS.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<entity::Error> for ApiError {
    fn from(error: entity::Error) -> Self {
        use entity::Error as E;
        match error {
            E::UnknownPool(pool) => Self::not_found("unknown_pool", format!("no pool `{pool}`")),
            E::UnknownCapacityType(name) => Self::unavailable(
                "capacity_type_not_loaded",
                format!("no plugin for capacity type `{name}` is loaded on this node"),
            ),
            E::InvalidConfig(problem) => Self::invalid(problem),
            E::PoolExists(pool) => Self::new(
                StatusCode::CONFLICT,
                "pool_exists",
                "Pool exists",
                format!("pool `{pool}` already exists with another capacity type or config"),
            ),
            E::Overloaded(pool) => Self::unavailable(
                "overloaded",
                format!("pool `{pool}` has too many commands waiting; retry shortly"),
            ),
            E::DeadlinePassed => Self::unavailable(
                "deadline_passed",
                "the command was not decided before its deadline, and never will be; sending \
                 it again is safe",
            ),
            E::OutcomeUnknown => Self::outcome_unknown(
                "the command was decided, but whether it was recorded is not known",
            ),
            E::ShuttingDown => Self::unavailable("shutting_down", "this node is shutting down"),
            E::VersionPending(pool) => Self::unavailable(
                "version_switch_pending",
                format!(
                    "pool `{pool}` cannot move to its type's newly active version, which is being \
                     undone; retry shortly"
                ),
            ),
            E::KeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Key reused",
                "this reservation id or idempotency key was used for another request, which \
                 took effect; a retry sends the same request, a new request a new key",
            ),
            E::NotOwner(shard) => Self::unavailable(
                "not_owner",
                format!("shard {shard} is moving between nodes; retry shortly"),
            ),
            E::PoolFailed { pool, reason } => {
                tracing::error!(%pool, "pool failed: {reason}");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "pool_failed",
                    "Pool failed",
                    format!(
                        "pool `{pool}` cannot be rebuilt from its history and refuses commands"
                    ),
                )
            }
            E::Plugin(error) => error.into(),
            E::Journal(error) => error.into(),
        }
    }
}

impl From<sandbox::Error> for ApiError {
    fn from(error: sandbox::Error) -> Self {
        if error.is_retryable() {
            tracing::warn!("plugin call timed out: {error}");
            return Self::unavailable(
                "plugin_timeout",
                "the capacity type's plugin took too long; retry shortly",
            );
        }
        tracing::error!("plugin fault: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "plugin_fault",
            "Plugin fault",
            "the capacity type's plugin failed on this command, which took no effect; \
             the cause is in the node's log",
        )
    }
}

impl From<journal::Error> for ApiError {
    fn from(error: journal::Error) -> Self {
        if error.is_caused_by_input() {
            tracing::info!("the database refused a value of a request: {error}");
            return Self::bad_request(
                "unstorable_value",
                "the request holds a value the database cannot store (such as a NUL \
                 character, or text over its size limits)",
            );
        }
        if error.is_retryable() {
            tracing::warn!("journal unavailable: {error}");
            return Self::unavailable(
                "journal_unavailable",
                "the database could not be reached; retry shortly",
            );
        }
        match error {
            journal::Error::UnknownPool(pool) => {
                Self::not_found("unknown_pool", format!("no pool `{pool}`"))
            }
            error => Self::internal(&error),
        }
    }
}

impl From<crate::registry::Error> for ApiError {
    fn from(error: crate::registry::Error) -> Self {
        use crate::registry::Error as E;
        match error {
            E::Invalid(error) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plugin",
                "Invalid plugin",
                error.to_string(),
            ),
            E::WrongType { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "capacity_type_mismatch",
                "Capacity type mismatch",
                error.to_string(),
            ),
            E::UnknownVersion(_) => Self::not_found("unknown_plugin_version", error.to_string()),
            E::NoPrevious(_) => Self::new(
                StatusCode::CONFLICT,
                "no_previous_version",
                "Nothing to roll back to",
                error.to_string(),
            ),
            E::ReplayCheckFailed(_) => Self::new(
                StatusCode::CONFLICT,
                "replay_check_failed",
                "Replay check failed",
                format!("{error}; send `force: true` to activate it anyway"),
            ),
            E::SwapFailed { .. } => Self::new(
                StatusCode::CONFLICT,
                "activation_rolled_back",
                "Activation rolled back",
                error.to_string(),
            ),
            E::Busy(_) => Self::unavailable("activation_in_progress", error.to_string()),
            E::Stopped(_) => Self::internal(&error),
            E::Journal(error) => error.into(),
            E::Database(error) => journal::Error::Database(error).into(),
        }
    }
}

impl From<crate::view::Error> for ApiError {
    fn from(error: crate::view::Error) -> Self {
        Self::internal(&error)
    }
}

impl From<InvalidId> for ApiError {
    fn from(error: InvalidId) -> Self {
        Self::bad_request("invalid_id", error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let detail = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "Invalid body",
                detail,
            ),
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("malformed_json", detail),
            JsonRejection::MissingJsonContentType(_) => Self::unsupported_media_type(),
            rejection if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::payload_too_large(detail)
            }
            _ => Self::bad_request("unreadable_body", detail),
        }
    }
}

impl ApiError {
    /// 415: the body is not declared as JSON.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "send the body as `Content-Type: application/json`",
        )
    }

    fn payload_too_large(detail: String) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            detail,
        )
    }

    /// A body that could not be read: too large, or cut off.
    pub fn from_bytes_rejection(rejection: BytesRejection) -> Self {
        let detail = rejection.body_text();
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::payload_too_large(format!(
                "the body is larger than {} KiB",
                super::BODY_LIMIT / 1024
            ))
        } else {
            Self::bad_request("unreadable_body", detail)
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}
