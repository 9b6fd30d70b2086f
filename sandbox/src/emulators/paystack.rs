//! Paystack emulator, written from Paystack's public API reference
//! (<https://paystack.com/docs/api/>) and its documented sample bodies; it shares nothing
//! with the connector in `paygate_gateways` (its own JSON shapes, its own HMAC).
//!
//! Routes, under `/{account}/paystack/…` (a gateway's `base_url` is
//! `{sandbox}/{account}/paystack`; the `paystack` segment keeps these apart from the
//! invented JSON protocol, which already serves `/{account}/transfer` and the two
//! `…/verify/{reference}` paths):
//! - `POST transaction/initialize` `{email, amount, currency?, reference?, callback_url?}` →
//!   `{"status": true, "message": "Authorization URL created", "data": {"authorization_url",
//!   "access_code", "reference"}}`. Nothing executes until the customer visits the
//!   `authorization_url`, this emulator's `GET checkout/{access_code}` hosted page: a `GET`
//!   pays, `?action=cancel` cancels. A repeat of a known reference with the same details is
//!   answered with the same URL (the engine's idempotency; the `duplicate_reference_status`
//!   knob makes it Paystack's `duplicate_reference` refusal instead).
//! - `GET transaction/verify/{reference}`: `data.status` `abandoned` (waiting for the
//!   customer), `success`, `failed`; unknown (or lagging, `status_not_found_for_ms`) → `404`
//!   `"Transaction reference not found"`.
//! - `POST transferrecipient` `{type, name, account_number, bank_code, currency?}` → `201`
//!   with `data.recipient_code`; a known account number returns the existing recipient, as
//!   Paystack documents.
//! - `POST transfer` `{source: "balance", amount, recipient, reference?, reason?,
//!   currency?}` → `data.status` `pending|success|failed`; an unknown recipient is `400`
//!   `invalid_transfer_recipient`; a decline is `400` `insufficient_balance`.
//! - `GET transfer/verify/{reference}` (`404` `"Transfer not found"`).
//! - `POST refund` `{transaction, amount?, currency?}` → `data.status: "pending"`, then a
//!   `refund.processed` (or, with `callback_failure_rate`, `refund.failed`) webhook. Refunds
//!   above what is left of the payment are refused.
//!
//! Every call needs `Authorization: Bearer <secret key>` (else `401` `{"status": false,
//! "message": "Invalid key"}`). Amounts are positive integers in the currency's subunit (a
//! string of digits is accepted too, as Paystack's own curl samples send). References may
//! hold only letters, digits, `-`, `.` and `=` (transfers: lower-case letters, digits, `-`,
//! `_`). Webhooks are `{"event", "data"}` signed `x-paystack-signature: hex(HMAC-SHA512(secret
//! key, body))` — the secret key, as Paystack does — with no event id and no timestamp.
//! Paystack sends no webhook for a failed charge; the engine still delivers one for a
//! failed deposit, so it is sent as `charge.failed`, an event a correct connector ignores
//! (the outcome is learnt from verify). `execute_then_error_rate` also applies to
//! `transaction/initialize`: the checkout exists at Paystack, then a bare 5xx is answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use paygate_core::domain::{GatewayName, Money, TransactionKind};
use paygate_gateways::ReportedStatus;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha512;

use crate::delivery::{Facts, Outbound};
use crate::engine::{chance, Decision, Engine, Order, Protocol, Record, RecordState};

type Shared = State<Arc<Engine>>;

const CONTENT_TYPE: &str = "application/json";
const SIGNATURE_HEADER: &str = "x-paystack-signature";

/// The routes this provider serves, under `/{account}/paystack/…`.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route(
            "/{account}/paystack/transaction/initialize",
            post(initialize),
        )
        .route(
            "/{account}/paystack/transaction/verify/{reference}",
            get(verify_transaction),
        )
        .route("/{account}/paystack/checkout/{access_code}", get(checkout))
        .route("/{account}/paystack/transferrecipient", post(recipient))
        .route("/{account}/paystack/transfer", post(transfer))
        .route(
            "/{account}/paystack/transfer/verify/{reference}",
            get(verify_transfer),
        )
        .route("/{account}/paystack/refund", post(refund))
}

