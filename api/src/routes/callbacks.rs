//! `POST /callbacks/{gateway}`: a provider reports an outcome.
//!
//! The gateway authenticates and parses the raw body first; only an authentic, well-formed
//! callback is produced to `paygate.callbacks.received` (keyed by our transaction id), and
//! 200 is answered only after the broker acknowledged it. Nothing is written to Postgres:
//! the callback processor applies it. Unknown gateway 404, past the gateway's per-address
//! limit 429 (before the body is read), forged 401, too large 413, unsupported type 415,
//! malformed 400, broker down 503 (the provider retries).
//! Of the request's headers only those the connector declares it verifies with
//! (`PaymentGateway::callback_headers`) are read and queued; none other reaches Kafka.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::Json;
use chrono::Utc;
use paygate_core::bus::events::{Body, CallbackReceived, Envelope};
use paygate_core::bus::trace::TRACEPARENT;
use paygate_core::bus::Topic;
use paygate_core::domain::GatewayName;
use paygate_gateways::{CallbackAuth, CallbackError, CallbackRequest};

use crate::body;
use crate::error::{ErrorType, HttpError};
use crate::resources::CallbackAccepted;
use crate::AppState;

/// Receive a provider callback.
#[utoipa::path(
    post, path = "/callbacks/{gateway}", tag = "callbacks",
    params(("gateway" = GatewayName, Path, description = "The configured gateway name (the served document lists each with its media types)")),
    request_body(
        description = "The provider's callback, exactly as it signed it",
        content(
            (Vec<u8> = "application/json"),
            (Vec<u8> = "application/xml"),
            (Vec<u8> = "text/xml"),
            (Vec<u8> = "application/x-protobuf"),
        )
    ),
    responses(
        (status = 200, description = "Authenticated and durably queued, or authentic and about nothing paygate acts on (ignored)", body = CallbackAccepted),
        (status = 400, description = "Authentic but malformed", body = crate::error::ErrorBody),
        (status = 401, description = "Signature missing, forged or stale", body = crate::error::ErrorBody),
        (status = 404, description = "No such gateway, or a gateway whose callbacks carry a path token", body = crate::error::ErrorBody),
        (status = 413, description = "Past the gateway's `max_callback_bytes` or `api.callback_max_body_bytes`", body = crate::error::ErrorBody),
        (status = 415, description = "A media type this gateway does not take", body = crate::error::ErrorBody),
        (status = 503, description = "Could not be queued; retry", body = crate::error::ErrorBody),
    )
)]
pub async fn receive(
    State(state): State<AppState>,
    gateway: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Json<CallbackAccepted>, HttpError> {
    let Ok(Path(raw_name)) = gateway else {
        return Err(HttpError::not_found("gateway"));
    };
    accept(&state, &raw_name, None, request).await
}

/// Receive a callback of a provider that signs nothing (M-Pesa Daraja): the URL the
/// connector gave the provider for one payment, `{reference}/{token}`.
#[utoipa::path(
    post, path = "/callbacks/{gateway}/{reference}/{token}", tag = "callbacks",
    params(
        ("gateway" = GatewayName, Path, description = "The configured gateway name"),
        ("reference" = String, Path, description = "The payment's reference at the provider"),
        ("token" = String, Path, description = "The secret token the connector put in this payment's callback URL"),
    ),
    request_body(
        description = "The provider's callback",
        content((Vec<u8> = "application/json"))
    ),
    responses(
        (status = 200, description = "Queued for confirmation by a status query, or ignored", body = CallbackAccepted),
        (status = 400, description = "Malformed", body = crate::error::ErrorBody),
        (status = 401, description = "Wrong path token", body = crate::error::ErrorBody),
        (status = 404, description = "No such gateway, or one whose callbacks are signed", body = crate::error::ErrorBody),
        (status = 413, description = "Past the gateway's `max_callback_bytes` or `api.callback_max_body_bytes`", body = crate::error::ErrorBody),
        (status = 415, description = "A media type this gateway does not take", body = crate::error::ErrorBody),
        (status = 503, description = "Could not be queued; retry", body = crate::error::ErrorBody),
    )
)]
pub async fn receive_unsigned(
    State(state): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    request: Request,
) -> Result<Json<CallbackAccepted>, HttpError> {
    let Ok(Path((raw_name, reference, token))) = path else {
        return Err(HttpError::not_found("gateway"));
    };
    accept(
        &state,
        &raw_name,
        Some(format!("{reference}/{token}")),
        request,
    )
    .await
}

