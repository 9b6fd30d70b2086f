//! `POST /v1/events/{id}/redeliver`: replay a webhook event. A fresh delivery, due at once, is
//! scheduled to the merchant's current destinations (enabled endpoints and the transaction's
//! `callback_url`) with a fresh attempt count; the callback dispatcher picks it up on its next
//! poll. The event keeps its id, so the receiver can dedupe by `webhook-id`. At most
//! `REDELIVERIES_PER_HOUR` (5) replays of one event per rolling hour: 429 past that.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use paygate_core::db::webhooks::{self, RedeliveryOutcome};
use paygate_core::domain::EventId;

use crate::auth::Merchant;
use crate::error::{ErrorType, HttpError};
use crate::resources::RedeliveryResource;
use crate::AppState;
use paygate_core::domain::Scope;

/// Redeliver a webhook event to the merchant's current destinations.
#[utoipa::path(
    post, path = "/v1/events/{id}/redeliver", tag = "webhook_endpoints",
    params(("id" = EventId, Path, description = "Event id, `evt_…` (see `GET /v1/transactions/{id}/events`)")),
    responses(
        (status = 202, description = "Scheduled: a fresh delivery to each current destination, due at once", body = RedeliveryResource),
        (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "No such event for this merchant", body = crate::error::ErrorBody),
        (status = 429, description = "This event was already redelivered 5 times in the last hour (`redelivery_limit_reached`); `Retry-After` says when the oldest of those leaves the window", body = crate::error::ErrorBody),
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
    let outcome = webhooks::redeliver_within(
        &state.pool,
        merchant.id,
        id,
        webhooks::REDELIVERIES_PER_HOUR,
    )
    .await
    .map_err(HttpError::internal)?;
    let redelivery = match outcome {
        RedeliveryOutcome::Scheduled(redelivery) => redelivery,
        RedeliveryOutcome::NotFound => return Err(HttpError::not_found("event")),
        RedeliveryOutcome::Limited { retry_after } => {
            tracing::info!(event = %id, merchant = %merchant.id, "event redelivery refused: limit reached");
            let mut error = HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorType::RateLimitError,
                "redelivery_limit_reached",
                format!(
                    "this event was redelivered {} times in the last hour; retry after the Retry-After delay",
                    webhooks::REDELIVERIES_PER_HOUR
                ),
            );
            error.retry_after = Some(retry_after);
            return Err(error);
        }
    };
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
