//! M-Pesa Daraja emulator, written from <https://developer.safaricom.co.ke/APIs>
//! (Authorization, M-Pesa Express, M-Pesa Express Query, B2C v3). It imports nothing from
//! the connector: its own request shapes, its own checks.
//!
//! Routes under `/{account}/`:
//! - `GET oauth/v1/generate?grant_type=client_credentials`, HTTP Basic `key:secret`: any
//!   consumer key, the consumer secret must be the sandbox's `secret_key`. Answers
//!   `{"access_token","expires_in":"3599"}` (a string, as Daraja does). Wrong credentials:
//!   `400 {"requestId","errorCode":"400.008.01","errorMessage":"Invalid Authentication passed"}`.
//!   Not subject to the fault knobs (the knobs model the payment API).
//! - `POST mpesa/stkpush/v1/processrequest`, `POST mpesa/stkpushquery/v1/query`,
//!   `POST mpesa/b2c/v3/paymentrequest`: bearer token checked on every call (unknown or
//!   expired: `401 {"requestId","errorCode":"404.001.03","errorMessage":"Invalid Access
//!   Token"}`), required fields checked (`400 {"errorCode":"400.002.02","errorMessage":"Bad
//!   Request - Invalid {Field}"}`), amounts in whole shillings.
//! - The STK `Password` must be base64(BusinessShortCode + passkey + Timestamp) where the
//!   **passkey is the sandbox's `webhook_secret`** (configure the connector's `passkey` so).
//! - Admin hook (emulator only): `PUT /{account}/_mpesa/oauth?expires_in=N` sets the
//!   lifetime of tokens issued from then on (default 3599 s), `GET /{account}/_mpesa/oauth`
//!   answers `{"issued": n, "expires_in": N}`; `DELETE` revokes every token of the account.
//!
//! Behaviour:
//! - STK push has no idempotency at M-Pesa: every push is a new payment (a fresh engine
//!   reference), so a resubmission executes again, exactly the danger the connector's
//!   `idempotent_submit() == false` guards against. B2C requests are keyed by
//!   `OriginatorConversationID` (a repeat is answered from the record).
//! - A declined STK push (`decline_rate`) is, as at M-Pesa, accepted synchronously and
//!   reported by a callback with `ResultCode` 1032 ("Request cancelled by user"); a
//!   declined B2C request likewise gets a result with `ResultCode` 2001. There is no hosted
//!   page: the customer's step is on the phone, modelled by the callback delay.
//! - Callbacks are unsigned and POSTed to the `CallBackURL` (STK) or `ResultURL` (B2C) the
//!   request named; the `QueueTimeOutURL` is checked but never called.
//! - STK query: `500 {"errorCode":"500.001.1001","errorMessage":"The transaction is being
//!   processed"}` until the callback is sent (and during `status_not_found_for_ms`), then
//!   the result; an unknown `CheckoutRequestID` is `400 … Invalid CheckoutRequestID`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use chrono::Utc;
use paygate_core::domain::{GatewayName, Money, TransactionKind};
use paygate_gateways::ReportedStatus;
use serde_json::{json, Value};

use crate::delivery::{self, Delivery, Facts, Outbound};
use crate::engine::{Decision, Engine, Order, Protocol, Record, RecordState};

type Shared = State<Arc<Engine>>;

const DEFAULT_EXPIRES_IN: u64 = 3599;

/// Per-account state the engine does not keep: tokens, token lifetime, the customer of each
/// push (for the callback's `PhoneNumber`), declines already announced.
#[derive(Default)]
struct Accounts {
    tokens: HashMap<String, (String, Instant)>,
    issued: HashMap<String, u64>,
    expires_in: HashMap<String, u64>,
    phones: HashMap<String, String>,
    announced: HashSet<String>,
}