/// The provider's own id for a new payment: Paystack's ids are integers.
pub fn provider_reference(n: u64) -> String {
    n.to_string()
}

/// A payment's webhook (`malformed`: authentic, but its `data` is missing).
pub fn callback(engine: &Engine, facts: &Facts, malformed: bool) -> Outbound {
    let (event, status) = match (facts.kind, &facts.status) {
        (TransactionKind::Deposit, ReportedStatus::Succeeded) => ("charge.success", "success"),
        (TransactionKind::Deposit, ReportedStatus::Failed { .. }) => ("charge.failed", "failed"),
        (TransactionKind::Withdrawal, ReportedStatus::Succeeded) => ("transfer.success", "success"),
        (TransactionKind::Withdrawal, ReportedStatus::Failed { .. }) => {
            ("transfer.failed", "failed")
        }
    };
    let body = if malformed {
        json!({ "event": event })
    } else {
        let gateway_response = match &facts.status {
            ReportedStatus::Succeeded => "Successful".to_owned(),
            ReportedStatus::Failed { reason, .. } => reason.clone(),
        };
        let mut data = json!({
            "id": id_value(&facts.provider_reference),
            "domain": "test",
            "status": status,
            "reference": facts.reference,
            "amount": facts.money.amount.minor_units(),
            "currency": facts.money.currency.code(),
            "gateway_response": gateway_response,
            "created_at": timestamp(facts.sent_at),
        });
        if let Some(map) = data.as_object_mut() {
            match facts.kind {
                TransactionKind::Deposit => {
                    map.insert("channel".into(), json!("card"));
                    map.insert("paid_at".into(), json!(timestamp(facts.sent_at)));
                }
                TransactionKind::Withdrawal => {
                    map.insert("source".into(), json!("balance"));
                    map.insert(
                        "transfer_code".into(),
                        json!(format!("TRF_{}", facts.provider_reference)),
                    );
                }
            }
        }
        json!({ "event": event, "data": data })
    };
    signed(engine, serde_json::to_vec(&body).unwrap_or_default())
}

// ---------------------------------------------------------------- shared pieces

/// Per-account state beyond the engine: transfer recipients and refunds.
#[derive(Default)]
struct Book {
    /// (account, recipient code) → recipient.
    recipients: HashMap<(String, String), Recipient>,
    /// (account, type, bank code, account number) → recipient code.
    recipient_codes: HashMap<(String, String, String, String), String>,
    /// (account, reference) → subunits refunded so far.
    refunded: HashMap<(String, String), i64>,
}

#[derive(Debug, Clone)]
struct Recipient {
    account: String,
    id: u64,
    code: String,
    kind: String,
    name: String,
    account_number: String,
    bank_code: String,
    currency: String,
}

fn book() -> MutexGuard<'static, Book> {
    static BOOK: OnceLock<Mutex<Book>> = OnceLock::new();
    BOOK.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn signed(engine: &Engine, body: Vec<u8>) -> Outbound {
    let key = engine.settings.secret_key.expose().as_bytes();
    let signature = match Hmac::<Sha512>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(&body);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    Outbound {
        content_type: CONTENT_TYPE.into(),
        headers: vec![(SIGNATURE_HEADER.into(), signature)],
        body: Bytes::from(body),
    }
}

/// Paystack's ids are integers; a provider reference that is not one stays a string.
fn id_value(provider_reference: &str) -> Value {
    provider_reference
        .parse::<u64>()
        .map_or_else(|_| json!(provider_reference), |n| json!(n))
}

