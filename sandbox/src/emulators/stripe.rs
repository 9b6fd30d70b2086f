//! Stripe emulator, written from Stripe's public API reference (<https://docs.stripe.com/api>)
//! alone: its own wire model (JSON built here), its own form parsing and its own
//! `Stripe-Signature` signing. Nothing of the `stripe` connector is used.
//!
//! Routes, under `/{account}` (the paygate gateway name):
//! - `POST /v1/payment_intents` (form): `amount` (smallest currency unit, Stripe's
//!   zero-decimal and ISK/UGX rules), `currency` (lower case, as documented; upper case is
//!   refused here so a connector that sends it is caught), `confirm=true` (the only mode
//!   emulated), `payment_method`, `return_url`, `metadata[…]`. A 3-D Secure test card
//!   (`pm_card_threeDSecure2Required`, `pm_card_authenticationRequired`, …) waits in
//!   `requires_action`: with a `return_url` the `next_action` is `redirect_to_url` to this
//!   emulator's own page `GET /{account}/redirect/authenticate/{pi}` (a GET completes it,
//!   `?action=cancel` fails it), without one it is `use_stripe_sdk`. An executed payment
//!   answers `processing` until its webhook is sent (the engine's outcome is announced by
//!   callback), then `succeeded` or `requires_payment_method` with `last_payment_error`.
//! - `GET /v1/payment_intents/{id}`, `GET /v1/payment_intents/search?query=metadata['k']:'v'`
//!   (search lags by the `status_not_found_for_ms` knob, as Stripe's search does).
//! - `POST /v1/transfers` (`amount`, `currency`, `destination`, `transfer_group`,
//!   `metadata[…]`): answered `200` with the Transfer; `GET /v1/transfers/{id}`,
//!   `GET /v1/transfers?transfer_group=…`. A failed outcome is announced as a full reversal
//!   (`transfer.reversed`, `reversed: true`).
//! - `POST /v1/refunds` (`payment_intent`, `amount` optional = what is left, `metadata[…]`)
//!   on a succeeded PaymentIntent; over-refunds are refused (`amount_too_large`,
//!   `charge_already_refunded`); `GET /v1/refunds/{id}`. Refunds succeed at once.
//!
//! Every API call needs `Authorization: Bearer <secret_key>` (`401` with Stripe's error
//! JSON otherwise). Every `POST` honours `Idempotency-Key`: a repeat is answered from the
//! first one's record, and a repeat with other parameters or on another endpoint is refused
//! with `400 idempotency_error`. The engine's knobs apply (outage `503`, rate limit `429`
//! with `Retry-After`, errors `500`, hangs, lost responses, declines as `402 card_error`,
//! `duplicate_reference_status` as `idempotency_error`). Webhooks are Stripe events signed
//! `Stripe-Signature: t=…,v1=hex(HMAC-SHA256(secret, "{t}.{body}"))`.
//!
//! Per-object state the engine does not keep (metadata, payment method, return URL,
//! idempotency fingerprints, refunds) lives in this module's store, keyed by engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use paygate_core::domain::{GatewayName, Money, TransactionKind};
use paygate_gateways::ReportedStatus;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::delivery::{Facts, Outbound};
use crate::engine::{chance, Decision, Engine, Order, Protocol, Record, RecordState};

type Shared = State<Arc<Engine>>;

/// The routes this provider serves, under `/{account}/…`.
pub fn routes() -> Router<Arc<Engine>> {
    Router::new()
        .route("/{account}/v1/payment_intents", post(create_intent))
        .route("/{account}/v1/payment_intents/search", get(search_intents))
        .route("/{account}/v1/payment_intents/{id}", get(get_intent))
        .route(
            "/{account}/v1/transfers",
            post(create_transfer).get(list_transfers),
        )
        .route("/{account}/v1/transfers/{id}", get(get_transfer))
        .route("/{account}/v1/refunds", post(create_refund))
        .route("/{account}/v1/refunds/{id}", get(get_refund))
        .route("/{account}/redirect/authenticate/{id}", get(authenticate))
}

/// The provider's own id for a new payment: the body of a Stripe id (`pi_…` / `tr_…` is
/// put in front by kind), alphanumeric like Stripe's.
pub fn provider_reference(n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut body = Vec::new();
    let mut rest = n;
    loop {
        body.push(DIGITS[(rest % 62) as usize]);
        rest /= 62;
        if rest == 0 {
            break;
        }
    }
    body.reverse();
    format!("3Pg{}", String::from_utf8_lossy(&body))
}

// ---------------------------------------------------------------- per-object store

#[derive(Debug, Clone)]
struct Meta {
    metadata: BTreeMap<String, String>,
    return_url: Option<String>,
    payment_method: Option<String>,
    transfer_group: Option<String>,
    kind: TransactionKind,
}

