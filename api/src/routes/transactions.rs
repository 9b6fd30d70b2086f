//! Reading transactions: one (cache-aside through Redis), a keyset-paginated list, the
//! webhook events of one (their ids are what `POST /v1/events/{id}/redeliver` takes) and its
//! delivery attempts. A merchant sees only its own: another's id is 404.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use paygate_core::db;
use paygate_core::db::transactions::ListQuery;
use paygate_core::domain::{TransactionId, TransactionStatus};

use crate::auth::Merchant;
use crate::cache::Entry;
use crate::error::HttpError;
use crate::resources::{
    DeliveryAttemptList, DeliveryAttemptResource, TransactionList, TransactionResource,
    WebhookEventList, WebhookEventResource,
};
use crate::AppState;
use paygate_core::domain::Scope;

pub const DEFAULT_LIMIT: i64 = 10;
pub const MAX_LIMIT: i64 = 100;

/// The `limit` query parameter of every list, as the API document describes it (bounds
/// from [`DEFAULT_LIMIT`] and [`MAX_LIMIT`], which [`parse_limit`] enforces).
pub struct PageLimit;

impl utoipa::PartialSchema for PageLimit {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .description(Some(format!(
                "Page size, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"
            )))
            .minimum(Some(1))
            .maximum(Some(MAX_LIMIT))
            .default(Some(serde_json::json!(DEFAULT_LIMIT)))
            .into()
    }
}

impl utoipa::ToSchema for PageLimit {}
const MAX_DELIVERIES: i64 = 100;