fn timestamp(at: chrono::DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

fn ok(status: StatusCode, message: &str, data: Value) -> Response {
    reply(
        status,
        &json!({"status": true, "message": message, "data": data}),
    )
}

/// Paystack's refusal shape: `{"status": false, "message", "meta", "type", "code"}`.
fn refuse(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    reply(
        status,
        &json!({
            "status": false,
            "message": message,
            "meta": {"nextStep": "Check the request and try again"},
            "type": kind,
            "code": code,
        }),
    )
}

fn invalid(message: &str, code: &str) -> Response {
    refuse(StatusCode::BAD_REQUEST, message, "validation_error", code)
}

/// What a request was refused with before reaching the engine.
struct Refused(Box<Response>);

impl From<Response> for Refused {
    fn from(response: Response) -> Self {
        Self(Box::new(response))
    }
}

/// The account, counting the request (payment requests only), and the bearer key.
fn authorize(
    engine: &Engine,
    raw: &str,
    headers: &HeaderMap,
    count_request: bool,
) -> Result<GatewayName, Refused> {
    let account = GatewayName::parse(raw).map_err(|_| {
        reply(
            StatusCode::NOT_FOUND,
            &json!({"status": false, "message": "Not found"}),
        )
    })?;
    if count_request {
        engine.count(account.as_str(), |c| &c.requests);
    }
    let expected = format!("Bearer {}", engine.settings.secret_key.expose());
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if presented != Some(expected.as_str()) {
        engine.count(account.as_str(), |c| &c.unauthorized);
        return Err(reply(
            StatusCode::UNAUTHORIZED,
            &json!({"status": false, "message": "Invalid key"}),
        )
        .into());
    }
    Ok(account)
}

/// A `400` that counts as a bad request.
fn bad(engine: &Engine, account: &GatewayName, message: &str, code: &str) -> Refused {
    engine.count(account.as_str(), |c| &c.bad_requests);
    Refused::from(invalid(message, code))
}

fn body_object(
    engine: &Engine,
    account: &GatewayName,
    body: &[u8],
) -> Result<serde_json::Map<String, Value>, Refused> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad(engine, account, "Invalid JSON body", "invalid_params")),
    }
}

fn text<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A positive integer amount in subunits (a JSON integer or a string of digits).
fn amount(value: Option<&Value>) -> Option<i64> {
    let n = match value? {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()?
        }
        _ => return None,
    };
    (n > 0).then_some(n)
}

fn transaction_reference_ok(reference: &str) -> bool {
    (1..=100).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'='))
}

fn transfer_reference_ok(reference: &str) -> bool {
    (16..=50).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

/// The answer to an engine decision that is not an acceptance (or a decline).
fn fault(decision: &Decision, duplicate_message: &str) -> Option<Response> {
    Some(match decision {
        Decision::Outage => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "503 Service Unavailable",
        )
            .into_response(),
        Decision::RateLimited => {
            let mut response = reply(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({"status": false, "message": "Too many requests. Please retry later"}),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
        Decision::ServerError => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"status": false, "message": "An error occurred"}),
        ),
        Decision::Hung => (StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout").into_response(),
        Decision::ExecutedThenError(status) => (
            *status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            status.as_u16().to_string(),
        )
            .into_response(),
        Decision::DuplicateRefused(status) => refuse(
            *status,
            duplicate_message,
            "validation_error",
            "duplicate_reference",
        ),
        Decision::Conflict => invalid(duplicate_message, "duplicate_reference"),
        Decision::Accepted(_) | Decision::Declined(_) => return None,
    })
}

/// Where the outcome of a record stands, in Paystack's words.
fn outcome(record: &Record) -> Option<&ReportedStatus> {
    match &record.state {
        RecordState::AwaitingAction => None,
        RecordState::Pending { outcome } | RecordState::Final(outcome) => Some(outcome),
    }
}

/// Whether a lagging status endpoint (`status_not_found_for_ms`) does not know it yet.
fn lagging(record: &Record, lag_ms: u64) -> bool {
    if lag_ms == 0 {
        return false;
    }
    let age = Utc::now().signed_duration_since(record.executed_at);
    age.num_milliseconds() < i64::try_from(lag_ms).unwrap_or(i64::MAX)
}