/// Verifies, then queues (or ignores) one callback. `path`: an unsigned provider's
/// `{reference}/{token}`; each gateway is reachable on exactly one of the two routes.
async fn accept(
    state: &AppState,
    raw_name: &str,
    path: Option<String>,
    request: Request,
) -> Result<Json<CallbackAccepted>, HttpError> {
    let name = GatewayName::parse(raw_name).map_err(|_| HttpError::not_found("gateway"))?;
    let gateway = state
        .registry
        .get(&name)
        .ok_or_else(|| HttpError::not_found("gateway"))?;
    let wants_path = gateway.callback_auth() == CallbackAuth::PathToken;
    if wants_path != path.is_some() {
        return Err(HttpError::not_found("gateway"));
    }
    // Before the body is read, verified or parsed: a flood costs a map lookup per request.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    if let Err(wait) = state.callback_limiter.check(&name, peer) {
        metrics::counter!("paygate_callbacks_limited_total", "gateway" => name.to_string())
            .increment(1);
        return Err(HttpError::callback_rate_limited(wait));
    }

    let (headers, bytes) = body::read_raw(request, state.config.callback_max_body_bytes).await?;
    let received_at = Utc::now();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Only the headers the connector verifies with are kept: they are all it reads here,
    // and all the callback processor needs to verify the queued callback again. Anything
    // else (`authorization`, `cookie`, a proxy's additions) is dropped before it can reach
    // the bus or a dead letter. Header names from the HTTP layer are already lower case.
    let declared = gateway.callback_headers();
    let header_map: BTreeMap<String, String> = headers
        .iter()
        .filter(|(k, _)| declared.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let callback = CallbackRequest {
        body: bytes.clone(),
        content_type: content_type.clone(),
        headers: header_map.clone(),
        received_at,
        path: path.clone(),
    };

    // The trait forbids panics; a connector bug must still not take the request down
    // without an answer, nor be mistaken for an authentic callback.
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        gateway.handle_callback(&callback)
    }))
    .map_err(|_| {
        HttpError::internal(format!(
            "gateway {name} panicked while verifying a callback"
        ))
    })?;
    let event = verdict.map_err(|error| {
        tracing::warn!(gateway = %name, %error, "provider callback refused");
        metrics::counter!("paygate_callbacks_refused_total", "gateway" => name.to_string())
            .increment(1);
        refusal(error)
    })?;
    let Some(transaction) = event.transaction_id() else {
        // Authentic, about nothing we act on: 200 so the provider stops retrying.
        tracing::info!(gateway = %name, ?event, "provider callback ignored");
        metrics::counter!("paygate_callbacks_ignored_total", "gateway" => name.to_string())
            .increment(1);
        return Ok(Json(CallbackAccepted { received: true }));
    };

    let trace = super::trace_from(&headers);
    let envelope = Envelope::new(Body::CallbackReceived(CallbackReceived {
        gateway: name.to_string(),
        content_type: content_type.unwrap_or_default(),
        body: bytes.to_vec(),
        headers: header_map.into_iter().collect::<HashMap<_, _>>(),
        received_at_unix_ms: received_at.timestamp_millis(),
        path: path.unwrap_or_default(),
    }));
    let kafka_headers = BTreeMap::from([(TRACEPARENT.to_owned(), trace.to_string())]);
    let key = transaction.to_string();
    if let Err(error) = state
        .producer
        .send(
            Topic::CallbacksReceived,
            &key,
            &envelope.encode_to_bytes(),
            &kafka_headers,
        )
        .await
    {
        tracing::error!(gateway = %name, transaction = %key, %error, "callback not queued; answering 503");
        return Err(HttpError::unavailable(
            "the callback could not be queued; retry later",
            Duration::from_secs(5),
        ));
    }
    tracing::info!(gateway = %name, transaction = %key, trace_id = %trace.trace_id(), "provider callback queued");
    metrics::counter!("paygate_callbacks_queued_total", "gateway" => name.to_string()).increment(1);
    Ok(Json(CallbackAccepted { received: true }))
}

/// The HTTP answer to a refused callback. A forged one learns nothing about why.
fn refusal(error: CallbackError) -> HttpError {
    match error {
        CallbackError::Unauthenticated(_) => HttpError::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::AuthenticationError,
            "signature_invalid",
            "the callback signature could not be verified",
        ),
        CallbackError::Malformed(why) => HttpError::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            "callback_malformed",
            format!("malformed callback: {why}"),
        ),
        CallbackError::UnsupportedContentType(content_type) => HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::InvalidRequestError,
            "unsupported_media_type",
            format!("this gateway does not accept {content_type:?}"),
        ),
        CallbackError::TooLarge => HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::InvalidRequestError,
            "body_too_large",
            "the callback body is larger than this gateway accepts",
        ),
    }
}
