//! Refunds: `POST /v1/transactions/{id}/refunds` (Idempotency-Key required), the deposit's
//! refunds, and one refund. The rules ("only a succeeded deposit", "at most what is left",
//! "the merchant's balance covers it") are the database's, checked in the insert under the
//! payment's row lock; a refusal writes nothing but its 4xx under the key. Another merchant's
//! payment or refund is 404, exactly like an unknown id.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SubsecRound, Utc};
use paygate_core::db::refunds::{self, RefundInsert, RefundKey, RefundRefusal};
use paygate_core::db::transactions::{self, IdempotentRequest, InsertOutcome};
use paygate_core::db::DbError;
use paygate_core::domain::{NewRefund, RefundId, Scope};

use crate::auth::Merchant;
use crate::body::JsonBody;
use crate::error::{ErrorType, HttpError};
use crate::idempotency;
use crate::resources::{RefundList, RefundResource};
use crate::validation;
use crate::AppState;

/// How many of a deposit's refunds one list shows.
const MAX_LISTED: i64 = 100;

/// Refund a succeeded deposit, wholly or in part.
#[utoipa::path(
    post, path = "/v1/transactions/{id}/refunds", tag = "refunds",
    request_body = crate::resources::CreateRefundRequest,
    params(
        ("id" = paygate_core::domain::TransactionId, Path, description = "The deposit to refund, `txn_…`"),
        ("Idempotency-Key" = crate::idempotency::IdempotencyKey, Header, description = "Required: same key and body replays the first response (kept at least 24 hours)"),
    ),
    responses(
        (status = 201, description = "Created: the amount is held on your balance until the refund ends", body = RefundResource),
        (status = 400, description = "Invalid request; `param` names the field (`amount_invalid`, `reason_invalid`, `parameter_unknown`, `idempotency_key_missing`). Also `amount_too_large` (param `amount`: more than is left to refund), `transaction_not_refundable` (not a succeeded deposit) and `balance_insufficient` (param `amount`: your available balance in the currency is less). A refusal is stored under the Idempotency-Key and replayed", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the `payments:write` scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such transaction for this merchant", body = crate::error::ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is in flight", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = crate::error::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with a different request", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::error::ErrorBody),
        (status = 503, description = "Postgres unavailable: retry with the same Idempotency-Key after Retry-After", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, HttpError> {
    merchant.require(Scope::PaymentsWrite)?;
    let transaction = super::transactions::parse_id(id)?;
    let key = idempotency::key_from_headers(&headers)?.ok_or_else(|| {
        HttpError::invalid_param(
            "idempotency_key_missing",
            "Idempotency-Key",
            "a refund moves money: send an Idempotency-Key so that a retry cannot refund twice",
        )
    })?;
    let request_hash = idempotency::request_hash(&method, uri.path(), &body);
    let retention = state.config.idempotency_retention;
    let request = match validation::create_refund(&body) {
        Ok(request) => request,
        Err(invalid) => {
            // A repeat is answered as the first time even if it would not validate now.
            let stored = transactions::stored_outcome(
                &state.pool,
                merchant.id,
                &key,
                &request_hash,
                retention,
            )
            .await
            .map_err(HttpError::internal)?;
            return match stored {
                Some(outcome) => respond_keyed(outcome),
                None => Err(invalid),
            };
        }
    };
    // Another merchant's payment is "not found", never "not refundable": no existence leak.
    if transactions::merchant_of(&state.pool, transaction)
        .await
        .map_err(HttpError::internal)?
        != Some(merchant.id)
    {
        return Err(HttpError::not_found("transaction"));
    }
    let new = NewRefund {
        transaction_id: transaction,
        merchant_id: merchant.id,
        amount: request.amount,
        reason: request.reason,
    };
    let refund_key = RefundKey {
        key: key.clone(),
        request_hash,
        retention,
    };
    let trace = super::trace_from(&headers);
    let outcome = refunds::insert(
        &state.pool,
        &new,
        RefundId::new(),
        // Postgres keeps microseconds: the 201 shows exactly what a later read will.
        Utc::now().trunc_subsecs(6),
        Some(&refund_key),
        |refund| paygate_core::announce::refund_pending(refund, Some(trace)),
        |refund| {
            let body = serde_json::to_value(RefundResource::from(refund)).map_err(|e| {
                DbError::Corrupt {
                    table: "refunds",
                    detail: e.to_string(),
                }
            })?;
            Ok((StatusCode::CREATED.as_u16(), body))
        },
    )
    .await
    .map_err(HttpError::internal)?;
    match outcome {
        RefundInsert::Created(refund) => {
            tracing::info!(refund = %refund.id, transaction = %refund.transaction_id, amount = refund.money.amount.minor_units(), "refund accepted");
            metrics::counter!("paygate_refunds_accepted_total").increment(1);
            state.cache.forget_balance(merchant.id).await;
            let body =
                serde_json::to_value(RefundResource::from(&refund)).map_err(HttpError::internal)?;
            Ok(created(StatusCode::CREATED, body, false))
        }
        RefundInsert::Keyed(outcome) => respond_keyed(outcome),
        RefundInsert::Refused(refusal) => {
            metrics::counter!("paygate_refunds_refused_total").increment(1);
            let error = refusal_error(refusal);
            let request = IdempotentRequest {
                key,
                request_hash,
                response_status: error.status.as_u16(),
                response_body: serde_json::to_value(error.body()).map_err(HttpError::internal)?,
                retention,
            };
            match transactions::remember_refusal(&state.pool, merchant.id, &request)
                .await
                .map_err(HttpError::internal)?
            {
                None => Err(error),
                Some(stored) => respond_keyed(stored),
            }
        }
    }
}

/// A deposit's refunds, oldest first.
#[utoipa::path(
    get, path = "/v1/transactions/{id}/refunds", tag = "refunds",
    params(("id" = paygate_core::domain::TransactionId, Path, description = "Transaction id, `txn_…`")),
    responses(
        (status = 200, body = RefundList),
        (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such transaction for this merchant", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RefundList>, HttpError> {
    merchant.require(Scope::Read)?;
    let transaction = super::transactions::parse_id(id)?;
    if transactions::merchant_of(&state.pool, transaction)
        .await
        .map_err(HttpError::internal)?
        != Some(merchant.id)
    {
        return Err(HttpError::not_found("transaction"));
    }
    let mut rows = refunds::list_for_transaction(&state.pool, transaction, MAX_LISTED + 1)
        .await
        .map_err(HttpError::internal)?;
    let has_more = rows.len() as i64 > MAX_LISTED;
    rows.truncate(usize::try_from(MAX_LISTED).unwrap_or(0));
    Ok(Json(RefundList {
        object: "list".to_owned(),
        data: rows.iter().map(RefundResource::from).collect(),
        has_more,
    }))
}

/// Retrieve a refund.
#[utoipa::path(
    get, path = "/v1/refunds/{id}", tag = "refunds",
    params(("id" = RefundId, Path, description = "Refund id, `rfd_…`")),
    responses(
        (status = 200, body = RefundResource),
        (status = 400, description = "Malformed id", body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = crate::error::ErrorBody),
        (status = 404, description = "No such refund for this merchant", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn retrieve(
    State(state): State<AppState>,
    merchant: Merchant,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RefundResource>, HttpError> {
    merchant.require(Scope::Read)?;
    let Ok(Path(raw)) = id else {
        return Err(HttpError::not_found("refund"));
    };
    let id = RefundId::parse(&raw)
        .map_err(|e| HttpError::invalid_param("id_invalid", "id", e.to_string()))?;
    let refund = refunds::get_for_merchant(&state.pool, merchant.id, id)
        .await
        .map_err(HttpError::internal)?
        .ok_or_else(|| HttpError::not_found("refund"))?;
    Ok(Json(RefundResource::from(&refund)))
}

fn refusal_error(refusal: RefundRefusal) -> HttpError {
    match refusal {
        RefundRefusal::NotRefundable => HttpError::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            "transaction_not_refundable",
            "only a succeeded deposit can be refunded",
        ),
        RefundRefusal::AmountTooLarge { remaining } => HttpError::invalid_param(
            "amount_too_large",
            "amount",
            format!("the amount is more than is left to refund of this payment ({remaining})"),
        ),
        RefundRefusal::BalanceInsufficient => HttpError::invalid_param(
            "balance_insufficient",
            "amount",
            "the available balance in this currency is less than the amount",
        ),
    }
}

/// The answer a live Idempotency-Key gives.
fn respond_keyed(outcome: InsertOutcome) -> Result<Response, HttpError> {
    match outcome {
        InsertOutcome::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            Ok(created(status, body, true))
        }
        InsertOutcome::KeyReusedWithDifferentRequest => Err(HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::IdempotencyError,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request; use a new key for a new request",
        )
        .param("Idempotency-Key")),
        InsertOutcome::Created
        | InsertOutcome::InFlight
        | InsertOutcome::Refused(_)
        | InsertOutcome::KeyNotLive => {
            Err(HttpError::new(
                StatusCode::CONFLICT,
                ErrorType::IdempotencyError,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is being processed; retry shortly",
            )
            .param("Idempotency-Key"))
        }
    }
}

fn created(status: StatusCode, body: serde_json::Value, replayed: bool) -> Response {
    let location = body
        .get("id")
        .and_then(|id| id.as_str())
        .filter(|id| id.starts_with("rfd_"))
        .and_then(|id| HeaderValue::from_str(&format!("/v1/refunds/{id}")).ok());
    let mut response = (status, Json(body)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response.headers_mut().insert(
            idempotency::REPLAYED_HEADER,
            HeaderValue::from_static("true"),
        );
    }
    response
}