fn state() -> MutexGuard<'static, Accounts> {
    static STATE: OnceLock<Mutex<Accounts>> = OnceLock::new();
    STATE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The routes this provider serves, under `/{account}/…`.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/{account}/oauth/v1/generate", get(oauth))
        .route("/{account}/mpesa/stkpush/v1/processrequest", post(stk_push))
        .route("/{account}/mpesa/stkpushquery/v1/query", post(stk_query))
        .route("/{account}/mpesa/b2c/v3/paymentrequest", post(b2c))
        .route(
            "/{account}/_mpesa/oauth",
            get(oauth_report).put(oauth_lifetime).delete(oauth_revoke),
        )
}

/// The provider's own id for a new payment: an STK `CheckoutRequestID`. (A B2C payment's
/// `ConversationID` is derived from it, see [`conversation_id`].)
pub fn provider_reference(n: u64) -> String {
    format!("ws_CO_{n}")
}

fn digits(provider_reference: &str) -> &str {
    provider_reference.trim_start_matches("ws_CO_")
}

fn conversation_id(provider_reference: &str) -> String {
    format!("AG_{}", digits(provider_reference))
}

fn merchant_request_id(provider_reference: &str) -> String {
    format!(
        "{}-{}-1",
        digits(provider_reference).len(),
        digits(provider_reference)
    )
}

fn eat_now(format: &str) -> String {
    let now = Utc::now();
    match chrono::FixedOffset::east_opt(3 * 3600) {
        Some(eat) => now.with_timezone(&eat).format(format).to_string(),
        None => now.format(format).to_string(),
    }
}

/// A decimal shillings literal for cents (`105001` → `1050.01`).
fn shillings(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    reply(
        status,
        json!({
            "requestId": format!("{}-{}", std::process::id(), Utc::now().timestamp_micros()),
            "errorCode": code,
            "errorMessage": message,
        }),
    )
}

fn bad_request(field: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "400.002.02",
        &format!("Bad Request - Invalid {field}"),
    )
}

fn invalid_token() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "404.001.03",
        "Invalid Access Token",
    )
}

/// A load balancer's bare status line.
fn bare_status(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        ),
    )
        .into_response()
}

// ------------------------------------------------------------------ OAuth

fn basic_secret(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_key, secret) = text.split_once(':')?;
    Some(secret.to_owned())
}

async fn oauth(
    State(engine): Shared,
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Ok(account) = GatewayName::parse(&account) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if query.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return error(
            StatusCode::BAD_REQUEST,
            "400.008.02",
            "Invalid grant type passed",
        );
    }
    if basic_secret(&headers).as_deref() != Some(engine.settings.secret_key.expose()) {
        engine.count(account.as_str(), |c| &c.unauthorized);
        return error(
            StatusCode::BAD_REQUEST,
            "400.008.01",
            "Invalid Authentication passed",
        );
    }
    let token = format!("mpt{}", engine.next_id());
    let mut state = state();
    let expires_in = state
        .expires_in
        .get(account.as_str())
        .copied()
        .unwrap_or(DEFAULT_EXPIRES_IN);
    let until = Instant::now() + Duration::from_secs(expires_in);
    state
        .tokens
        .insert(token.clone(), (account.as_str().to_owned(), until));
    *state.issued.entry(account.as_str().to_owned()).or_default() += 1;
    reply(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": expires_in.to_string()}),
    )
}

fn bearer_ok(account: &GatewayName, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let mut state = state();
    let now = Instant::now();
    state.tokens.retain(|_, (_, until)| *until > now);
    state
        .tokens
        .get(token)
        .is_some_and(|(owner, _)| owner == account.as_str())
}

async fn oauth_report(Path(account): Path<String>) -> Response {
    let state = state();
    reply(
        StatusCode::OK,
        json!({
            "issued": state.issued.get(&account).copied().unwrap_or(0),
            "expires_in": state.expires_in.get(&account).copied().unwrap_or(DEFAULT_EXPIRES_IN),
        }),
    )
}

