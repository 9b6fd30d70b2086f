//! `/v1/webhook-secret`: the merchant's default signing secret, which signs deliveries to a
//! transaction's `callback_url` (registered endpoints have their own). The merchant needs it
//! to verify those deliveries, so it is shown to its authenticated owner (as Stripe's
//! dashboard reveals an endpoint's secret); it is created on first use. Rotation keeps the
//! previous secret signing for [`ROTATION_OVERLAP`]. Secrets are never logged, and answers
//! carrying one are `Cache-Control: no-store`.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use paygate_core::db::webhooks;

use crate::auth::Merchant;
use crate::error::HttpError;
use crate::resources::WebhookSecretResource;
use crate::AppState;
use paygate_core::domain::Scope;

pub use paygate_core::db::webhooks::ROTATION_OVERLAP;

/// About when a rotation made now stops sending the previous secret's signature.
pub fn overlap_end() -> DateTime<Utc> {
    let overlap = chrono::Duration::from_std(ROTATION_OVERLAP).unwrap_or(chrono::Duration::zero());
    Utc::now() + overlap
}

/// Marks an answer carrying a secret as not to be stored by any cache.
pub fn no_store(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The merchant's default webhook signing secret (created on first use).
#[utoipa::path(
    get, path = "/v1/webhook-secret", tag = "webhook_endpoints",
    responses(
        (status = 200, description = "The secret signing deliveries to transactions' `callback_url`", body = WebhookSecretResource),
        (status = 401, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn retrieve(
    State(state): State<AppState>,
    merchant: Merchant,
) -> Result<Response, HttpError> {
    merchant.require(Scope::WebhooksManage)?;
    let secret = webhooks::merchant_default_secret(&state.pool, &state.keyring, merchant.id)
        .await
        .map_err(HttpError::internal)?;
    Ok(no_store(Json(WebhookSecretResource::new(
        &secret, None, None,
    ))))
}

/// Rotate the merchant's default webhook signing secret. The new secret is returned; the
/// previous one keeps signing, as a second `v1,…` signature, for 24 hours.
#[utoipa::path(
    post, path = "/v1/webhook-secret/rotate", tag = "webhook_endpoints",
    responses(
        (status = 200, description = "Rotated; `secret` is the new one", body = WebhookSecretResource),
        (status = 401, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn rotate(
    State(state): State<AppState>,
    merchant: Merchant,
) -> Result<Response, HttpError> {
    merchant.require(Scope::WebhooksManage)?;
    let expires_at = overlap_end();
    let secret = webhooks::rotate_merchant_default_secret(
        &state.pool,
        &state.keyring,
        merchant.id,
        ROTATION_OVERLAP,
    )
    .await
    .map_err(HttpError::internal)?;
    tracing::info!(merchant = %merchant.id, "merchant default webhook secret rotated");
    Ok(no_store(Json(WebhookSecretResource::new(
        &secret,
        None,
        Some(expires_at),
    ))))
}
