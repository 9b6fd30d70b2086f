//! The one error shape every response uses: `{"error": {"type", "code", "message", "param"}}`.
//!
//! `type` is the broad class a client branches on, `code` the precise machine-readable reason,
//! `message` a sentence for a developer, `param` the request field at fault (or `null`).
//! Internal failures are logged here with their detail and answered with a generic message:
//! nothing about Postgres, Redis or Kafka ever reaches a client.

use std::any::Any;
use std::fmt;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The broad class of an error (Stripe's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The request was wrong: fix it before retrying.
    InvalidRequestError,
    /// No valid API key, or a forged provider callback.
    AuthenticationError,
    /// Too many requests for this API key; retry after `Retry-After` seconds.
    RateLimitError,
    /// An `Idempotency-Key` was reused with another request, or is in use right now.
    IdempotencyError,
    /// The API key is valid but lacks the scope this route needs.
    PermissionError,
    /// Our fault or a dependency's; safe to retry with the same `Idempotency-Key`.
    ApiError,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// Machine-readable reason, e.g. `amount_invalid`, `resource_missing`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
}

/// An error response on its way out.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub kind: ErrorType,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub retry_after: Option<Duration>,
}

impl HttpError {
    pub fn new(
        status: StatusCode,
        kind: ErrorType,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400 about one request parameter.
    pub fn invalid_param(code: &'static str, param: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            code,
            message,
        )
        .param(param)
    }

    pub fn missing_param(param: &str) -> Self {
        Self::invalid_param(
            "parameter_missing",
            param,
            format!("missing required parameter: {param}"),
        )
    }

    pub fn invalid_json(detail: impl fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            "invalid_json",
            format!("request body is not valid JSON: {detail}"),
        )
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::AuthenticationError,
            "invalid_api_key",
            message,
        )
    }

    /// 403: the key is valid but may not do this.
    pub fn scope_missing(scope: paygate_core::domain::Scope) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            ErrorType::PermissionError,
            "scope_missing",
            format!("this API key does not have the `{scope}` scope needed here"),
        )
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorType::InvalidRequestError,
            "resource_missing",
            format!("no such {what}"),
        )
    }

    pub fn unsupported_media_type(expected: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::InvalidRequestError,
            "unsupported_media_type",
            format!("Content-Type must be {expected}"),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::InvalidRequestError,
            "body_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorType::RateLimitError,
            "rate_limited",
            "too many requests for this API key; retry after the Retry-After delay",
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// 408: the request (body read included) took longer than `api.request_timeout_ms`.
    pub fn request_timeout(limit: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorType::InvalidRequestError,
            "request_timeout",
            format!(
                "the request was not completed within {} ms; send the body promptly",
                limit.as_millis()
            ),
        )
    }

    /// 429 before authentication: too many failed authentications from this address.
    pub fn address_rate_limited(retry_after: Duration) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorType::RateLimitError,
            "rate_limited",
            "too many failed authentications from this address; retry after the Retry-After delay",
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// 429 before a callback is read: this address sent this gateway too many callbacks.
    pub fn callback_rate_limited(retry_after: Duration) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorType::RateLimitError,
            "rate_limited",
            "too many callbacks from this address for this gateway; retry after the Retry-After delay",
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// 503: a dependency is down; the caller should retry later.
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::ApiError,
            "service_unavailable",
            message,
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// 503 before a create is read further: the pipeline is far behind on the payments it
    /// has (`crate::admission`); nothing was written.
    pub fn overloaded(retry_after: Duration) -> Self {
        let mut error = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::ApiError,
            "overloaded",
            "paygate is behind on the payments it has already accepted and takes no new ones \
             for now; nothing was created: retry with the same Idempotency-Key after the \
             Retry-After delay",
        );
        error.retry_after = Some(retry_after);
        error
    }

    /// 500, or 503 when the cause is Postgres being unreachable (see [`db_unavailable`]):
    /// then the request could not commit and a retry with the same `Idempotency-Key` after
    /// `Retry-After` is the right move, not a bug report. The detail is logged, never sent.
    pub fn internal<E: fmt::Display + 'static>(detail: E) -> Self {
        if db_unavailable(&detail) {
            tracing::warn!(error = %detail, "database unavailable");
            return Self::unavailable(
                "the database is unavailable; retry with the same Idempotency-Key after the Retry-After delay",
                DB_RETRY_AFTER,
            );
        }
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::ApiError,
            "internal_error",
            "an internal error occurred; retry with the same Idempotency-Key",
        )
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: self.kind,
                code: self.code.to_owned(),
                message: self.message.clone(),
                param: self.param.clone(),
            },
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(delay) = self.retry_after {
            // Whole seconds, rounded up, at least 1: a client that waits this long succeeds.
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// How long a client is asked to wait when Postgres is unreachable: a restart or failover
/// takes seconds (5 s measured for a restart, issue 13).
pub const DB_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Whether an error means "Postgres could not be reached or refused new work" (pool
/// timeout, connection refused or lost, server shutting down or starting up, too many
/// connections), as opposed to a bug or a constraint. Looks through `DbError` and
/// `sqlx::Error`, the two shapes handlers pass to [`HttpError::internal`].
pub fn db_unavailable(error: &dyn Any) -> bool {
    if let Some(paygate_core::db::DbError::Sqlx(e)) =
        error.downcast_ref::<paygate_core::db::DbError>()
    {
        return sqlx_unavailable(e);
    }
    error
        .downcast_ref::<sqlx::Error>()
        .is_some_and(sqlx_unavailable)
}

fn sqlx_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-03: admin shutdown, crash shutdown, cannot
            // connect now (starting up); 53300: too many connections.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Database(#[from] paygate_core::db::DbError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Bus(#[from] paygate_core::bus::BusError),
    #[error(transparent)]
    Startup(#[from] paygate_core::startup::StartupError),
    #[error("gateways: {0}")]
    Gateways(String),
    /// No usable `[secrets]` keyring (the message names the settings, never a key).
    #[error(transparent)]
    Secrets(#[from] paygate_core::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(String),
}
