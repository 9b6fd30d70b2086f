//! `/v1/webhook-endpoints`: register (the signing secret is returned once), list, retrieve,
//! delete (disables: past deliveries keep their endpoint), rotate the signing secret.
//!
//! A URL is accepted only if the SSRF guard the dispatcher uses admits it
//! ([`crate::url_policy`]).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use paygate_core::db::webhook_endpoints as repo;
use paygate_core::db::webhooks;
use paygate_core::domain::WebhookEndpointId;

use crate::auth::Merchant;
use crate::body::JsonBody;
use crate::error::{ErrorType, HttpError};
use crate::resources::{
    CreateWebhookEndpointRequest, DeletedResource, WebhookEndpointList, WebhookEndpointResource,
    WebhookSecretResource,
};
use crate::validation;
use crate::AppState;
use paygate_core::domain::Scope;

/// Most enabled endpoints one merchant may have.
pub const MAX_ENDPOINTS: i64 = 16;

/// Register a webhook endpoint. The response carries its signing secret, shown only here.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints", tag = "webhook_endpoints",
    request_body = CreateWebhookEndpointRequest,
    responses(
        (status = 201, description = "Created; `secret` is shown only in this response", body = WebhookEndpointResource),
        (status = 400, description = "Invalid body; a `url` the SSRF guard refuses (internal address, port outside `destinations.allowed_ports`, not https, unresolvable host; `param` is `url`); or 16 endpoints already (`endpoint_limit_reached`)", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    merchant: Merchant,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<WebhookEndpointResource>), HttpError> {
    merchant.require(Scope::WebhooksManage)?;
    let request = validation::create_webhook_endpoint(&body, state.destinations).await?;
    // Counted and inserted under one per-merchant lock: concurrent creates cannot overshoot.
    let endpoint = repo::create_capped(
        &state.pool,
        &state.keyring,
        merchant.id,
        &request.url,
        request.description.as_deref(),
        MAX_ENDPOINTS,
    )
    .await
    .map_err(HttpError::internal)?
    .ok_or_else(|| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            "endpoint_limit_reached",
            format!("at most {MAX_ENDPOINTS} webhook endpoints; delete one first"),
        )
    })?;
    tracing::info!(endpoint = %endpoint.id, merchant = %merchant.id, "webhook endpoint registered");
    Ok((
        StatusCode::CREATED,
        Json(WebhookEndpointResource::with_secret(&endpoint)),
    ))
}

/// List enabled webhook endpoints.
#[utoipa::path(
    get, path = "/v1/webhook-endpoints", tag = "webhook_endpoints",
    responses((status = 200, body = WebhookEndpointList), (status = 401, body = crate::error::ErrorBody)),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    merchant: Merchant,
) -> Result<Json<WebhookEndpointList>, HttpError> {
    merchant.require(Scope::WebhooksManage)?;
    let endpoints = repo::list_enabled(&state.pool, &state.keyring, merchant.id)
        .await
        .map_err(HttpError::internal)?;
    Ok(Json(WebhookEndpointList {
        object: "list".to_owned(),
        data: endpoints
            .iter()
            .map(WebhookEndpointResource::without_secret)
            .collect(),
    }))
}

/// Retrieve a webhook endpoint (without its secret).
#[utoipa::path(
    get, path = "/v1/webhook-endpoints/{id}", tag = "webhook_endpoints",
    params(("id" = WebhookEndpointId, Path, description = "Endpoint id, `we_…`")),
    responses(
        (status = 200, body = WebhookEndpointResource),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn retrieve(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<WebhookEndpointResource>, HttpError> {
    merchant.require(Scope::WebhooksManage)?;
    let id = parse_id(id)?;
    let endpoint = repo::get_for_merchant(&state.pool, &state.keyring, merchant.id, id)
        .await
        .map_err(HttpError::internal)?
        .ok_or_else(|| HttpError::not_found("webhook endpoint"))?;
    Ok(Json(WebhookEndpointResource::without_secret(&endpoint)))
}

/// Delete (disable) a webhook endpoint.
#[utoipa::path(
    delete, path = "/v1/webhook-endpoints/{id}", tag = "webhook_endpoints",
    params(("id" = WebhookEndpointId, Path, description = "Endpoint id, `we_…`")),
    responses(
        (status = 200, body = DeletedResource),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeletedResource>, HttpError> {
    merchant.require(Scope::WebhooksManage)?;
    let id = parse_id(id)?;
    let disabled = repo::disable(&state.pool, merchant.id, id)
        .await
        .map_err(HttpError::internal)?;
    if !disabled {
        return Err(HttpError::not_found("webhook endpoint"));
    }
    Ok(Json(DeletedResource {
        id,
        object: "webhook_endpoint".to_owned(),
        deleted: true,
    }))
}

/// Rotate a webhook endpoint's signing secret. The new secret is returned (only here); the
/// previous one keeps signing, as a second `v1,…` signature, for the overlap window.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints/{id}/rotate-secret", tag = "webhook_endpoints",
    params(("id" = WebhookEndpointId, Path, description = "Endpoint id, `we_…`")),
    responses(
        (status = 200, description = "Rotated; `secret` is the new one", body = WebhookSecretResource),
        (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "No such enabled endpoint for this merchant", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    merchant.require(Scope::WebhooksManage)?;
    let id = parse_id(id)?;
    let overlap = crate::routes::webhook_secret::ROTATION_OVERLAP;
    let expires_at = crate::routes::webhook_secret::overlap_end();
    let secret =
        webhooks::rotate_endpoint_secret(&state.pool, &state.keyring, merchant.id, id, overlap)
            .await
            .map_err(HttpError::internal)?
            .ok_or_else(|| HttpError::not_found("webhook endpoint"))?;
    tracing::info!(endpoint = %id, merchant = %merchant.id, "webhook endpoint secret rotated");
    Ok(crate::routes::webhook_secret::no_store(Json(
        WebhookSecretResource::new(&secret, Some(id), Some(expires_at)),
    )))
}

fn parse_id(id: Result<Path<String>, PathRejection>) -> Result<WebhookEndpointId, HttpError> {
    let Ok(Path(raw)) = id else {
        return Err(HttpError::not_found("webhook endpoint"));
    };
    WebhookEndpointId::parse(&raw)
        .map_err(|e| HttpError::invalid_param("id_invalid", "id", e.to_string()))
}