#[derive(Debug, Clone)]
struct StoredRefund {
    id: String,
    account: String,
    payment_intent: String,
    amount: i64,
    currency: String,
    metadata: BTreeMap<String, String>,
    created: i64,
}

/// (engine, account, reference or idempotency key).
type AccountKey = (usize, String, String);
/// An idempotency key's first use: the endpoint and its sorted parameters.
type Fingerprint = (String, Vec<(String, String)>);
/// An early refusal of a request (boxed: a response is large).
type Refused = Box<Response>;

#[derive(Default)]
struct Store {
    /// (engine, account, reference) → what the creating request said.
    meta: HashMap<AccountKey, Meta>,
    /// (engine, account, idempotency key) → (endpoint, sorted parameters).
    keys: HashMap<AccountKey, Fingerprint>,
    /// (engine, refund id) → refund.
    refunds: HashMap<(usize, String), StoredRefund>,
    /// (engine, account, idempotency key) → refund id.
    refund_keys: HashMap<AccountKey, String>,
}

fn store() -> MutexGuard<'static, Store> {
    static STORE: OnceLock<Mutex<Store>> = OnceLock::new();
    STORE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn engine_id(engine: &Engine) -> usize {
    std::ptr::from_ref(engine) as usize
}

fn meta_of(engine: &Engine, account: &str, reference: &str) -> Option<Meta> {
    store()
        .meta
        .get(&(engine_id(engine), account.to_owned(), reference.to_owned()))
        .cloned()
}

// ---------------------------------------------------------------- errors and replies

fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec_pretty(body).unwrap_or_default(),
    )
        .into_response()
}

/// Stripe's error envelope (<https://docs.stripe.com/api/errors>).
fn error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Response {
    let mut error = json!({"type": kind, "message": message});
    if let Some(code) = code {
        error["code"] = json!(code);
        error["doc_url"] = json!(format!(
            "https://stripe.com/docs/error-codes/{}",
            code.replace('_', "-")
        ));
    }
    if let Some(param) = param {
        error["param"] = json!(param);
    }
    reply(status, &json!({"error": error}))
}

fn invalid(code: &str, message: &str, param: Option<&str>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some(code),
        message,
        param,
    )
}

fn missing(param: &str) -> Response {
    invalid(
        "parameter_missing",
        &format!("Missing required param: {param}."),
        Some(param),
    )
}

fn bare_status(status: StatusCode) -> Response {
    let line = match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        line,
    )
        .into_response()
}

fn fault(decision: &Decision) -> Response {
    let (status, message) = match decision {
        Decision::Outage => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Stripe is temporarily unavailable.",
        ),
        Decision::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests hit the API too quickly.",
        ),
        Decision::Hung => (StatusCode::GATEWAY_TIMEOUT, "The request timed out."),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "An unknown error occurred",
        ),
    };
    let mut response = if status == StatusCode::TOO_MANY_REQUESTS {
        error(
            status,
            "invalid_request_error",
            Some("rate_limit"),
            message,
            None,
        )
    } else {
        error(status, "api_error", None, message, None)
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// The account and the checks every call starts with: a known account name, a form body
/// for `POST`s, and the bearer key.
fn admit(engine: &Engine, raw: &str, headers: &HeaderMap) -> Result<GatewayName, Refused> {
    let Ok(account) = GatewayName::parse(raw) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            "Unrecognized request URL.",
            None,
        )));
    };
    engine.count(account.as_str(), |c| &c.requests);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let expected = format!("Bearer {}", engine.settings.secret_key.expose());
    match given {
        Some(given) if given == expected => Ok(account),
        Some(_) => {
            engine.count(account.as_str(), |c| &c.unauthorized);
            Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                "Invalid API Key provided: sk_****",
                None,
            )))
        }
        None => {
            engine.count(account.as_str(), |c| &c.unauthorized);
            Err(Box::new(error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
                None,
            )))
        }
    }
}

/// The form body's pairs; another content type is refused as Stripe does.
fn form(
    engine: &Engine,
    account: &GatewayName,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, Refused> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media.as_deref() != Some("application/x-www-form-urlencoded") {
        engine.count(account.as_str(), |c| &c.bad_requests);
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            &format!(
                "Invalid request: unsupported Content-Type {}. If error persists and you need assistance, please contact support@stripe.com.",
                media.unwrap_or_default()
            ),
            None,
        )));
    }
    Ok(url::form_urlencoded::parse(body).into_owned().collect())
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, key: &str) -> Result<&str, Refused> {
        self.get(key).ok_or_else(|| Box::new(missing(key)))
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
                Some((key.to_owned(), v.clone()))
            })
            .collect()
    }

    fn sorted(&self) -> Vec<(String, String)> {
        let mut pairs = self.0.clone();
        pairs.sort();
        pairs
    }
}