/// Retrieve a transaction.
#[utoipa::path(
    get, path = "/v1/transactions/{id}", tag = "transactions",
    params(("id" = TransactionId, Path, description = "Transaction id, `txn_…`")),
    responses(
        (status = 200, body = TransactionResource),
        (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, description = "No such transaction for this merchant", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn retrieve(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TransactionResource>, HttpError> {
    merchant.require(Scope::Read)?;
    let id = parse_id(id)?;
    if let Some(entry) = state.cache.get(id).await {
        return if entry.merchant_id == merchant.id {
            Ok(Json(entry.transaction))
        } else {
            Err(HttpError::not_found("transaction"))
        };
    }
    let transaction = db::transactions::get_for_merchant(&state.pool, merchant.id, id)
        .await
        .map_err(HttpError::internal)?
        .ok_or_else(|| HttpError::not_found("transaction"))?;
    let resource = TransactionResource::from(&transaction);
    state
        .cache
        .put(&Entry {
            merchant_id: merchant.id,
            transaction: resource.clone(),
        })
        .await;
    Ok(Json(resource))
}

/// List transactions, newest first (keyset pagination).
#[utoipa::path(
    get, path = "/v1/transactions", tag = "transactions",
    params(
        ("status" = Option<TransactionStatus>, Query, description = "Only transactions in this status"),
        ("limit" = Option<PageLimit>, Query, description = "Page size"),
        ("starting_after" = Option<TransactionId>, Query, description = "The last id of the previous page"),
    ),
    responses(
        (status = 200, body = TransactionList),
        (status = 400, description = "Invalid parameter; `param` names it", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    merchant: Merchant,
    RawQuery(query): RawQuery,
) -> Result<Json<TransactionList>, HttpError> {
    merchant.require(Scope::Read)?;
    let query = parse_list_query(query.as_deref().unwrap_or(""))?;
    let page_size = query.limit;
    let mut rows = db::transactions::list(
        &state.pool,
        merchant.id,
        ListQuery {
            limit: page_size + 1,
            ..query
        },
    )
    .await
    .map_err(HttpError::internal)?;
    let has_more = rows.len() as i64 > page_size;
    rows.truncate(usize::try_from(page_size).unwrap_or(0));
    Ok(Json(TransactionList {
        object: "list".to_owned(),
        data: rows.iter().map(TransactionResource::from).collect(),
        has_more,
    }))
}

/// The delivery attempts of a transaction's webhooks, oldest first.
#[utoipa::path(
    get, path = "/v1/transactions/{id}/deliveries", tag = "transactions",
    params(("id" = TransactionId, Path, description = "Transaction id, `txn_…`")),
    responses(
        (status = 200, body = DeliveryAttemptList),
        (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn deliveries(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeliveryAttemptList>, HttpError> {
    merchant.require(Scope::Read)?;
    let id = parse_id(id)?;
    db::transactions::get_for_merchant(&state.pool, merchant.id, id)
        .await
        .map_err(HttpError::internal)?
        .ok_or_else(|| HttpError::not_found("transaction"))?;
    let attempts = db::webhook_endpoints::list_attempts(&state.pool, id, MAX_DELIVERIES)
        .await
        .map_err(HttpError::internal)?;
    Ok(Json(DeliveryAttemptList {
        object: "list".to_owned(),
        data: attempts.iter().map(DeliveryAttemptResource::from).collect(),
    }))
}

/// The webhook events of a transaction (at most one per terminal outcome), oldest first.
#[utoipa::path(
    get, path = "/v1/transactions/{id}/events", tag = "transactions",
    params(("id" = TransactionId, Path, description = "Transaction id, `txn_…`")),
    responses(
        (status = 200, body = WebhookEventList),
        (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn events(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<WebhookEventList>, HttpError> {
    merchant.require(Scope::Read)?;
    let id = parse_id(id)?;
    db::transactions::get_for_merchant(&state.pool, merchant.id, id)
        .await
        .map_err(HttpError::internal)?
        .ok_or_else(|| HttpError::not_found("transaction"))?;
    let events = db::webhooks::events_for_transaction(&state.pool, id)
        .await
        .map_err(HttpError::internal)?;
    Ok(Json(WebhookEventList {
        object: "list".to_owned(),
        data: events
            .iter()
            .filter(|e| e.merchant_id == merchant.id)
            .map(WebhookEventResource::from)
            .collect(),
    }))
}

pub(crate) fn parse_id(
    id: Result<Path<String>, PathRejection>,
) -> Result<TransactionId, HttpError> {
    let Ok(Path(raw)) = id else {
        return Err(HttpError::not_found("transaction"));
    };
    TransactionId::parse(&raw)
        .map_err(|e| HttpError::invalid_param("id_invalid", "id", e.to_string()))
}

/// A page size: an integer from 1 to [`MAX_LIMIT`], in plain decimal digits (no sign, as
/// the document's `integer` is written).
pub(crate) fn parse_limit(value: &str) -> Result<i64, HttpError> {
    Some(value)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|l| (1..=MAX_LIMIT).contains(l))
        .ok_or_else(|| {
            HttpError::invalid_param(
                "parameter_invalid_integer",
                "limit",
                format!("limit must be an integer from 1 to {MAX_LIMIT}"),
            )
        })
}

fn parse_list_query(raw: &str) -> Result<ListQuery, HttpError> {
    let mut query = ListQuery {
        status: None,
        limit: DEFAULT_LIMIT,
        starting_after: None,
    };
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        match name.as_ref() {
            "status" => {
                let status = value.parse::<TransactionStatus>().map_err(|e| {
                    HttpError::invalid_param("parameter_invalid", "status", e.to_string())
                })?;
                query.status = Some(status);
            }
            "limit" => query.limit = parse_limit(&value)?,
            "starting_after" => {
                let id = TransactionId::parse(&value).map_err(|e| {
                    HttpError::invalid_param("parameter_invalid", "starting_after", e.to_string())
                })?;
                query.starting_after = Some(id);
            }
            other => {
                return Err(HttpError::invalid_param(
                    "parameter_unknown",
                    other,
                    format!("unknown parameter: {other} (allowed: status, limit, starting_after)"),
                ))
            }
        }
    }
    Ok(query)
}