/// A status query: the record of `reference` of this `kind`, honouring the outage and lag
/// knobs; `Err` is the answer to send.
async fn lookup(
    engine: &Engine,
    account: &GatewayName,
    reference: &str,
    kind: TransactionKind,
    missing: &str,
) -> Result<Record, Response> {
    engine.count(account.as_str(), |c| &c.status_queries);
    let knobs = engine.knobs(account.as_str());
    engine.latency(&knobs).await;
    if knobs.outage {
        engine.count(account.as_str(), |c| &c.outage_rejections);
        return Err(fault(&Decision::Outage, "").unwrap_or_default());
    }
    match engine.record(account, reference) {
        Some(record)
            if record.order.kind == kind && !lagging(&record, knobs.status_not_found_for_ms) =>
        {
            Ok(record)
        }
        _ => Err(refuse(
            StatusCode::NOT_FOUND,
            missing,
            "validation_error",
            "not_found",
        )),
    }
}

fn mismatch(engine: &Engine, account: &GatewayName, amount: i64) -> i64 {
    if chance(engine.knobs(account.as_str()).mismatched_status_rate) {
        engine.count(account.as_str(), |c| &c.statuses_mismatched);
        return amount.checked_add(1).unwrap_or(amount);
    }
    amount
}

// ---------------------------------------------------------------- transactions

fn access_code(record: &Record) -> String {
    format!("ac{}", record.provider_reference)
}

/// The hosted page's absolute URL, on the host the request came to.
fn authorization_url(headers: &HeaderMap, account: &GatewayName, record: &Record) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'[' | b']'))
        })
        .unwrap_or("127.0.0.1");
    format!(
        "http://{host}/{account}/paystack/checkout/{}",
        access_code(record)
    )
}

async fn initialize(
    State(engine): Shared,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = (|| -> Result<Order, Refused> {
        let account = authorize(&engine, &raw, &headers, true)?;
        let map = body_object(&engine, &account, &body)?;
        let email = text(&map, "email")
            .filter(|e| e.contains('@') && e.len() <= 254)
            .ok_or_else(|| {
                bad(
                    &engine,
                    &account,
                    "Invalid Email Address Passed",
                    "invalid_email",
                )
            })?
            .to_owned();
        let minor = amount(map.get("amount"))
            .ok_or_else(|| bad(&engine, &account, "Invalid Amount Sent", "invalid_amount"))?;
        let currency = text(&map, "currency").unwrap_or("NGN");
        let money = Money::from_parts(minor, currency).map_err(|_| {
            bad(
                &engine,
                &account,
                "Currency not supported by merchant",
                "unsupported_currency",
            )
        })?;
        let reference = match text(&map, "reference") {
            Some(r) if transaction_reference_ok(r) => r.to_owned(),
            Some(_) => return Err(bad(
                &engine,
                &account,
                "Invalid transaction reference. Only -, ., = and alphanumeric characters allowed",
                "invalid_reference",
            )),
            None => format!("T{}", engine.next_id()),
        };
        Ok(Order {
            account,
            protocol: Protocol::Paystack,
            kind: TransactionKind::Deposit,
            reference,
            money,
            customer: email,
            needs_action: true,
            callback_url: None,
        })
    })();
    let order = match parsed {
        Ok(order) => order,
        Err(Refused(response)) => return *response,
    };
    let account = order.account.clone();
    let decision = engine.submit(order).await;
    if let Some(response) = fault(&decision, "Duplicate Transaction Reference") {
        return response;
    }
    let knobs = engine.knobs(account.as_str());
    match decision {
        // The engine answers `execute_then_error_rate` only for payments that executed; a
        // checkout's initialisation took effect at Paystack too (the reference is now
        // taken), so a load balancer's bare 5xx after it is played here.
        Decision::Accepted(_) if chance(knobs.execute_then_error_rate) => {
            engine.count(account.as_str(), |c| &c.executed_then_errored);
            let status = StatusCode::from_u16(knobs.execute_then_error_status)
                .unwrap_or(StatusCode::BAD_GATEWAY);
            fault(&Decision::ExecutedThenError(status), "").unwrap_or_default()
        }
        Decision::Accepted(record) => ok(
            StatusCode::OK,
            "Authorization URL created",
            json!({
                "authorization_url": authorization_url(&headers, &account, &record),
                "access_code": access_code(&record),
                "reference": record.order.reference,
            }),
        ),
        _ => refuse(
            StatusCode::BAD_REQUEST,
            "Transaction declined",
            "processor_error",
            "declined",
        ),
    }
}