/// Zero-decimal currencies and the two-decimal special cases
/// (<https://docs.stripe.com/currencies#zero-decimal>).
fn api_exponent(code: &str, iso: u32) -> u32 {
    const ZERO: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "VND", "VUV", "XAF",
        "XOF", "XPF",
    ];
    if ZERO.contains(&code) {
        0
    } else if code == "ISK" || code == "UGX" {
        2
    } else {
        iso
    }
}

/// `amount` + `currency` as money, or the 400 Stripe gives.
fn money(params: &Params) -> Result<Money, Refused> {
    let amount = params.required("amount")?;
    let currency = params.required("currency")?;
    let Ok(amount) = amount.parse::<i64>() else {
        return Err(Box::new(invalid(
            "parameter_invalid_integer",
            &format!("Invalid integer: {amount}"),
            Some("amount"),
        )));
    };
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(Box::new(invalid(
            "parameter_invalid_string",
            &format!("Invalid currency: {currency}. Stripe currencies are three-letter ISO codes in lower case."),
            Some("currency"),
        )));
    }
    let code = currency.to_ascii_uppercase();
    let unit = |minor: i64| Money::from_parts(minor, &code).ok();
    let converted = unit(1).and_then(|probe| {
        let iso = probe.currency.exponent();
        let theirs = api_exponent(&code, iso);
        if theirs >= iso {
            let d = 10_i64.checked_pow(theirs - iso)?;
            (amount % d == 0).then(|| amount / d).and_then(unit)
        } else {
            amount
                .checked_mul(10_i64.checked_pow(iso - theirs)?)
                .and_then(unit)
        }
    });
    converted.ok_or_else(|| {
        Box::new(invalid(
            "amount_too_small",
            &format!("Invalid amount {amount} {currency}."),
            Some("amount"),
        ))
    })
}

/// Our money in Stripe's unit.
fn api_amount(money: &Money) -> i64 {
    let iso = money.currency.exponent();
    let theirs = api_exponent(money.currency.code(), iso);
    let units = money.amount.minor_units();
    if theirs >= iso {
        10_i64
            .checked_pow(theirs - iso)
            .and_then(|f| units.checked_mul(f))
            .unwrap_or(units)
    } else {
        10_i64
            .checked_pow(iso - theirs)
            .map(|d| units / d)
            .unwrap_or(units)
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn object_id(kind: TransactionKind, provider_reference: &str) -> String {
    match kind {
        TransactionKind::Deposit => format!("pi_{provider_reference}"),
        TransactionKind::Withdrawal => format!("tr_{provider_reference}"),
    }
}

/// Whether a Stripe id names one of this account's records of `kind`.
fn record_by_id(
    engine: &Engine,
    account: &GatewayName,
    kind: TransactionKind,
    id: &str,
) -> Option<Record> {
    let prefix = match kind {
        TransactionKind::Deposit => "pi_",
        TransactionKind::Withdrawal => "tr_",
    };
    let body = id.strip_prefix(prefix)?;
    engine
        .record_by_provider_reference(account, body)
        .filter(|r| r.order.kind == kind && r.order.protocol == Protocol::Stripe)
}

/// The idempotency check: `Err` when the key was used with other parameters or elsewhere.
fn check_key(
    engine: &Engine,
    account: &GatewayName,
    key: &str,
    endpoint: &str,
    params: &Params,
) -> Result<(), Refused> {
    let mut store = store();
    let slot = (
        engine_id(engine),
        account.as_str().to_owned(),
        key.to_owned(),
    );
    let fingerprint = (endpoint.to_owned(), params.sorted());
    match store.keys.get(&slot) {
        Some(first) if *first != fingerprint => Err(Box::new(idempotency_conflict(key))),
        Some(_) => Ok(()),
        None => {
            store.keys.insert(slot, fingerprint);
            Ok(())
        }
    }
}

fn idempotency_conflict(key: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "idempotency_error",
        None,
        &format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."),
        None,
    )
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 255)
        .map(str::to_owned)
}

// ---------------------------------------------------------------- objects as JSON

fn outcome(record: &Record) -> Option<&ReportedStatus> {
    match &record.state {
        RecordState::Final(outcome) => Some(outcome),
        RecordState::Pending { .. } | RecordState::AwaitingAction => None,
    }
}

fn is_three_d_secure(payment_method: Option<&str>) -> bool {
    payment_method
        .is_some_and(|pm| pm.contains("threeDSecure") || pm.contains("authenticationRequired"))
}

fn payment_error(code: &str, reason: &str) -> Value {
    if code == "cancelled" {
        return json!({
            "type": "invalid_request_error",
            "code": "payment_intent_authentication_failure",
            "message": "The provided PaymentMethod has failed authentication. You can provide payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
        });
    }
    json!({
        "type": "card_error",
        "code": "card_declined",
        "decline_code": code,
        "message": reason,
    })
}