async fn oauth_lifetime(
    Path(account): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match query.get("expires_in").and_then(|s| s.parse::<u64>().ok()) {
        Some(seconds) if seconds > 0 => {
            state().expires_in.insert(account, seconds);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => bad_request("expires_in"),
    }
}

async fn oauth_revoke(Path(account): Path<String>) -> Response {
    state().tokens.retain(|_, (owner, _)| *owner != account);
    StatusCode::NO_CONTENT.into_response()
}

// ------------------------------------------------------------------ requests

/// Why a request was refused before reaching the engine.
enum Refusal {
    NotFound,
    Unauthorized,
    Invalid(String),
}

impl Refusal {
    fn respond(self, engine: &Engine, account: Option<&GatewayName>) -> Response {
        match (&self, account) {
            (Self::Unauthorized, Some(a)) => engine.count(a.as_str(), |c| &c.unauthorized),
            (Self::Invalid(_), Some(a)) => engine.count(a.as_str(), |c| &c.bad_requests),
            _ => {}
        }
        match self {
            Self::NotFound => StatusCode::NOT_FOUND.into_response(),
            Self::Unauthorized => invalid_token(),
            Self::Invalid(field) => bad_request(&field),
        }
    }
}

fn field<'a>(body: &'a Value, name: &str) -> Result<&'a str, Refusal> {
    match body.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        _ => Err(Refusal::Invalid(name.into())),
    }
}

/// A field Daraja documents as numeric, sent as a number or a string of digits.
fn numeric(body: &Value, name: &str) -> Result<String, Refusal> {
    let text = match body.get(name) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.trim().to_owned(),
        _ => return Err(Refusal::Invalid(name.into())),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Invalid(name.into()));
    }
    Ok(text)
}

/// Whole shillings, positive, as KES money.
fn amount(body: &Value) -> Result<Money, Refusal> {
    let invalid = || Refusal::Invalid("Amount".into());
    let shillings: i64 = numeric(body, "Amount")?.parse().map_err(|_| invalid())?;
    let cents = shillings.checked_mul(100).ok_or_else(invalid)?;
    Money::from_parts(cents, "KES").map_err(|_| invalid())
}

fn phone(body: &Value, name: &str) -> Result<String, Refusal> {
    let number = numeric(body, name)?;
    let ok = number.len() == 12 && (number.starts_with("2547") || number.starts_with("2541"));
    ok.then_some(number)
        .ok_or_else(|| Refusal::Invalid(name.into()))
}

fn url(body: &Value, name: &str) -> Result<String, Refusal> {
    let text = field(body, name)?;
    match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(text.to_owned())
        }
        _ => Err(Refusal::Invalid(name.into())),
    }
}

/// `Password` = base64(BusinessShortCode + passkey + Timestamp), passkey = webhook secret.
fn password_ok(engine: &Engine, body: &Value) -> Result<(), Refusal> {
    use base64::Engine as _;
    let shortcode = numeric(body, "BusinessShortCode")?;
    let timestamp = numeric(body, "Timestamp")?;
    if timestamp.len() != 14 {
        return Err(Refusal::Invalid("Timestamp".into()));
    }
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{shortcode}{}{timestamp}",
        engine.settings.webhook_secret.expose()
    ));
    if field(body, "Password")? != expected {
        return Err(Refusal::Invalid("Password".into()));
    }
    Ok(())
}

/// The account, counted as a request, and the bearer token checked.
fn authorized(
    engine: &Engine,
    raw: &str,
    headers: &HeaderMap,
    count: bool,
) -> Result<GatewayName, (Refusal, Option<GatewayName>)> {
    let account = GatewayName::parse(raw).map_err(|_| (Refusal::NotFound, None))?;
    if count {
        engine.count(account.as_str(), |c| &c.requests);
    }
    if !bearer_ok(&account, headers) {
        return Err((Refusal::Unauthorized, Some(account)));
    }
    Ok(account)
}

fn json_body(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| Refusal::Invalid("Request".into()))
}

