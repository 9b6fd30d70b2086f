//! `GET /v1/balance` and `GET /v1/balance/transactions`: what the merchant holds per currency
//! (read through the Redis cache that every money-moving commit invalidates), and the ledger
//! entries that made it, newest first.

use axum::extract::{RawQuery, State};
use axum::Json;
use paygate_core::db::ledger::{self, EntryId};
use paygate_core::domain::Scope;

use crate::auth::Merchant;
use crate::error::HttpError;
use crate::resources::{BalanceResource, LedgerEntryList, LedgerEntryResource};
use crate::routes::transactions::{parse_limit, DEFAULT_LIMIT};
use crate::AppState;

/// The merchant's balance in every currency it holds or is receiving.
#[utoipa::path(
    get, path = "/v1/balance", tag = "balance",
    responses(
        (status = 200, body = BalanceResource),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn retrieve(
    State(state): State<AppState>,
    merchant: Merchant,
) -> Result<Json<BalanceResource>, HttpError> {
    merchant.require(Scope::Read)?;
    if let Some(cached) = state.cache.get_balance(merchant.id).await {
        return Ok(Json(cached));
    }
    let balances = ledger::balances(&state.pool, merchant.id)
        .await
        .map_err(HttpError::internal)?;
    let resource = BalanceResource::from(balances);
    state.cache.put_balance(merchant.id, &resource).await;
    Ok(Json(resource))
}

/// The merchant's ledger entries, newest first (keyset pagination).
#[utoipa::path(
    get, path = "/v1/balance/transactions", tag = "balance",
    params(
        ("limit" = Option<crate::routes::transactions::PageLimit>, Query, description = "Page size"),
        ("starting_after" = Option<EntryId>, Query, description = "The last id (`le_…`) of the previous page"),
    ),
    responses(
        (status = 200, body = LedgerEntryList),
        (status = 400, description = "Invalid parameter; `param` names it", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn entries(
    State(state): State<AppState>,
    merchant: Merchant,
    RawQuery(query): RawQuery,
) -> Result<Json<LedgerEntryList>, HttpError> {
    merchant.require(Scope::Read)?;
    let (limit, starting_after) = parse_query(query.as_deref().unwrap_or(""))?;
    let mut rows = ledger::entries(&state.pool, merchant.id, starting_after, limit + 1)
        .await
        .map_err(HttpError::internal)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(Json(LedgerEntryList {
        object: "list".to_owned(),
        data: rows.iter().map(LedgerEntryResource::from).collect(),
        has_more,
    }))
}

fn parse_query(raw: &str) -> Result<(i64, Option<EntryId>), HttpError> {
    let mut limit = DEFAULT_LIMIT;
    let mut starting_after = None;
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        match name.as_ref() {
            "limit" => limit = parse_limit(&value)?,
            "starting_after" => {
                let id = value.parse::<EntryId>().map_err(|e| {
                    HttpError::invalid_param("parameter_invalid", "starting_after", e)
                })?;
                starting_after = Some(id);
            }
            other => {
                return Err(HttpError::invalid_param(
                    "parameter_unknown",
                    other,
                    format!("unknown parameter: {other} (allowed: limit, starting_after)"),
                ))
            }
        }
    }
    Ok((limit, starting_after))
}
