//! The router: every route, the fallbacks (so even a wrong path or method gets the one error
//! shape), request metrics and request tracing.

pub mod balance;
pub mod callbacks;
pub mod deposits;
pub mod events;
pub mod health;
pub mod refunds;
pub mod transactions;
pub mod webhook_endpoints;
pub mod webhook_secret;

use axum::http::HeaderMap;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use paygate_core::bus::trace::{TraceParent, TRACEPARENT};
use tower_http::trace::TraceLayer;

use crate::error::{ErrorType, HttpError};
use crate::AppState;

/// Every route; the web console (if enabled) nested at `/console` inside the same request
/// metrics and tracing.
pub fn router(state: AppState, console: Option<Router>) -> Router {
    let router = match console {
        Some(console) => Router::new().nest_service("/console", console),
        None => Router::new(),
    };
    router
        .route("/v1/deposits", post(deposits::create_deposit))
        .route("/v1/withdrawals", post(deposits::create_withdrawal))
        .route("/v1/balance", get(balance::retrieve))
        .route("/v1/balance/transactions", get(balance::entries))
        .route("/v1/transactions", get(transactions::list))
        .route("/v1/transactions/{id}", get(transactions::retrieve))
        .route(
            "/v1/transactions/{id}/deliveries",
            get(transactions::deliveries),
        )
        .route(
            "/v1/webhook-endpoints",
            post(webhook_endpoints::create).get(webhook_endpoints::list),
        )
        .route("/v1/transactions/{id}/events", get(transactions::events))
        .route(
            "/v1/transactions/{id}/refunds",
            post(refunds::create).get(refunds::list),
        )
        .route("/v1/refunds/{id}", get(refunds::retrieve))
        .route(
            "/v1/webhook-endpoints/{id}",
            get(webhook_endpoints::retrieve).delete(webhook_endpoints::delete),
        )
        .route(
            "/v1/webhook-endpoints/{id}/rotate-secret",
            post(webhook_endpoints::rotate_secret),
        )
        .route("/v1/webhook-secret", get(webhook_secret::retrieve))
        .route("/v1/webhook-secret/rotate", post(webhook_secret::rotate))
        .route("/v1/events/{id}/redeliver", post(events::redeliver))
        .route("/callbacks/{gateway}", post(callbacks::receive))
        .route(
            "/callbacks/{gateway}/{reference}/{token}",
            post(callbacks::receive_unsigned),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> HttpError {
    HttpError::new(
        axum::http::StatusCode::NOT_FOUND,
        ErrorType::InvalidRequestError,
        "route_not_found",
        "no such route",
    )
}

async fn method_not_allowed() -> HttpError {
    HttpError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        ErrorType::InvalidRequestError,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// The trace context to pass on: a child of the caller's `traceparent` if it sent a valid
/// one, else a new trace.
pub fn trace_from(headers: &HeaderMap) -> TraceParent {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map(|parent| parent.child())
        .unwrap_or_else(TraceParent::new_root)
}