/// The faults every call answers alike.
fn fault(decision: &Decision) -> Option<Response> {
    Some(match decision {
        Decision::Outage => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "503.001.01",
            "Service Unavailable",
        ),
        Decision::RateLimited => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "429.001.01",
                "Too Many Requests",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Decision::ServerError => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500.003.02",
            "System is busy. Please try again in few minutes.",
        ),
        Decision::Hung => bare_status(StatusCode::GATEWAY_TIMEOUT),
        Decision::ExecutedThenError(status) => bare_status(*status),
        Decision::DuplicateRefused(status) => {
            error(*status, "409.001.01", "Duplicate OriginatorConversationID")
        }
        Decision::Conflict => error(
            StatusCode::CONFLICT,
            "409.001.01",
            "Duplicate OriginatorConversationID",
        ),
        Decision::Declined(_) | Decision::Accepted(_) => return None,
    })
}

/// A declined request is answered as accepted and announced by a failure callback, once.
fn announce_decline(engine: &Arc<Engine>, record: &Record) {
    let fresh = state().announced.insert(record.provider_reference.clone());
    let knobs = engine.knobs(record.order.account.as_str());
    if fresh && knobs.callbacks_enabled {
        delivery::schedule(
            engine,
            Delivery::plan(record, &knobs, engine.next_id(), Utc::now()),
        );
    }
}

async fn stk_push(
    State(engine): Shared,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = match authorized(&engine, &raw, &headers, true) {
        Ok(a) => a,
        Err((refusal, account)) => return refusal.respond(&engine, account.as_ref()),
    };
    let parsed = (|| {
        let body = json_body(&body)?;
        password_ok(&engine, &body)?;
        match field(&body, "TransactionType")? {
            "CustomerPayBillOnline" | "CustomerBuyGoodsOnline" => {}
            _ => return Err(Refusal::Invalid("TransactionType".into())),
        }
        let money = amount(&body)?;
        let party_a = phone(&body, "PartyA")?;
        let phone_number = phone(&body, "PhoneNumber")?;
        numeric(&body, "PartyB")?;
        let callback_url = url(&body, "CallBackURL")?;
        let label = field(&body, "AccountReference")?;
        if label.chars().count() > 12 {
            return Err(Refusal::Invalid("AccountReference".into()));
        }
        field(&body, "TransactionDesc")?;
        Ok(Order {
            account: account.clone(),
            protocol: Protocol::Mpesa,
            kind: TransactionKind::Deposit,
            // No idempotency at M-Pesa: every push is a new payment.
            reference: format!("stk_{}", engine.next_id()),
            money,
            customer: if party_a == phone_number {
                party_a
            } else {
                phone_number
            },
            needs_action: false,
            callback_url: Some(callback_url),
        })
    })();
    let order = match parsed {
        Ok(order) => order,
        Err(refusal) => return refusal.respond(&engine, Some(&account)),
    };
    let phone_number = order.customer.clone();
    let decision = engine.submit(order).await;
    if let Some(response) = fault(&decision) {
        return response;
    }
    let record = match decision {
        Decision::Declined(record) => {
            announce_decline(&engine, &record);
            record
        }
        Decision::Accepted(record) => record,
        _ => return bare_status(StatusCode::INTERNAL_SERVER_ERROR),
    };
    state()
        .phones
        .insert(record.provider_reference.clone(), phone_number);
    reply(
        StatusCode::OK,
        json!({
            "MerchantRequestID": merchant_request_id(&record.provider_reference),
            "CheckoutRequestID": record.provider_reference,
            "ResponseCode": "0",
            "ResponseDescription": "Success. Request accepted for processing",
            "CustomerMessage": "Success. Request accepted for processing",
        }),
    )
}

/// `(ResultCode, ResultDesc)` of an outcome, STK or B2C.
fn result_code(kind: TransactionKind, status: &ReportedStatus) -> (i64, &'static str) {
    match (kind, status) {
        (TransactionKind::Deposit, ReportedStatus::Succeeded) => {
            (0, "The service request is processed successfully.")
        }
        (TransactionKind::Withdrawal, ReportedStatus::Succeeded) => {
            (0, "The service request is processed successfully.")
        }
        (TransactionKind::Deposit, ReportedStatus::Failed { code, .. })
            if code == "declined" || code == "cancelled" =>
        {
            (1032, "Request cancelled by user")
        }
        (TransactionKind::Withdrawal, ReportedStatus::Failed { code, .. })
            if code == "declined" =>
        {
            (2001, "The initiator information is invalid.")
        }
        (_, ReportedStatus::Failed { .. }) => {
            (1, "The balance is insufficient for the transaction.")
        }
    }
}