/// A PaymentIntent (<https://docs.stripe.com/api/payment_intents/object>).
fn intent_json(
    record: &Record,
    meta: Option<&Meta>,
    host: &str,
    money: Money,
    state: Option<&ReportedStatus>,
    awaiting: bool,
) -> Value {
    let id = object_id(TransactionKind::Deposit, &record.provider_reference);
    let amount = api_amount(&money);
    let return_url = meta.and_then(|m| m.return_url.clone());
    let (status, next_action, last_error) = match (awaiting, state) {
        (true, _) => {
            let next = match &return_url {
                Some(return_url) => json!({
                    "type": "redirect_to_url",
                    "redirect_to_url": {
                        "url": format!("http://{host}/{}/redirect/authenticate/{id}", record.order.account),
                        "return_url": return_url,
                    }
                }),
                None => json!({"type": "use_stripe_sdk", "use_stripe_sdk": {}}),
            };
            ("requires_action", next, Value::Null)
        }
        (false, None) => ("processing", Value::Null, Value::Null),
        (false, Some(ReportedStatus::Succeeded)) => ("succeeded", Value::Null, Value::Null),
        (false, Some(ReportedStatus::Failed { code, reason })) => (
            "requires_payment_method",
            Value::Null,
            payment_error(code, reason),
        ),
    };
    let succeeded = status == "succeeded";
    json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_received": if succeeded { amount } else { 0 },
        "capture_method": "automatic",
        "client_secret": format!("{id}_secret_{}", record.provider_reference),
        "confirmation_method": "automatic",
        "created": record.executed_at.timestamp(),
        "currency": money.currency.code().to_ascii_lowercase(),
        "latest_charge": if succeeded { json!(format!("ch_{}", record.provider_reference)) } else { Value::Null },
        "last_payment_error": last_error,
        "livemode": false,
        "metadata": meta.map(|m| m.metadata.clone()).unwrap_or_default(),
        "next_action": next_action,
        "payment_method": meta.and_then(|m| m.payment_method.clone()),
        "payment_method_types": ["card"],
        "status": status,
    })
}

/// A Transfer (<https://docs.stripe.com/api/transfers/object>); a failed outcome is a full
/// reversal.
fn transfer_json(
    record: &Record,
    meta: Option<&Meta>,
    money: Money,
    state: Option<&ReportedStatus>,
) -> Value {
    let id = object_id(TransactionKind::Withdrawal, &record.provider_reference);
    let amount = api_amount(&money);
    let reversed = matches!(state, Some(ReportedStatus::Failed { .. }));
    let reversals: Vec<Value> = if reversed {
        vec![json!({
            "id": format!("trr_{}", record.provider_reference),
            "object": "transfer_reversal",
            "amount": amount,
            "currency": money.currency.code().to_ascii_lowercase(),
            "transfer": id,
        })]
    } else {
        Vec::new()
    };
    json!({
        "id": id,
        "object": "transfer",
        "amount": amount,
        "amount_reversed": if reversed { amount } else { 0 },
        "balance_transaction": format!("txn_{}", record.provider_reference),
        "created": record.executed_at.timestamp(),
        "currency": money.currency.code().to_ascii_lowercase(),
        "description": null,
        "destination": record.order.customer,
        "livemode": false,
        "metadata": meta.map(|m| m.metadata.clone()).unwrap_or_default(),
        "reversals": {"object": "list", "data": reversals, "has_more": false, "url": format!("/v1/transfers/{id}/reversals")},
        "reversed": reversed,
        "source_type": "card",
        "transfer_group": meta.and_then(|m| m.transfer_group.clone()),
    })
}

fn record_json(engine: &Engine, record: &Record, host: &str, mismatch: bool) -> Value {
    let meta = meta_of(
        engine,
        record.order.account.as_str(),
        &record.order.reference,
    );
    let mut money = record.order.money;
    if mismatch {
        if let Some(amount) = money
            .amount
            .minor_units()
            .checked_add(1)
            .and_then(|n| paygate_core::domain::Amount::new(n).ok())
        {
            money = Money::new(amount, money.currency);
        }
    }
    let awaiting = record.state == RecordState::AwaitingAction;
    match record.order.kind {
        TransactionKind::Deposit => intent_json(
            record,
            meta.as_ref(),
            host,
            money,
            outcome(record),
            awaiting,
        ),
        TransactionKind::Withdrawal => transfer_json(record, meta.as_ref(), money, outcome(record)),
    }
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned()
}

// ---------------------------------------------------------------- creating payments

async fn create_intent(
    State(engine): Shared,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create(engine, &account, &headers, &body, TransactionKind::Deposit).await
}

async fn create_transfer(
    State(engine): Shared,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    create(
        engine,
        &account,
        &headers,
        &body,
        TransactionKind::Withdrawal,
    )
    .await
}

