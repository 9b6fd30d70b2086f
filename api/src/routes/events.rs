//! `POST /v1/events/{id}/redeliver`: replay a webhook event. A fresh delivery, due at once, is
//! scheduled to the merchant's current destinations (enabled endpoints and the transaction's
//! `callback_url`) with a fresh attempt count; the callback dispatcher picks it up on its next
//! poll. The event keeps its id, so the receiver can dedupe by `webhook-id`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use paygate_core::db::webhooks;
use paygate_core::domain::EventId;

use crate::auth::Merchant;
use crate::error::HttpError;
use crate::resources::RedeliveryResource;
use crate::AppState;
use paygate_core::domain::Scope;

/// Redeliver a webhook event to the merchant's current destinations.
#[utoipa::path(
    post, path = "/v1/events/{id}/redeliver", tag = "webhook_endpoints",
    params(("id" = String, Path, description = "Event id, `evt_…` (see `GET /v1/transactions/{id}/events`)")),
    responses(
        (status = 202, description = "Scheduled: a fresh delivery to each current destination, due at once", body = RedeliveryResource),
        (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "No such event for this merchant", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn redeliver(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<RedeliveryResource>), HttpError> {
    merchant.require(Scope::WebhooksManage)?;
    let Ok(Path(raw)) = id else {
        return Err(HttpError::not_found("event"));
    };
    let id = EventId::parse(&raw)
        .map_err(|e| HttpError::invalid_param("id_invalid", "id", e.to_string()))?;
    let redelivery = webhooks::redeliver(&state.pool, merchant.id, id)
        .await
        .map_err(HttpError::internal)?
        .ok_or_else(|| HttpError::not_found("event"))?;
    tracing::info!(
        event = %id,
        merchant = %merchant.id,
        generation = redelivery.generation,
        deliveries = redelivery.deliveries,
        "event redelivery scheduled"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(RedeliveryResource::from(&redelivery)),
    ))
}
