//! `POST /v1/deposits` and `POST /v1/withdrawals`: validate, then commit the transaction, its
//! idempotency key and its outbox announcement in one Postgres transaction; 202 after commit.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SubsecRound, Utc};
use paygate_core::db::transactions::{self, IdempotentRequest, InsertOutcome};
use paygate_core::domain::{NewTransaction, Transaction, TransactionKind};

use crate::auth::Merchant;
use crate::body::JsonBody;
use crate::error::{ErrorType, HttpError};
use crate::idempotency;
use crate::resources::{CreateTransactionRequest, TransactionResource};
use crate::validation;
use crate::AppState;

/// Create a deposit (money in).
#[utoipa::path(
    post, path = "/v1/deposits", tag = "transactions",
    request_body = CreateTransactionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: same key and body replays the first response")),
    responses(
        (status = 202, description = "Accepted: committed, will be processed", body = TransactionResource),
        (status = 400, description = "Invalid request; `param` names the field", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is in flight", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = crate::error::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with a different request", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::error::ErrorBody),
        (status = 503, description = "Postgres unavailable: the request could not commit; retry with the same Idempotency-Key after Retry-After", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_deposit(
    State(state): State<AppState>,
    merchant: Merchant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, HttpError> {
    create(
        state,
        merchant,
        TransactionKind::Deposit,
        method,
        uri,
        headers,
        body,
    )
    .await
}

/// Create a withdrawal (money out).
#[utoipa::path(
    post, path = "/v1/withdrawals", tag = "transactions",
    request_body = CreateTransactionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: same key and body replays the first response")),
    responses(
        (status = 202, description = "Accepted: committed, will be processed", body = TransactionResource),
        (status = 400, description = "Invalid request; `param` names the field", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is in flight", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = crate::error::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with a different request", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::error::ErrorBody),
        (status = 503, description = "Postgres unavailable: the request could not commit; retry with the same Idempotency-Key after Retry-After", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_withdrawal(
    State(state): State<AppState>,
    merchant: Merchant,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, HttpError> {
    create(
        state,
        merchant,
        TransactionKind::Withdrawal,
        method,
        uri,
        headers,
        body,
    )
    .await
}

async fn create(
    state: AppState,
    merchant: Merchant,
    kind: TransactionKind,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: serde_json::Value,
) -> Result<Response, HttpError> {
    let key = idempotency::key_from_headers(&headers)?;
    let request_hash = idempotency::request_hash(&method, uri.path(), &body);
    let retention = state.config.idempotency_retention;
    let validated = validation::create_transaction(
        &body,
        |name| state.registry.get(name).is_some(),
        state.destinations,
    )
    .await;
    let request = match validated {
        Ok(request) => request,
        Err(invalid) => {
            // A repeat is answered with the first response even when a check fails this time
            // (a callback_url's DNS lookup, say). Only a refused request pays for this read:
            // a valid repeat is told apart by the insert itself.
            if let Some(key) = &key {
                let stored = transactions::stored_outcome(
                    &state.pool,
                    merchant.id,
                    key,
                    &request_hash,
                    retention,
                )
                .await
                .map_err(HttpError::internal)?;
                if let Some(outcome) = stored {
                    return respond(outcome, serde_json::Value::Null);
                }
            }
            return Err(invalid);
        }
    };
    let transaction = Transaction::create(
        NewTransaction {
            merchant_id: merchant.id,
            kind,
            money: request.money,
            customer: request.customer,
            gateway: request.gateway,
            callback_url: request.callback_url,
            metadata: request.metadata,
        },
        // Postgres keeps microseconds: the 202 must show exactly what a later read will.
        Utc::now().trunc_subsecs(6),
    );
    let resource = TransactionResource::from(&transaction);
    let response_body = serde_json::to_value(&resource).map_err(HttpError::internal)?;

    let trace = super::trace_from(&headers);
    let announcement = paygate_core::announce::pending(&transaction, Some(trace));
    let idempotent = key.map(|key| IdempotentRequest {
        key,
        request_hash,
        response_status: StatusCode::ACCEPTED.as_u16(),
        response_body: response_body.clone(),
        retention,
    });

    let outcome = transactions::insert(
        &state.pool,
        &transaction,
        idempotent.as_ref(),
        &announcement,
    )
    .await
    .map_err(HttpError::internal)?;
    if outcome == InsertOutcome::Created {
        tracing::info!(transaction = %transaction.id, kind = kind.as_str(), trace_id = %trace.trace_id(), "transaction accepted");
        metrics::counter!("paygate_transactions_accepted_total", "kind" => kind.as_str())
            .increment(1);
    }
    respond(outcome, response_body)
}

/// The HTTP answer for an insert outcome; `created_body` is the new transaction's resource.
fn respond(outcome: InsertOutcome, created_body: serde_json::Value) -> Result<Response, HttpError> {
    match outcome {
        InsertOutcome::Created => Ok(accepted(StatusCode::ACCEPTED, created_body, false)),
        InsertOutcome::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::ACCEPTED);
            Ok(accepted(status, body, true))
        }
        InsertOutcome::KeyReusedWithDifferentRequest => Err(HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::IdempotencyError,
            "idempotency_key_reused",
            "this Idempotency-Key was already used with a different request; use a new key for a new request",
        )
        .param("Idempotency-Key")),
        InsertOutcome::InFlight => Err(HttpError::new(
            StatusCode::CONFLICT,
            ErrorType::IdempotencyError,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is being processed; retry shortly",
        )
        .param("Idempotency-Key")),
    }
}

fn accepted(status: StatusCode, body: serde_json::Value, replayed: bool) -> Response {
    let location = body
        .get("id")
        .and_then(|id| id.as_str())
        .and_then(|id| HeaderValue::from_str(&format!("/v1/transactions/{id}")).ok());
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
