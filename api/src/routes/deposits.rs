//! `POST /v1/deposits` and `POST /v1/withdrawals`: validate, then commit the transaction, its
//! idempotency key and its outbox announcement in one Postgres statement; 202 after commit.
//! The same statement meets the merchant's limits and, for a withdrawal, holds the amount on
//! its balance (the ledger's trigger): a refusal writes nothing but the 4xx under the key.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SubsecRound, Utc};
use paygate_core::db::ledger::Refusal;
use paygate_core::db::transactions::{self, IdempotentRequest, InsertOutcome};
use paygate_core::domain::{NewTransaction, Scope, Transaction, TransactionKind};

use crate::auth::{self, CachedMerchant, Merchant};
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
    params(("Idempotency-Key" = Option<crate::idempotency::IdempotencyKey>, Header, description = "Makes a retry safe: same key and body replays the first response (kept at least 24 hours)")),
    responses(
        (status = 202, description = "Accepted: committed, will be processed", body = TransactionResource),
        (status = 400, description = "Invalid request; `param` names the field. Also `amount_over_limit` (param `amount`: over the merchant's max_amount in this currency) and `gateway_not_enabled` (param `gateway`)", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the `payments:write` scope", body = crate::error::ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is in flight", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = crate::error::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with a different request", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::error::ErrorBody),
        (status = 503, description = "Nothing was created; retry with the same Idempotency-Key after `Retry-After` (1 to 5 s). `overloaded`: the pipeline is behind on the payments it already has (its workers' messages wait longer than `api.shed_after_wait_ms`, 5 s by default). `service_unavailable`: Postgres is unavailable and the request could not commit", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_deposit(
    State(state): State<AppState>,
    CachedMerchant(merchant): CachedMerchant,
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
    params(("Idempotency-Key" = Option<crate::idempotency::IdempotencyKey>, Header, description = "Makes a retry safe: same key and body replays the first response (kept at least 24 hours)")),
    responses(
        (status = 202, description = "Accepted: committed, will be processed", body = TransactionResource),
        (status = 400, description = "Invalid request; `param` names the field. Also `balance_insufficient` (param `amount`: more than the available balance in this currency), `amount_over_limit` and `daily_payout_limit_exceeded` (param `amount`), `gateway_not_enabled` (param `gateway`). A refusal is stored under the Idempotency-Key and replayed", body = crate::error::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::error::ErrorBody),
        (status = 403, description = "The key lacks the `payouts:write` scope", body = crate::error::ErrorBody),
        (status = 409, description = "A request with this Idempotency-Key is in flight", body = crate::error::ErrorBody),
        (status = 413, description = "Body too large", body = crate::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = crate::error::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with a different request", body = crate::error::ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = crate::error::ErrorBody),
        (status = 503, description = "Nothing was created; retry with the same Idempotency-Key after `Retry-After` (1 to 5 s). `overloaded`: the pipeline is behind on the payments it already has (its workers' messages wait longer than `api.shed_after_wait_ms`, 5 s by default). `service_unavailable`: Postgres is unavailable and the request could not commit", body = crate::error::ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn create_withdrawal(
    State(state): State<AppState>,
    CachedMerchant(merchant): CachedMerchant,
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

/// The request as received, for [`create_as`] (which may run twice).
struct Received {
    kind: TransactionKind,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: serde_json::Value,
}

/// What one attempt at a create came to.
enum Attempt {
    Answered(Response),
    /// What the key cache said may be out of date: the insert found the key revoked or the
    /// named gateway disabled since, or the cached merchant lacks the gateway named (it may
    /// have been enabled since).
    Stale,
}

/// Where the merchant of an attempt came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    KeyCache,
    Postgres,
}

/// Creates as `merchant` unless the pipeline is too far behind to take more
/// ([`crate::admission`]), authenticated from the key cache; when the attempt finds the
/// cache out of date, the key is looked up afresh (401 if revoked) and the create tried once
/// more with what Postgres says now.
async fn create(
    state: AppState,
    merchant: Merchant,
    kind: TransactionKind,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: serde_json::Value,
) -> Result<Response, HttpError> {
    state.admission.admit()?;
    let received = Received {
        kind,
        method,
        uri,
        headers,
        body,
    };
    let first = create_as(&state, &merchant, Source::KeyCache, &received).await?;
    if let Attempt::Answered(response) = first {
        return Ok(response);
    }
    let fresh = auth::reauthenticate(&state, &merchant).await?;
    match create_as(&state, &fresh, Source::Postgres, &received).await? {
        Attempt::Answered(response) => Ok(response),
        // Revoked (or the gateway disabled) between the lookup and the insert, a moment ago.
        Attempt::Stale => Err(HttpError::unauthenticated("invalid API key")),
    }
}

async fn create_as(
    state: &AppState,
    merchant: &Merchant,
    source: Source,
    received: &Received,
) -> Result<Attempt, HttpError> {
    let Received {
        kind,
        method,
        uri,
        headers,
        body,
    } = received;
    let kind = *kind;
    merchant.require(match kind {
        TransactionKind::Deposit => Scope::PaymentsWrite,
        TransactionKind::Withdrawal => Scope::PayoutsWrite,
    })?;
    let key = idempotency::key_from_headers(headers)?;
    let request_hash = idempotency::request_hash(method, uri.path(), body);
    let retention = state.config.idempotency_retention;
    let validated = validation::create_transaction(
        body,
        |name| state.registry.get(name).is_some(),
        state.destinations,
    )
    .await;
    let enabled = validated
        .as_ref()
        .map_or(Ok(()), |request| enabled_for(merchant, request));
    // A merchant from the key cache may predate the gateway's enabling: ask Postgres first.
    if enabled.is_err() && source == Source::KeyCache {
        return Ok(Attempt::Stale);
    }
    let request = match validated.and_then(|request| enabled.map(|()| request)) {
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
                    return respond(outcome, serde_json::Value::Null).map(Attempt::Answered);
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

    let trace = super::trace_from(headers);
    let announcement = paygate_core::announce::pending(&transaction, Some(trace));
    let idempotent = key.map(|key| IdempotentRequest {
        key,
        request_hash,
        response_status: StatusCode::ACCEPTED.as_u16(),
        response_body: response_body.clone(),
        retention,
    });

    let outcome = transactions::insert_checked(
        &state.pool,
        &transaction,
        idempotent.as_ref(),
        &announcement,
        Some(merchant.key_id),
    )
    .await
    .map_err(HttpError::internal)?;
    match outcome {
        InsertOutcome::Created => {
            tracing::info!(transaction = %transaction.id, kind = kind.as_str(), trace_id = %trace.trace_id(), "transaction accepted");
            metrics::counter!("paygate_transactions_accepted_total", "kind" => kind.as_str())
                .increment(1);
            // A withdrawal's hold and a deposit's pending amount changed the balance.
            state.cache.forget_balance(merchant.id).await;
        }
        InsertOutcome::Refused(refusal) => {
            metrics::counter!("paygate_transactions_refused_total", "kind" => kind.as_str())
                .increment(1);
            return refuse(state, merchant.id, refusal, idempotent)
                .await
                .map(Attempt::Answered);
        }
        InsertOutcome::KeyNotLive => return Ok(Attempt::Stale),
        _ => {}
    }
    respond(outcome, response_body).map(Attempt::Answered)
}

/// The merchant may name only its enabled gateways.
fn enabled_for(
    merchant: &Merchant,
    request: &validation::CreateTransaction,
) -> Result<(), HttpError> {
    match &request.gateway {
        Some(gateway) if !merchant.may_use(gateway) => Err(HttpError::invalid_param(
            "gateway_not_enabled",
            "gateway",
            format!("gateway {gateway:?} is not enabled for this merchant"),
        )),
        _ => Ok(()),
    }
}

/// The 4xx for a refusal by the ledger, stored under the Idempotency-Key first so that a
/// retry is answered the same way (unless the key turned out to be taken, whose answer wins).
async fn refuse(
    state: &AppState,
    merchant: paygate_core::domain::MerchantId,
    refusal: Refusal,
    idempotent: Option<IdempotentRequest>,
) -> Result<Response, HttpError> {
    let error = refusal_error(refusal);
    let Some(mut request) = idempotent else {
        return Err(error);
    };
    request.response_status = error.status.as_u16();
    request.response_body = serde_json::to_value(error.body()).map_err(HttpError::internal)?;
    match transactions::remember_refusal(&state.pool, merchant, &request)
        .await
        .map_err(HttpError::internal)?
    {
        None => Err(error),
        Some(stored) => respond(stored, serde_json::Value::Null),
    }
}

fn refusal_error(refusal: Refusal) -> HttpError {
    match refusal {
        Refusal::BalanceInsufficient => HttpError::invalid_param(
            "balance_insufficient",
            "amount",
            "the available balance in this currency is less than the amount",
        ),
        Refusal::AmountOverLimit { max } => HttpError::invalid_param(
            "amount_over_limit",
            "amount",
            format!("the amount is over this merchant's limit of {max} per transaction"),
        ),
        Refusal::DailyPayoutLimit { limit } => HttpError::invalid_param(
            "daily_payout_limit_exceeded",
            "amount",
            format!(
                "this withdrawal would take today's payouts (UTC) past the daily limit of {limit}"
            ),
        ),
    }
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
        InsertOutcome::Refused(refusal) => Err(refusal_error(refusal)),
        InsertOutcome::InFlight | InsertOutcome::KeyNotLive => Err(HttpError::new(
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