/// Validates a create request into an order and what the engine does not keep.
fn parse_create(
    params: &Params,
    account: &GatewayName,
    reference: String,
    kind: TransactionKind,
) -> Result<(Order, Meta), Refused> {
    let money = money(params)?;
    let metadata = params.metadata();
    match kind {
        TransactionKind::Deposit => {
            if params.get("confirm") != Some("true") {
                return Err(Box::new(missing("confirm")));
            }
            let payment_method = params.required("payment_method")?.to_owned();
            let return_url = params.get("return_url").map(str::to_owned);
            Ok((
                Order {
                    account: account.clone(),
                    protocol: Protocol::Stripe,
                    kind,
                    reference,
                    money,
                    customer: payment_method.clone(),
                    needs_action: is_three_d_secure(Some(&payment_method)),
                    callback_url: None,
                },
                Meta {
                    metadata,
                    return_url,
                    payment_method: Some(payment_method),
                    transfer_group: None,
                    kind,
                },
            ))
        }
        TransactionKind::Withdrawal => {
            let destination = params.required("destination")?.to_owned();
            Ok((
                Order {
                    account: account.clone(),
                    protocol: Protocol::Stripe,
                    kind,
                    reference,
                    money,
                    customer: destination,
                    needs_action: false,
                    callback_url: None,
                },
                Meta {
                    metadata,
                    return_url: None,
                    payment_method: None,
                    transfer_group: params.get("transfer_group").map(str::to_owned),
                    kind,
                },
            ))
        }
    }
}

async fn create(
    engine: Arc<Engine>,
    raw: &str,
    headers: &HeaderMap,
    body: &[u8],
    kind: TransactionKind,
) -> Response {
    let account = match admit(&engine, raw, headers) {
        Ok(account) => account,
        Err(response) => return *response,
    };
    let params = match form(&engine, &account, headers, body) {
        Ok(pairs) => Params(pairs),
        Err(response) => return *response,
    };
    let key = idempotency_key(headers);
    // Without a key Stripe executes every request: a fresh reference each time.
    let reference = key
        .clone()
        .unwrap_or_else(|| format!("req_{}", engine.next_id()));
    let (order, meta) = match parse_create(&params, &account, reference.clone(), kind) {
        Ok(parsed) => parsed,
        Err(response) => {
            engine.count(account.as_str(), |c| &c.bad_requests);
            return *response;
        }
    };
    let endpoint = match kind {
        TransactionKind::Deposit => "payment_intents",
        TransactionKind::Withdrawal => "transfers",
    };
    if let Some(key) = &key {
        if let Err(response) = check_key(&engine, &account, key, endpoint, &params) {
            return *response;
        }
    }
    store()
        .meta
        .entry((engine_id(&engine), account.as_str().to_owned(), reference))
        .or_insert(meta);
    let host = host(headers);
    match engine.submit(order).await {
        fault_decision @ (Decision::Outage | Decision::ServerError | Decision::RateLimited | Decision::Hung) => {
            fault(&fault_decision)
        }
        Decision::ExecutedThenError(status) => bare_status(status),
        Decision::DuplicateRefused(status) => error(
            status,
            "idempotency_error",
            None,
            "There is currently another in-progress request using this Stripe-Idempotency-Key (that probably means you submitted twice, and the other request is still going through). Please try again later.",
            None,
        ),
        Decision::Conflict => idempotency_conflict(key.as_deref().unwrap_or_default()),
        Decision::Declined(record) => {
            let reason = match outcome(&record) {
                Some(ReportedStatus::Failed { reason, .. }) => reason.clone(),
                _ => "Your card was declined.".into(),
            };
            match kind {
                TransactionKind::Deposit => {
                    let mut intent = record_json(&engine, &record, &host, false);
                    intent["status"] = json!("requires_payment_method");
                    intent["last_payment_error"] = payment_error("do_not_honor", &reason);
                    reply(
                        StatusCode::PAYMENT_REQUIRED,
                        &json!({"error": {
                            "type": "card_error",
                            "code": "card_declined",
                            "decline_code": "do_not_honor",
                            "message": "Your card was declined.",
                            "doc_url": "https://stripe.com/docs/error-codes/card-declined",
                            "payment_intent": intent,
                        }}),
                    )
                }
                TransactionKind::Withdrawal => invalid(
                    "balance_insufficient",
                    "You have insufficient available funds in your Stripe account. Try adding funds directly to your available balance by creating Charges using the 4000000000000077 test card.",
                    None,
                ),
            }
        }
        Decision::Accepted(record) => reply(StatusCode::OK, &record_json(&engine, &record, &host, false)),
    }
}

// ---------------------------------------------------------------- reading payments

