//! `/v1/webhook-endpoints`: register (the signing secret is returned once), list, retrieve,
//! delete (disables: past deliveries keep their endpoint).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use paygate_core::db::webhook_endpoints as repo;
use paygate_core::domain::WebhookEndpointId;

use crate::auth::Merchant;
use crate::body::JsonBody;
use crate::error::{ErrorType, HttpError};
use crate::resources::{
    CreateWebhookEndpointRequest, DeletedResource, WebhookEndpointList, WebhookEndpointResource,
};
use crate::validation;
use crate::AppState;

/// Most enabled endpoints one merchant may have.
pub const MAX_ENDPOINTS: i64 = 16;

/// Register a webhook endpoint. The response carries its signing secret, shown only here.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints", tag = "webhook_endpoints",
    request_body = CreateWebhookEndpointRequest,
    responses(
        (status = 201, description = "Created; `secret` is shown only in this response", body = WebhookEndpointResource),
        (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    merchant: Merchant,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<WebhookEndpointResource>), HttpError> {
    let request = validation::create_webhook_endpoint(&body, &state.http_hosts)?;
    let count = repo::count_enabled(&state.pool, merchant.id)
        .await
        .map_err(HttpError::internal)?;
    if count >= MAX_ENDPOINTS {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            "endpoint_limit_reached",
            format!("at most {MAX_ENDPOINTS} webhook endpoints; delete one first"),
        ));
    }
    let endpoint = repo::create(
        &state.pool,
        merchant.id,
        &request.url,
        request.description.as_deref(),
    )
    .await
    .map_err(HttpError::internal)?;
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
    let endpoints = repo::list_enabled(&state.pool, merchant.id)
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
    params(("id" = String, Path, description = "Endpoint id, `we_…`")),
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
    let id = parse_id(id)?;
    let endpoint = repo::get_for_merchant(&state.pool, merchant.id, id)
        .await
        .map_err(HttpError::internal)?
        .ok_or_else(|| HttpError::not_found("webhook endpoint"))?;
    Ok(Json(WebhookEndpointResource::without_secret(&endpoint)))
}

/// Delete (disable) a webhook endpoint.
#[utoipa::path(
    delete, path = "/v1/webhook-endpoints/{id}", tag = "webhook_endpoints",
    params(("id" = String, Path, description = "Endpoint id, `we_…`")),
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

fn parse_id(id: Result<Path<String>, PathRejection>) -> Result<WebhookEndpointId, HttpError> {
    let Ok(Path(raw)) = id else {
        return Err(HttpError::not_found("webhook endpoint"));
    };
    WebhookEndpointId::parse(&raw)
        .map_err(|e| HttpError::invalid_param("id_invalid", "id", e.to_string()))
}