async fn stk_query(
    State(engine): Shared,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = match authorized(&engine, &raw, &headers, false) {
        Ok(a) => a,
        Err((refusal, account)) => return refusal.respond(&engine, account.as_ref()),
    };
    let checkout = match (|| {
        let body = json_body(&body)?;
        password_ok(&engine, &body)?;
        Ok::<_, Refusal>(field(&body, "CheckoutRequestID")?.to_owned())
    })() {
        Ok(c) => c,
        Err(refusal) => return refusal.respond(&engine, Some(&account)),
    };
    engine.count(account.as_str(), |c| &c.status_queries);
    let knobs = engine.knobs(account.as_str());
    engine.latency(&knobs).await;
    if knobs.outage {
        engine.count(account.as_str(), |c| &c.outage_rejections);
        return fault(&Decision::Outage)
            .unwrap_or_else(|| bare_status(StatusCode::SERVICE_UNAVAILABLE));
    }
    let Some(record) = engine
        .record_by_provider_reference(&account, &checkout)
        .filter(|r| r.order.kind == TransactionKind::Deposit)
    else {
        return bad_request("CheckoutRequestID");
    };
    let age_ms = Utc::now()
        .signed_duration_since(record.executed_at)
        .num_milliseconds();
    let lagging = knobs.status_not_found_for_ms > 0
        && age_ms < i64::try_from(knobs.status_not_found_for_ms).unwrap_or(i64::MAX);
    let outcome = match &record.state {
        RecordState::Final(outcome) if !lagging => outcome,
        _ => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500.001.1001",
                "The transaction is being processed",
            )
        }
    };
    let (code, desc) = result_code(TransactionKind::Deposit, outcome);
    reply(
        StatusCode::OK,
        json!({
            "ResponseCode": "0",
            "ResponseDescription": "The service request has been accepted successsfully",
            "MerchantRequestID": merchant_request_id(&record.provider_reference),
            "CheckoutRequestID": record.provider_reference,
            "ResultCode": code.to_string(),
            "ResultDesc": desc,
        }),
    )
}

async fn b2c(
    State(engine): Shared,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = match authorized(&engine, &raw, &headers, true) {
        Ok(a) => a,
        Err((refusal, account)) => return refusal.respond(&engine, account.as_ref()),
    };
    let parsed = (|| {
        let body = json_body(&body)?;
        let reference = field(&body, "OriginatorConversationID")?.to_owned();
        field(&body, "InitiatorName")?;
        field(&body, "SecurityCredential")?;
        match field(&body, "CommandID")? {
            "SalaryPayment" | "BusinessPayment" | "PromotionPayment" => {}
            _ => return Err(Refusal::Invalid("CommandID".into())),
        }
        let money = amount(&body)?;
        numeric(&body, "PartyA")?;
        let party_b = phone(&body, "PartyB")?;
        field(&body, "Remarks")?;
        url(&body, "QueueTimeOutURL")?;
        let result_url = url(&body, "ResultURL")?;
        Ok(Order {
            account: account.clone(),
            protocol: Protocol::Mpesa,
            kind: TransactionKind::Withdrawal,
            reference,
            money,
            customer: party_b,
            needs_action: false,
            callback_url: Some(result_url),
        })
    })();
    let order = match parsed {
        Ok(order) => order,
        Err(refusal) => return refusal.respond(&engine, Some(&account)),
    };
    let decision = engine.submit(order).await;
    if let Some(response) = fault(&decision) {
        return response;
    }
    let record = match decision {
        Decision::Declined(record) => {
            announce_decline(&engine, &record);
            record
        }
        Decision::Accepted(record) => record,
        _ => return bare_status(StatusCode::INTERNAL_SERVER_ERROR),
    };
    reply(
        StatusCode::OK,
        json!({
            "ConversationID": conversation_id(&record.provider_reference),
            "OriginatorConversationID": record.order.reference,
            "ResponseCode": "0",
            "ResponseDescription": "Accept the service request successfully.",
        }),
    )
}