/// The knobs a read obeys: latency, outage, and whether its amounts are off by one.
async fn read_faults(engine: &Engine, account: &GatewayName) -> Result<bool, Refused> {
    engine.count(account.as_str(), |c| &c.status_queries);
    let knobs = engine.knobs(account.as_str());
    engine.latency(&knobs).await;
    if knobs.outage {
        engine.count(account.as_str(), |c| &c.outage_rejections);
        return Err(Box::new(fault(&Decision::Outage)));
    }
    let mismatch = chance(knobs.mismatched_status_rate);
    if mismatch {
        engine.count(account.as_str(), |c| &c.statuses_mismatched);
    }
    Ok(mismatch)
}

fn no_such(kind: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such {kind}: '{id}'"),
        Some("id"),
    )
}

async fn get_intent(
    State(engine): Shared,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_one(&engine, &account, &id, &headers, TransactionKind::Deposit).await
}

async fn get_transfer(
    State(engine): Shared,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    get_one(
        &engine,
        &account,
        &id,
        &headers,
        TransactionKind::Withdrawal,
    )
    .await
}

async fn get_one(
    engine: &Engine,
    raw: &str,
    id: &str,
    headers: &HeaderMap,
    kind: TransactionKind,
) -> Response {
    let account = match admit(engine, raw, headers) {
        Ok(account) => account,
        Err(response) => return *response,
    };
    let mismatch = match read_faults(engine, &account).await {
        Ok(mismatch) => mismatch,
        Err(response) => return *response,
    };
    match record_by_id(engine, &account, kind, id) {
        Some(record) => reply(
            StatusCode::OK,
            &record_json(engine, &record, &host(headers), mismatch),
        ),
        None => no_such(
            match kind {
                TransactionKind::Deposit => "payment_intent",
                TransactionKind::Withdrawal => "transfer",
            },
            id,
        ),
    }
}

/// Whether Stripe's search index does not show this record yet (`status_not_found_for_ms`).
fn lagging(record: &Record, lag_ms: u64) -> bool {
    lag_ms > 0
        && chrono::Utc::now()
            .signed_duration_since(record.executed_at)
            .num_milliseconds()
            < i64::try_from(lag_ms).unwrap_or(i64::MAX)
}

/// `metadata['key']:'value'` (single or double quotes): the one clause emulated
/// (<https://docs.stripe.com/search#search-query-language>).
fn metadata_clause(query: &str) -> Option<(String, String)> {
    let rest = query.trim().strip_prefix("metadata[")?;
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &rest[1..];
    let (key, rest) = rest.split_once(quote)?;
    let rest = rest.strip_prefix("]:")?;
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let value = rest[1..].strip_suffix(quote)?;
    (!value.contains(quote)).then(|| (key.to_owned(), value.to_owned()))
}

fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

/// This account's records of `kind` whose stored request matches `keep`.
fn matching(
    engine: &Engine,
    account: &GatewayName,
    kind: TransactionKind,
    keep: impl Fn(&Meta) -> bool,
) -> Vec<Record> {
    let id = engine_id(engine);
    let references: Vec<String> = store()
        .meta
        .iter()
        .filter(|((e, a, _), meta)| {
            *e == id && a == account.as_str() && meta.kind == kind && keep(meta)
        })
        .map(|((_, _, reference), _)| reference.clone())
        .collect();
    references
        .iter()
        .filter_map(|reference| engine.record(account, reference))
        .filter(|r| r.order.protocol == Protocol::Stripe && r.order.kind == kind)
        .collect()
}

async fn search_intents(
    State(engine): Shared,
    Path(account): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let account = match admit(&engine, &account, &headers) {
        Ok(account) => account,
        Err(response) => return *response,
    };
    let pairs = query_pairs(raw.as_deref());
    let Some(query) = pairs
        .iter()
        .find(|(k, _)| k == "query")
        .map(|(_, v)| v.clone())
    else {
        engine.count(account.as_str(), |c| &c.bad_requests);
        return missing("query");
    };
    let Some((key, value)) = metadata_clause(&query) else {
        engine.count(account.as_str(), |c| &c.bad_requests);
        return invalid(
            "parameter_invalid_string",
            &format!("Invalid search query: {query}"),
            Some("query"),
        );
    };
    let mismatch = match read_faults(&engine, &account).await {
        Ok(mismatch) => mismatch,
        Err(response) => return *response,
    };
    let lag = engine.knobs(account.as_str()).status_not_found_for_ms;
    let host = host(&headers);
    let data: Vec<Value> = matching(&engine, &account, TransactionKind::Deposit, |m| {
        m.metadata.get(&key) == Some(&value)
    })
    .iter()
    .filter(|r| !lagging(r, lag))
    .map(|r| record_json(&engine, r, &host, mismatch))
    .collect();
    reply(
        StatusCode::OK,
        &json!({
            "object": "search_result",
            "url": "/v1/payment_intents/search",
            "has_more": false,
            "next_page": null,
            "data": data,
        }),
    )
}