#[derive(Debug, Deserialize)]
struct CheckoutQuery {
    #[serde(default)]
    action: Option<String>,
}

/// The hosted checkout page: a visit pays; `?action=cancel` abandons.
async fn checkout(
    State(engine): Shared,
    Path((raw, code)): Path<(String, String)>,
    Query(query): Query<CheckoutQuery>,
) -> Response {
    let page = |status: StatusCode, text: &str| {
        (
            status,
            Html(format!(
                "<!doctype html><title>Paystack Checkout</title><p>{text}</p>"
            )),
        )
            .into_response()
    };
    let Ok(account) = GatewayName::parse(&raw) else {
        return page(StatusCode::NOT_FOUND, "Invalid access code");
    };
    let record = code
        .strip_prefix("ac")
        .and_then(|id| engine.record_by_provider_reference(&account, id))
        .filter(|r| r.order.kind == TransactionKind::Deposit);
    let Some(record) = record else {
        return page(StatusCode::NOT_FOUND, "Invalid access code");
    };
    let approve = query.action.as_deref() != Some("cancel");
    match engine.finish_action(&account, &record.order.reference, approve) {
        Some(done) => match outcome(&done) {
            Some(ReportedStatus::Succeeded) => page(StatusCode::OK, "Payment successful"),
            _ if !approve => page(StatusCode::OK, "Payment cancelled"),
            _ => page(StatusCode::OK, "Payment failed"),
        },
        None => page(
            StatusCode::OK,
            "This transaction has already been processed",
        ),
    }
}