// ------------------------------------------------------------------ callbacks

/// A payment's callback in this provider's format (`malformed`: authentic but unreadable).
/// Unsigned, as Daraja's are. Amounts are decimal shillings literals (`1050.00`), written
/// into the JSON text directly (no float on the way).
pub fn callback(_engine: &Engine, facts: &Facts, malformed: bool) -> Outbound {
    const AMOUNT: &str = "__AMOUNT__";
    let cents = facts.money.amount.minor_units();
    let (code, desc) = result_code(facts.kind, &facts.status);
    let succeeded = facts.status == ReportedStatus::Succeeded;
    let receipt = format!("NLJ{}", digits(&facts.provider_reference));
    let body = match (facts.kind, malformed) {
        (TransactionKind::Deposit, true) => json!({"Body": {"stkCallback": {
            "CheckoutRequestID": facts.provider_reference,
            "ResultCode": "paid",
        }}}),
        (TransactionKind::Withdrawal, true) => json!({"Result": {
            "OriginatorConversationID": facts.reference,
            "ResultCode": {"unexpected": true},
        }}),
        (TransactionKind::Deposit, false) => {
            let mut stk = json!({
                "MerchantRequestID": merchant_request_id(&facts.provider_reference),
                "CheckoutRequestID": facts.provider_reference,
                "ResultCode": code,
                "ResultDesc": desc,
            });
            if succeeded {
                let mut items = vec![
                    json!({"Name": "Amount", "Value": AMOUNT}),
                    json!({"Name": "MpesaReceiptNumber", "Value": receipt}),
                    json!({"Name": "Balance"}),
                    json!({"Name": "TransactionDate", "Value": eat_now("%Y%m%d%H%M%S").parse::<u64>().unwrap_or(0)}),
                ];
                let phone = state().phones.get(&facts.provider_reference).cloned();
                if let Some(number) = phone.and_then(|p| p.parse::<u64>().ok()) {
                    items.push(json!({"Name": "PhoneNumber", "Value": number}));
                }
                stk["CallbackMetadata"] = json!({"Item": items});
            }
            json!({"Body": {"stkCallback": stk}})
        }
        (TransactionKind::Withdrawal, false) => {
            let mut result = json!({
                "ResultType": 0,
                "ResultCode": code,
                "ResultDesc": desc,
                "OriginatorConversationID": facts.reference,
                "ConversationID": conversation_id(&facts.provider_reference),
                "TransactionID": receipt,
                "ReferenceData": {"ReferenceItem": {
                    "Key": "QueueTimeoutURL",
                    "Value": "https://internalsandbox.safaricom.co.ke/mpesa/b2cresults/v1/submit",
                }},
            });
            if succeeded {
                result["ResultParameters"] = json!({"ResultParameter": [
                    {"Key": "TransactionAmount", "Value": AMOUNT},
                    {"Key": "TransactionReceipt", "Value": receipt},
                    {"Key": "B2CRecipientIsRegisteredCustomer", "Value": "Y"},
                    {"Key": "ReceiverPartyPublicName", "Value": "254708374149 - John Doe"},
                    {"Key": "TransactionCompletedDateTime", "Value": eat_now("%d.%m.%Y %H:%M:%S")},
                ]});
            }
            json!({"Result": result})
        }
    };
    let text = body
        .to_string()
        .replace(&format!("\"{AMOUNT}\""), &shillings(cents));
    Outbound {
        content_type: "application/json".into(),
        headers: Vec::new(),
        body: Bytes::from(text),
    }
}