async fn list_transfers(
    State(engine): Shared,
    Path(account): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let account = match admit(&engine, &account, &headers) {
        Ok(account) => account,
        Err(response) => return *response,
    };
    let pairs = query_pairs(raw.as_deref());
    let group = pairs
        .iter()
        .find(|(k, _)| k == "transfer_group")
        .map(|(_, v)| v.clone());
    let mismatch = match read_faults(&engine, &account).await {
        Ok(mismatch) => mismatch,
        Err(response) => return *response,
    };
    let host = host(&headers);
    let data: Vec<Value> = matching(&engine, &account, TransactionKind::Withdrawal, |m| {
        group.is_none() || m.transfer_group == group
    })
    .iter()
    .map(|r| record_json(&engine, r, &host, mismatch))
    .collect();
    reply(
        StatusCode::OK,
        &json!({"object": "list", "url": "/v1/transfers", "has_more": false, "data": data}),
    )
}

// ---------------------------------------------------------------- the hosted step

/// The customer's 3-D Secure page: a GET authenticates, `?action=cancel` fails it.
async fn authenticate(
    State(engine): Shared,
    Path((account, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Ok(account) = GatewayName::parse(&account) else {
        return (
            StatusCode::NOT_FOUND,
            Html("<h1>Unknown account</h1>".to_owned()),
        )
            .into_response();
    };
    let cancel = query_pairs(raw.as_deref())
        .iter()
        .any(|(k, v)| k == "action" && v == "cancel");
    let Some(record) = record_by_id(&engine, &account, TransactionKind::Deposit, &id) else {
        return (
            StatusCode::NOT_FOUND,
            Html("<h1>No such payment</h1>".to_owned()),
        )
            .into_response();
    };
    let return_url = meta_of(&engine, account.as_str(), &record.order.reference)
        .and_then(|m| m.return_url)
        .unwrap_or_default();
    match engine.finish_action(&account, &record.order.reference, !cancel) {
        Some(_) => {
            let verdict = if cancel { "failed" } else { "succeeded" };
            let link = format!("{return_url}?payment_intent={id}&redirect_status={verdict}");
            Html(format!(
                "<!doctype html><title>3D Secure</title><h1>Authentication {verdict}</h1><p><a href=\"{}\">Return to the merchant</a></p>",
                link.replace('&', "&amp;").replace('"', "&quot;")
            ))
            .into_response()
        }
        None => (
            StatusCode::CONFLICT,
            Html("<h1>This payment is not waiting for authentication</h1>".to_owned()),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------- refunds

fn refund_json(refund: &StoredRefund) -> Value {
    json!({
        "id": refund.id,
        "object": "refund",
        "amount": refund.amount,
        "balance_transaction": format!("txn_{}", refund.id.trim_start_matches("re_")),
        "charge": format!("ch_{}", refund.payment_intent.trim_start_matches("pi_")),
        "created": refund.created,
        "currency": refund.currency,
        "metadata": refund.metadata,
        "payment_intent": refund.payment_intent,
        "reason": null,
        "status": "succeeded",
    })
}

async fn create_refund(
    State(engine): Shared,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = match admit(&engine, &account, &headers) {
        Ok(account) => account,
        Err(response) => return *response,
    };
    let params = match form(&engine, &account, &headers, &body) {
        Ok(pairs) => Params(pairs),
        Err(response) => return *response,
    };
    let knobs = engine.knobs(account.as_str());
    engine.latency(&knobs).await;
    if knobs.outage {
        engine.count(account.as_str(), |c| &c.outage_rejections);
        return fault(&Decision::Outage);
    }
    if chance(knobs.rate_limit_rate) {
        engine.count(account.as_str(), |c| &c.rate_limited);
        return fault(&Decision::RateLimited);
    }
    if chance(knobs.error_rate) {
        engine.count(account.as_str(), |c| &c.errors_injected);
        return fault(&Decision::ServerError);
    }
    let key = idempotency_key(&headers);
    if let Some(key) = &key {
        if let Err(response) = check_key(&engine, &account, key, "refunds", &params) {
            return *response;
        }
        let replay = {
            let store = store();
            store
                .refund_keys
                .get(&(engine_id(&engine), account.as_str().to_owned(), key.clone()))
                .and_then(|id| store.refunds.get(&(engine_id(&engine), id.clone())))
                .cloned()
        };
        if let Some(refund) = replay {
            engine.count(account.as_str(), |c| &c.duplicates_suppressed);
            return reply(StatusCode::OK, &refund_json(&refund));
        }
    }
    let refused = |response: Response| {
        engine.count(account.as_str(), |c| &c.bad_requests);
        response
    };
    let Some(intent) = params.get("payment_intent").map(str::to_owned) else {
        return refused(missing("payment_intent"));
    };
    let Some(record) = record_by_id(&engine, &account, TransactionKind::Deposit, &intent) else {
        return refused(invalid(
            "resource_missing",
            &format!("No such payment_intent: '{intent}'"),
            Some("payment_intent"),
        ));
    };
    if outcome(&record) != Some(&ReportedStatus::Succeeded) {
        return refused(invalid(
            "payment_intent_unexpected_state",
            &format!("This PaymentIntent ({intent}) does not have a successful charge to refund."),
            Some("payment_intent"),
        ));
    }
    let charged = api_amount(&record.order.money);
    let currency = record.order.money.currency.code().to_ascii_lowercase();
    let id = engine_id(&engine);
    let mut store = store();
    let refunded: i64 = store
        .refunds
        .iter()
        .filter(|((e, _), r)| {
            *e == id && r.payment_intent == intent && r.account == account.as_str()
        })
        .map(|(_, r)| r.amount)
        .fold(0_i64, i64::saturating_add);
    let left = charged.saturating_sub(refunded);
    let amount = match params.get("amount").map(str::parse::<i64>) {
        None => left,
        Some(Ok(amount)) if amount > 0 => amount,
        Some(_) => {
            drop(store);
            return refused(invalid(
                "parameter_invalid_integer",
                "Invalid positive integer",
                Some("amount"),
            ));
        }
    };
    if left == 0 {
        drop(store);
        return refused(invalid(
            "charge_already_refunded",
            &format!(
                "Charge ch_{} has already been refunded.",
                record.provider_reference
            ),
            None,
        ));
    }
    if amount > left {
        drop(store);
        return refused(invalid(
            "amount_too_large",
            &format!(
                "Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"
            ),
            Some("amount"),
        ));
    }
    let refund = StoredRefund {
        id: format!("re_{}", provider_reference(engine.next_id())),
        account: account.as_str().to_owned(),
        payment_intent: intent,
        amount,
        currency,
        metadata: params.metadata(),
        created: now(),
    };
    if let Some(key) = key {
        store
            .refund_keys
            .insert((id, account.as_str().to_owned(), key), refund.id.clone());
    }
    store
        .refunds
        .insert((id, refund.id.clone()), refund.clone());
    drop(store);
    engine.count(account.as_str(), |c| &c.refunds);
    reply(StatusCode::OK, &refund_json(&refund))
}

async fn get_refund(
    State(engine): Shared,
    Path((account, refund_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let account = match admit(&engine, &account, &headers) {
        Ok(account) => account,
        Err(response) => return *response,
    };
    let found = store()
        .refunds
        .get(&(engine_id(&engine), refund_id.clone()))
        .filter(|r| r.account == account.as_str())
        .cloned();
    match found {
        Some(refund) => reply(StatusCode::OK, &refund_json(&refund)),
        None => no_such("refund", &refund_id),
    }
}

// ---------------------------------------------------------------- webhooks

/// `Stripe-Signature` for `body` at `t` (<https://docs.stripe.com/webhooks#verify-manually>).
fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let tag = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(format!("{t}.").as_bytes());
            mac.update(body);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("t={t},v1={tag}")
}

/// A payment's webhook: a Stripe event (`malformed`: signed, but without `data.object`).
pub fn callback(engine: &Engine, facts: &Facts, malformed: bool) -> Outbound {
    let record = engine
        .records_of(&facts.reference)
        .into_iter()
        .find(|r| r.provider_reference == facts.provider_reference);
    let kind_name = match (facts.kind, &facts.status) {
        (TransactionKind::Deposit, ReportedStatus::Succeeded) => "payment_intent.succeeded",
        (TransactionKind::Deposit, ReportedStatus::Failed { .. }) => {
            "payment_intent.payment_failed"
        }
        (TransactionKind::Withdrawal, ReportedStatus::Succeeded) => "transfer.created",
        (TransactionKind::Withdrawal, ReportedStatus::Failed { .. }) => "transfer.reversed",
    };
    let object = record.as_ref().map(|record| {
        let meta = meta_of(
            engine,
            record.order.account.as_str(),
            &record.order.reference,
        );
        match facts.kind {
            TransactionKind::Deposit => intent_json(
                record,
                meta.as_ref(),
                "",
                facts.money,
                Some(&facts.status),
                false,
            ),
            TransactionKind::Withdrawal => {
                transfer_json(record, meta.as_ref(), facts.money, Some(&facts.status))
            }
        }
    });
    let data = match (malformed, object) {
        (false, Some(object)) => json!({"object": object}),
        _ => json!({}),
    };
    let t = facts.sent_at.timestamp();
    let event = json!({
        "id": facts.event_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": t,
        "data": data,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": facts.reference},
        "type": kind_name,
    });
    let body = serde_json::to_vec(&event).unwrap_or_default();
    Outbound {
        content_type: "application/json; charset=utf-8".into(),
        headers: vec![(
            "stripe-signature".into(),
            signature(engine.settings.webhook_secret.expose().as_bytes(), t, &body),
        )],
        body: Bytes::from(body),
    }
}