async fn verify_transaction(
    State(engine): Shared,
    Path((raw, reference)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let account = match authorize(&engine, &raw, &headers, false) {
        Ok(account) => account,
        Err(Refused(response)) => return *response,
    };
    let record = match lookup(
        &engine,
        &account,
        &reference,
        TransactionKind::Deposit,
        "Transaction reference not found",
    )
    .await
    {
        Ok(record) => record,
        Err(response) => return response,
    };
    let (status, gateway_response, paid_at) = match outcome(&record) {
        None => (
            "abandoned",
            "The transaction was not completed".to_owned(),
            Value::Null,
        ),
        Some(ReportedStatus::Succeeded) => (
            "success",
            "Successful".to_owned(),
            json!(timestamp(record.executed_at)),
        ),
        Some(ReportedStatus::Failed { reason, .. }) => ("failed", reason.clone(), Value::Null),
    };
    let amount = mismatch(&engine, &account, record.order.money.amount.minor_units());
    ok(
        StatusCode::OK,
        "Verification successful",
        json!({
            "id": id_value(&record.provider_reference),
            "domain": "test",
            "status": status,
            "reference": record.order.reference,
            "amount": amount,
            "message": null,
            "gateway_response": gateway_response,
            "paid_at": paid_at,
            "created_at": timestamp(record.executed_at),
            "channel": "card",
            "currency": record.order.money.currency.code(),
            "customer": {"email": record.order.customer},
            "requested_amount": record.order.money.amount.minor_units(),
        }),
    )
}

// ---------------------------------------------------------------- transfers

async fn recipient(
    State(engine): Shared,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let created = (|| -> Result<(bool, Recipient), Refused> {
        let account = authorize(&engine, &raw, &headers, false)?;
        if engine.knobs(account.as_str()).outage {
            engine.count(account.as_str(), |c| &c.outage_rejections);
            return Err(Refused::from(
                fault(&Decision::Outage, "").unwrap_or_default(),
            ));
        }
        let map = body_object(&engine, &account, &body)?;
        let kind = text(&map, "type")
            .filter(|t| ["nuban", "mobile_money", "ghipss", "basa", "authorization"].contains(t))
            .ok_or_else(|| {
                bad(
                    &engine,
                    &account,
                    "Invalid recipient type",
                    "invalid_params",
                )
            })?;
        let name = text(&map, "name")
            .ok_or_else(|| bad(&engine, &account, "Name is required", "invalid_params"))?;
        let account_number = text(&map, "account_number").ok_or_else(|| {
            bad(
                &engine,
                &account,
                "Account number is required",
                "invalid_params",
            )
        })?;
        let bank_code = text(&map, "bank_code")
            .ok_or_else(|| bad(&engine, &account, "Bank code is required", "invalid_params"))?;
        let currency = text(&map, "currency").unwrap_or("NGN");
        if paygate_core::domain::Currency::parse(currency).is_err() {
            return Err(bad(&engine, &account, "Invalid currency", "invalid_params"));
        }
        let key = (
            account.as_str().to_owned(),
            kind.to_owned(),
            bank_code.to_owned(),
            account_number.to_owned(),
        );
        let mut book = book();
        if let Some(existing) = book
            .recipient_codes
            .get(&key)
            .and_then(|code| book.recipients.get(&(key.0.clone(), code.clone())))
        {
            return Ok((false, existing.clone()));
        }
        let id = engine.next_id();
        let recipient = Recipient {
            account: account.as_str().to_owned(),
            id,
            code: format!("RCP_{id:x}"),
            kind: kind.to_owned(),
            name: name.to_owned(),
            account_number: account_number.to_owned(),
            bank_code: bank_code.to_owned(),
            currency: currency.to_owned(),
        };
        book.recipient_codes
            .insert(key.clone(), recipient.code.clone());
        book.recipients
            .insert((key.0, recipient.code.clone()), recipient.clone());
        Ok((true, recipient))
    })();
    match created {
        Ok((fresh, recipient)) => ok(
            if fresh {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            "Transfer recipient created successfully",
            recipient_json(&recipient),
        ),
        Err(Refused(response)) => *response,
    }
}

fn recipient_json(recipient: &Recipient) -> Value {
    json!({
        "active": true,
        "currency": recipient.currency,
        "domain": "test",
        "id": recipient.id,
        "name": recipient.name,
        "recipient_code": recipient.code,
        "type": recipient.kind,
        "is_deleted": false,
        "details": {
            "authorization_code": null,
            "account_number": recipient.account_number,
            "account_name": null,
            "bank_code": recipient.bank_code,
            "bank_name": "Test Bank",
        },
    })
}

fn transfer_json(record: &Record, recipient: Value, amount: i64) -> Value {
    let (status, gateway_response) = match &record.state {
        RecordState::Final(ReportedStatus::Succeeded) => ("success", Value::Null),
        RecordState::Final(ReportedStatus::Failed { reason, .. }) => ("failed", json!(reason)),
        RecordState::AwaitingAction | RecordState::Pending { .. } => ("pending", Value::Null),
    };
    json!({
        "amount": amount,
        "currency": record.order.money.currency.code(),
        "domain": "test",
        "failures": null,
        "id": id_value(&record.provider_reference),
        "reason": "Transfer",
        "reference": record.order.reference,
        "source": "balance",
        "source_details": null,
        "status": status,
        "titan_code": null,
        "transfer_code": format!("TRF_{}", record.provider_reference),
        "transferred_at": null,
        "recipient": recipient,
        "gateway_response": gateway_response,
        "createdAt": timestamp(record.executed_at),
        "updatedAt": timestamp(record.executed_at),
    })
}

async fn transfer(
    State(engine): Shared,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = (|| -> Result<(Order, Recipient), Refused> {
        let account = authorize(&engine, &raw, &headers, true)?;
        let map = body_object(&engine, &account, &body)?;
        if text(&map, "source") != Some("balance") {
            return Err(bad(
                &engine,
                &account,
                "Invalid transfer source",
                "invalid_params",
            ));
        }
        let minor = amount(map.get("amount"))
            .ok_or_else(|| bad(&engine, &account, "Invalid Amount Sent", "invalid_amount"))?;
        let recipient = text(&map, "recipient")
            .and_then(|code| {
                book()
                    .recipients
                    .get(&(account.as_str().to_owned(), code.to_owned()))
                    .cloned()
            })
            .ok_or_else(|| {
                bad(
                    &engine,
                    &account,
                    "Recipient specified is invalid",
                    "invalid_transfer_recipient",
                )
            })?;
        let currency = text(&map, "currency").unwrap_or(recipient.currency.as_str());
        let money = Money::from_parts(minor, currency).map_err(|_| {
            bad(
                &engine,
                &account,
                "Invalid currency",
                "unsupported_currency",
            )
        })?;
        let reference = match text(&map, "reference") {
            Some(r) if transfer_reference_ok(r) => r.to_owned(),
            Some(_) => {
                return Err(bad(
                    &engine,
                    &account,
                    "Invalid reference. Only lowercase letters, digits, - and _ allowed",
                    "invalid_reference",
                ))
            }
            None => format!("trf_{}", engine.next_id()),
        };
        let order = Order {
            account,
            protocol: Protocol::Paystack,
            kind: TransactionKind::Withdrawal,
            reference,
            money,
            customer: recipient.account_number.clone(),
            needs_action: false,
            callback_url: None,
        };
        Ok((order, recipient))
    })();
    let (order, recipient) = match parsed {
        Ok(parsed) => parsed,
        Err(Refused(response)) => return *response,
    };
    let decision = engine.submit(order).await;
    if let Some(response) = fault(&decision, "Duplicate Transfer Reference") {
        return response;
    }
    match decision {
        Decision::Accepted(record) => {
            let amount = record.order.money.amount.minor_units();
            ok(
                StatusCode::OK,
                "Transfer has been queued",
                transfer_json(&record, json!(recipient.id), amount),
            )
        }
        _ => refuse(
            StatusCode::BAD_REQUEST,
            "Your balance is not enough to fulfil this request",
            "api_error",
            "insufficient_balance",
        ),
    }
}

async fn verify_transfer(
    State(engine): Shared,
    Path((raw, reference)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let account = match authorize(&engine, &raw, &headers, false) {
        Ok(account) => account,
        Err(Refused(response)) => return *response,
    };
    let record = match lookup(
        &engine,
        &account,
        &reference,
        TransactionKind::Withdrawal,
        "Transfer not found",
    )
    .await
    {
        Ok(record) => record,
        Err(response) => return response,
    };
    let recipient = book()
        .recipients
        .values()
        .find(|r| r.account == account.as_str() && r.account_number == record.order.customer)
        .map_or(Value::Null, recipient_json);
    let amount = mismatch(&engine, &account, record.order.money.amount.minor_units());
    ok(
        StatusCode::OK,
        "Transfer retrieved",
        transfer_json(&record, recipient, amount),
    )
}

// ---------------------------------------------------------------- refunds

async fn refund(
    State(engine): Shared,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let accepted = (|| -> Result<(GatewayName, Record, i64, u64), Refused> {
        let account = authorize(&engine, &raw, &headers, false)?;
        if engine.knobs(account.as_str()).outage {
            engine.count(account.as_str(), |c| &c.outage_rejections);
            return Err(Refused::from(
                fault(&Decision::Outage, "").unwrap_or_default(),
            ));
        }
        let map = body_object(&engine, &account, &body)?;
        let reference = text(&map, "transaction").ok_or_else(|| {
            bad(
                &engine,
                &account,
                "Transaction is required",
                "invalid_params",
            )
        })?;
        let record = engine
            .record(&account, reference)
            .or_else(|| engine.record_by_provider_reference(&account, reference))
            .filter(|r| r.order.kind == TransactionKind::Deposit)
            .ok_or_else(|| {
                bad(
                    &engine,
                    &account,
                    "Transaction not found",
                    "transaction_not_found",
                )
            })?;
        if outcome(&record) != Some(&ReportedStatus::Succeeded) {
            return Err(bad(
                &engine,
                &account,
                "Transaction has not been completed",
                "transaction_not_successful",
            ));
        }
        if let Some(currency) = text(&map, "currency") {
            if currency != record.order.money.currency.code() {
                return Err(bad(
                    &engine,
                    &account,
                    "Currency mismatch",
                    "invalid_params",
                ));
            }
        }
        let total = record.order.money.amount.minor_units();
        let key = (account.as_str().to_owned(), record.order.reference.clone());
        let mut book = book();
        let done = book.refunded.get(&key).copied().unwrap_or(0);
        let left = total.saturating_sub(done);
        if left <= 0 {
            drop(book);
            return Err(bad(
                &engine,
                &account,
                "Transaction has been fully reversed",
                "transaction_reversed",
            ));
        }
        let wanted = match map.get("amount") {
            None | Some(Value::Null) => left,
            value => amount(value)
                .ok_or_else(|| bad(&engine, &account, "Invalid Amount Sent", "invalid_amount"))?,
        };
        if wanted > left {
            drop(book);
            return Err(bad(
                &engine,
                &account,
                "Refund amount cannot be more than the unrefunded transaction amount",
                "invalid_amount",
            ));
        }
        book.refunded.insert(key, done.saturating_add(wanted));
        drop(book);
        engine.count(account.as_str(), |c| &c.refunds);
        Ok((account, record, wanted, engine.next_id()))
    })();
    let (account, record, wanted, refund_id) = match accepted {
        Ok(accepted) => accepted,
        Err(Refused(response)) => return *response,
    };
    let currency = record.order.money.currency.code();
    schedule_refund_webhook(&engine, &account, &record, wanted, refund_id);
    ok(
        StatusCode::OK,
        "Refund has been queued for processing",
        json!({
            "transaction": {
                "id": id_value(&record.provider_reference),
                "domain": "test",
                "reference": record.order.reference,
                "amount": record.order.money.amount.minor_units(),
                "currency": currency,
            },
            "deducted_amount": 0,
            "merchant_note": format!("Refund for transaction {}", record.order.reference),
            "customer_note": format!("Refund for transaction {}", record.order.reference),
            "status": "pending",
            "currency": currency,
            "domain": "test",
            "amount": wanted,
            "fully_deducted": false,
            "id": refund_id,
            "createdAt": timestamp(Utc::now()),
        }),
    )
}

/// Sends `refund.processed` (or `refund.failed`, per `callback_failure_rate`) after the
/// callback delay, retrying like the engine's deliveries.
fn schedule_refund_webhook(
    engine: &Arc<Engine>,
    account: &GatewayName,
    record: &Record,
    amount: i64,
    refund_id: u64,
) {
    let knobs = engine.knobs(account.as_str());
    if !knobs.callbacks_enabled {
        return;
    }
    let (event, status) = if chance(knobs.callback_failure_rate) {
        ("refund.failed", "failed")
    } else {
        ("refund.processed", "processed")
    };
    let body = json!({
        "event": event,
        "data": {
            "id": refund_id,
            "status": status,
            "transaction_reference": record.order.reference,
            "refund_reference": format!("RRN{refund_id}"),
            "amount": amount,
            "currency": record.order.money.currency.code(),
            "processor": "sandbox",
            "domain": "test",
        },
    });
    let outbound = signed(engine, serde_json::to_vec(&body).unwrap_or_default());
    let base = knobs
        .callback_base_url
        .clone()
        .unwrap_or_else(|| engine.settings.callback_base_url.clone());
    let url = format!("{}/callbacks/{account}", base.trim_end_matches('/'));
    let account = account.as_str().to_owned();
    let delay = Duration::from_millis(knobs.callback_delay_ms);
    let attempts = knobs.callback_max_attempts.max(1);
    let backoff = Duration::from_millis(knobs.callback_backoff_ms);
    let engine = Arc::clone(engine);
    let tasks = engine.tasks.clone();
    tasks.spawn(async move {
        let shutdown = engine.shutdown.clone();
        let send = async {
            tokio::time::sleep(delay).await;
            for attempt in 1..=attempts {
                let mut request = engine
                    .http
                    .post(&url)
                    .header(header::CONTENT_TYPE.as_str(), &outbound.content_type);
                for (name, value) in &outbound.headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                let sent = request.body(outbound.body.clone()).send().await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    engine.count(&account, |c| &c.callbacks_sent);
                    return;
                }
                if attempt < attempts {
                    engine.count(&account, |c| &c.callback_retries);
                    tokio::time::sleep(backoff).await;
                }
            }
            engine.count(&account, |c| &c.callbacks_failed);
        };
        tokio::select! {
            () = send => {}
            () = shutdown.cancelled() => {}
        }
    });
}
