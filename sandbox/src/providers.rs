//! The three providers' HTTP faces. Each handler parses its wire format into an
//! [`Order`], lets the [`Engine`] decide, and renders the decision in its format, with the
//! wire types of `paygate_gateways` so sandbox and connectors cannot drift apart.
//!
//! Routes (every path starts with the account, which is the paygate gateway name that
//! callbacks are addressed to):
//! - JSON: `POST /{account}/transaction/charge`, `POST /{account}/transfer`,
//!   `GET /{account}/transaction/verify/{reference}`, `GET /{account}/transfer/verify/{reference}`,
//!   `POST /{account}/refund` (a signed `refund.processed` webhook follows a pending one)
//! - SOAP: `POST /{account}/soap`
//! - protobuf: `POST /{account}/v1/payments`, `GET /{account}/v1/payments/{reference}`

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use paygate_core::domain::{GatewayName, Money, TransactionId, TransactionKind};
use paygate_gateways::json::wire as jw;
use paygate_gateways::protobuf::wire as pw;
use paygate_gateways::soap::wire as sw;
use paygate_gateways::ReportedStatus;
use prost::Message;

use crate::engine::{
    chance, Decision, Engine, Order, Protocol, Record, RecordState, RefundDecision, RefundOrder,
};

type Shared = State<Arc<Engine>>;

/// Why a request was not turned into an order.
enum Refusal {
    NotFound,
    Unauthorized,
    Invalid(String),
}

fn account(engine: &Engine, raw: &str) -> Result<GatewayName, Refusal> {
    let account = GatewayName::parse(raw).map_err(|_| Refusal::NotFound)?;
    engine.count(account.as_str(), |c| &c.requests);
    Ok(account)
}

fn bearer_ok(engine: &Engine, headers: &HeaderMap) -> bool {
    let expected = format!("Bearer {}", engine.settings.secret_key.expose());
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str())
}

fn order(
    account: GatewayName,
    protocol: Protocol,
    kind: TransactionKind,
    reference: &str,
    amount: i64,
    currency: &str,
    customer: &str,
) -> Result<Order, Refusal> {
    Ok(Order {
        account,
        protocol,
        kind,
        reference: TransactionId::parse(reference)
            .map_err(|e| Refusal::Invalid(e.to_string()))?
            .to_string(),
        money: Money::from_parts(amount, currency).map_err(|e| Refusal::Invalid(e.to_string()))?,
        customer: customer.to_owned(),
        needs_action: false,
        callback_url: None,
    })
}

fn outcome(record: &Record) -> Option<&ReportedStatus> {
    match &record.state {
        RecordState::Pending { .. } | RecordState::AwaitingAction => None,
        RecordState::Final(outcome) => Some(outcome),
    }
}

fn count_refusal(engine: &Engine, account: Option<&GatewayName>, refusal: &Refusal) {
    let Some(account) = account else { return };
    match refusal {
        Refusal::Unauthorized => engine.count(account.as_str(), |c| &c.unauthorized),
        Refusal::Invalid(_) => engine.count(account.as_str(), |c| &c.bad_requests),
        Refusal::NotFound => {}
    }
}

/// What a load balancer in front of the provider answers when the upstream's response is
/// lost: the bare status line as `text/plain` (e.g. `502 Bad Gateway`), in no protocol's
/// shape, whichever protocol was spoken.
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

/// The message of a `duplicate_reference_status` refusal (Paystack's wording).
const DUPLICATE_MESSAGE: &str = "Duplicate Transaction Reference";
const DUPLICATE_CODE: &str = "duplicate_reference";

// ---------------------------------------------------------------- JSON (Paystack-like)

fn json_reply(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, jw::CONTENT_TYPE)],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body: jw::ApiResponse<()> = jw::ApiResponse {
        status: false,
        message: message.into(),
        data: None,
        code: Some(code.into()),
    };
    json_reply(status, &body)
}

fn json_data(record: &Record) -> jw::PaymentData {
    let (status, gateway_response, failure_code) = match outcome(record) {
        None => (jw::PaymentState::Pending, None, None),
        Some(ReportedStatus::Succeeded) => {
            (jw::PaymentState::Success, Some("Approved".into()), None)
        }
        Some(ReportedStatus::Failed { code, reason }) => (
            jw::PaymentState::Failed,
            Some(reason.clone()),
            Some(code.clone()),
        ),
    };
    jw::PaymentData {
        id: record.provider_reference.clone(),
        reference: record.order.reference.to_string(),
        status,
        amount: record.order.money.amount.minor_units(),
        currency: record.order.money.currency.code().into(),
        gateway_response,
        failure_code,
    }
}

fn json_refusal(refusal: Refusal) -> Response {
    match refusal {
        Refusal::NotFound => json_error(StatusCode::NOT_FOUND, "not_found", "no such account"),
        Refusal::Unauthorized => {
            json_error(StatusCode::UNAUTHORIZED, "unauthorized", "Invalid key")
        }
        Refusal::Invalid(message) => {
            json_error(StatusCode::BAD_REQUEST, "invalid_request", &message)
        }
    }
}

/// The HTTP-level faults the JSON and protobuf providers answer alike, with `encode` giving
/// each protocol's error body: outage 503, rate limit 429 with `Retry-After: 1`, a hang
/// 504, and a server error (or anything else passed here) 500.
fn transport_fault(
    decision: &Decision,
    encode: fn(StatusCode, &str, &str) -> Response,
) -> Response {
    let (status, code, message) = match decision {
        Decision::Outage => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        ),
        Decision::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests",
        ),
        Decision::Hung => (StatusCode::GATEWAY_TIMEOUT, "timeout", "Upstream timeout"),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "Internal error",
        ),
    };
    let mut response = encode(status, code, message);
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

fn json_decision(decision: Decision) -> Response {
    match decision {
        fault @ (Decision::Outage
        | Decision::ServerError
        | Decision::RateLimited
        | Decision::Hung) => transport_fault(&fault, json_error),
        Decision::Declined(record) => {
            let reason = match outcome(&record) {
                Some(ReportedStatus::Failed { reason, .. }) => reason.clone(),
                _ => "Declined".into(),
            };
            json_error(StatusCode::PAYMENT_REQUIRED, "declined", &reason)
        }
        Decision::ExecutedThenError(status) => bare_status(status),
        Decision::DuplicateRefused(status) => json_error(status, DUPLICATE_CODE, DUPLICATE_MESSAGE),
        Decision::Conflict => json_error(
            StatusCode::CONFLICT,
            "duplicate_reference",
            "Reference already used with other details",
        ),
        Decision::Accepted(record) => {
            let body = jw::ApiResponse {
                status: true,
                message: "Payment attempted".into(),
                data: Some(json_data(&record)),
                code: None,
            };
            json_reply(StatusCode::OK, &body)
        }
    }
}

async fn json_submit(
    engine: Arc<Engine>,
    raw_account: &str,
    headers: &HeaderMap,
    body: &[u8],
    kind: TransactionKind,
) -> Response {
    let mut known = None;
    let parsed = (|| {
        let account = account(&engine, raw_account)?;
        known = Some(account.clone());
        if !bearer_ok(&engine, headers) {
            return Err(Refusal::Unauthorized);
        }
        match kind {
            TransactionKind::Deposit => {
                let r: jw::ChargeRequest =
                    serde_json::from_slice(body).map_err(|e| Refusal::Invalid(e.to_string()))?;
                order(
                    account,
                    Protocol::Json,
                    kind,
                    &r.reference,
                    r.amount,
                    &r.currency,
                    &r.customer,
                )
            }
            TransactionKind::Withdrawal => {
                let r: jw::TransferRequest =
                    serde_json::from_slice(body).map_err(|e| Refusal::Invalid(e.to_string()))?;
                order(
                    account,
                    Protocol::Json,
                    kind,
                    &r.reference,
                    r.amount,
                    &r.currency,
                    &r.recipient,
                )
            }
        }
    })();
    match parsed {
        Ok(order) => json_decision(engine.submit(order).await),
        Err(refusal) => {
            count_refusal(&engine, known.as_ref(), &refusal);
            json_refusal(refusal)
        }
    }
}

/// `POST /{account}/refund`: the outage, rate-limit and error knobs apply as to payments;
/// an executed refund answers `pending` and its `refund.processed` webhook follows after the
/// callback delay (or `succeeded` at once when callbacks are off). A repeat answers the
/// same refund, executed once.
pub async fn json_refund(
    State(engine): Shared,
    Path(raw_account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let account = match account(&engine, &raw_account) {
        Ok(account) => account,
        Err(refusal) => return json_refusal(refusal),
    };
    if !bearer_ok(&engine, &headers) {
        count_refusal(&engine, Some(&account), &Refusal::Unauthorized);
        return json_refusal(Refusal::Unauthorized);
    }
    let request: jw::RefundRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return json_refusal(Refusal::Invalid(e.to_string())),
    };
    let Ok(money) = Money::from_parts(request.amount, &request.currency) else {
        return json_error(StatusCode::BAD_REQUEST, "invalid_amount", "Invalid amount");
    };
    let knobs = engine.knobs(account.as_str());
    engine.latency(&knobs).await;
    if knobs.outage {
        return bare_status(StatusCode::SERVICE_UNAVAILABLE);
    }
    if chance(knobs.rate_limit_rate) {
        return bare_status(StatusCode::TOO_MANY_REQUESTS);
    }
    if chance(knobs.error_rate) {
        return bare_status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let decision = engine.refund(RefundOrder {
        account: account.clone(),
        transaction: request.transaction,
        reference: request.reference,
        money,
    });
    let (record, fresh) = match decision {
        RefundDecision::Executed { record, fresh } => (record, fresh),
        RefundDecision::UnknownPayment => {
            return json_error(
                StatusCode::NOT_FOUND,
                "transaction_not_found",
                "No successful charge with that reference",
            )
        }
        RefundDecision::TooMuch => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "refund_exceeds_charge",
                "Refund amount exceeds what is left of the charge",
            )
        }
        RefundDecision::Conflict => {
            return json_error(
                StatusCode::CONFLICT,
                "duplicate_reference",
                "Reference already used with other details",
            )
        }
    };
    let state = if knobs.callbacks_enabled {
        jw::RefundState::Pending
    } else {
        jw::RefundState::Succeeded
    };
    if fresh && knobs.callbacks_enabled {
        schedule_refund_callback(
            &engine,
            &record,
            Duration::from_millis(knobs.callback_delay_ms),
        );
    }
    let body = jw::ApiResponse {
        status: true,
        message: "Refund accepted".into(),
        data: Some(refund_data(&record, state)),
        code: None,
    };
    json_reply(StatusCode::OK, &body)
}

fn refund_data(record: &crate::engine::RefundRecord, status: jw::RefundState) -> jw::RefundData {
    jw::RefundData {
        id: record.provider_reference.clone(),
        reference: record.order.reference.clone(),
        transaction: record.order.transaction.clone(),
        status,
        amount: record.order.money.amount.minor_units(),
        currency: record.order.money.currency.code().into(),
        failure_code: None,
        gateway_response: None,
    }
}

/// Sends the signed `refund.processed` webhook after `delay`, retried a few times like a
/// payment's (tracked, so shutdown cancels it).
fn schedule_refund_callback(
    engine: &Arc<Engine>,
    record: &crate::engine::RefundRecord,
    delay: Duration,
) {
    let engine = Arc::clone(engine);
    let record = record.clone();
    let event_id = format!("evt_{}", engine.next_id());
    let tracker = engine.tasks.clone();
    tracker.spawn(async move {
        let shutdown = engine.shutdown.clone();
        tokio::select! {
            () = send_refund_callback(&engine, &record, &event_id, delay) => {}
            () = shutdown.cancelled() => {}
        }
    });
}

async fn send_refund_callback(
    engine: &Engine,
    record: &crate::engine::RefundRecord,
    event_id: &str,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let knobs = engine.knobs(record.order.account.as_str());
    let base = knobs
        .callback_base_url
        .as_deref()
        .unwrap_or(&engine.settings.callback_base_url)
        .trim_end_matches('/')
        .to_owned();
    let url = format!("{base}/callbacks/{}", record.order.account);
    let mut wait = Duration::from_millis(knobs.callback_backoff_ms.max(1));
    for attempt in 1..=knobs.callback_max_attempts.max(1) {
        let event = jw::RefundWebhookEvent {
            event: "refund.processed".into(),
            event_id: event_id.to_owned(),
            sent_at: chrono::Utc::now(),
            data: refund_data(record, jw::RefundState::Succeeded),
        };
        let signed =
            paygate_gateways::json::signed_refund_callback(&engine.settings.webhook_secret, &event);
        let mut request = engine
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, &signed.content_type);
        for (name, value) in &signed.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.body(signed.body).send().await {
            Ok(response) if response.status().is_success() => {
                engine.count(record.order.account.as_str(), |c| &c.callbacks_sent);
                return;
            }
            Ok(response) => {
                tracing::debug!(%url, status = %response.status(), attempt, "refund callback refused")
            }
            Err(error) => tracing::debug!(%url, %error, attempt, "refund callback failed"),
        }
        tokio::time::sleep(wait).await;
        wait = wait
            .saturating_mul(2)
            .min(Duration::from_millis(knobs.callback_backoff_max_ms.max(1)));
    }
    engine.count(record.order.account.as_str(), |c| &c.callbacks_failed);
}

pub async fn json_charge(
    State(engine): Shared,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    json_submit(engine, &account, &headers, &body, TransactionKind::Deposit).await
}

pub async fn json_transfer(
    State(engine): Shared,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    json_submit(
        engine,
        &account,
        &headers,
        &body,
        TransactionKind::Withdrawal,
    )
    .await
}

pub async fn json_verify(
    State(engine): Shared,
    Path((account, reference)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(account) = GatewayName::parse(&account) else {
        return json_refusal(Refusal::NotFound);
    };
    if !bearer_ok(&engine, &headers) {
        return json_refusal(Refusal::Unauthorized);
    }
    match status_lookup(&engine, &account, &reference).await {
        Lookup::Outage => json_decision(Decision::Outage),
        Lookup::Missing => json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "Transaction reference not found",
        ),
        Lookup::Found(record) => {
            let mut data = json_data(&record);
            if chance(engine.knobs(account.as_str()).mismatched_status_rate) {
                engine.count(account.as_str(), |c| &c.statuses_mismatched);
                data.amount = data.amount.checked_add(1).unwrap_or(data.amount);
            }
            let body = jw::ApiResponse {
                status: true,
                message: "Verification successful".into(),
                data: Some(data),
                code: None,
            };
            json_reply(StatusCode::OK, &body)
        }
    }
}

enum Lookup {
    Outage,
    Missing,
    Found(Box<Record>),
}

async fn status_lookup(engine: &Engine, account: &GatewayName, reference: &str) -> Lookup {
    engine.count(account.as_str(), |c| &c.status_queries);
    let knobs = engine.knobs(account.as_str());
    engine.latency(&knobs).await;
    if knobs.outage {
        engine.count(account.as_str(), |c| &c.outage_rejections);
        return Lookup::Outage;
    }
    match TransactionId::parse(reference)
        .ok()
        .and_then(|id| engine.record(account, &id.to_string()))
    {
        Some(record) if lagging(&record, knobs.status_not_found_for_ms) => Lookup::Missing,
        Some(record) => Lookup::Found(Box::new(record)),
        None => Lookup::Missing,
    }
}

/// Whether a lagging status endpoint (`status_not_found_for_ms`) does not know the record yet.
fn lagging(record: &Record, lag_ms: u64) -> bool {
    if lag_ms == 0 {
        return false;
    }
    let age = chrono::Utc::now().signed_duration_since(record.executed_at);
    // A negative age (clock stepped back) counts as "just executed".
    age.num_milliseconds() < i64::try_from(lag_ms).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------- SOAP 1.1

fn xml_reply(status: StatusCode, envelope: &sw::Envelope<sw::Reply>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, sw::CONTENT_TYPE)],
        sw::to_xml(envelope).unwrap_or_default(),
    )
        .into_response()
}

fn soap_fault(status: StatusCode, faultcode: &str, message: &str, code: &str) -> Response {
    xml_reply(status, &sw::fault(faultcode, message, Some(code)))
}

fn soap_result(record: &Record) -> sw::PaymentResult {
    let (state, failure_code, failure_reason) = match outcome(record) {
        None => (sw::State::Accepted, None, None),
        Some(ReportedStatus::Succeeded) => (sw::State::Succeeded, None, None),
        Some(ReportedStatus::Failed { code, reason }) => {
            (sw::State::Failed, Some(code.clone()), Some(reason.clone()))
        }
    };
    sw::PaymentResult {
        reference: record.order.reference.to_string(),
        state,
        provider_reference: Some(record.provider_reference.clone()),
        failure_code,
        failure_reason,
    }
}

pub async fn soap(State(engine): Shared, Path(raw_account): Path<String>, body: Bytes) -> Response {
    // Parsed without counting: a `GetStatus` is a status query, not a payment request.
    let Ok(account) = GatewayName::parse(&raw_account) else {
        return soap_fault(
            StatusCode::NOT_FOUND,
            "soap:Client",
            "no such account",
            "not_found",
        );
    };
    let envelope: sw::Envelope<sw::Operation> = match sw::from_xml(&body) {
        Ok(envelope) => envelope,
        Err(message) => {
            engine.count(account.as_str(), |c| &c.requests);
            engine.count(account.as_str(), |c| &c.bad_requests);
            return soap_fault(
                StatusCode::INTERNAL_SERVER_ERROR,
                "soap:Client",
                &message,
                "invalid_request",
            );
        }
    };
    if !matches!(envelope.body.content, sw::Operation::GetStatus(_)) {
        engine.count(account.as_str(), |c| &c.requests);
    }
    let authorized = envelope.header.as_ref().map(|h| h.auth.api_key.as_str())
        == Some(engine.settings.secret_key.expose());
    if !authorized {
        engine.count(account.as_str(), |c| &c.unauthorized);
        return soap_fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "soap:Client",
            "Invalid API key",
            "unauthorized",
        );
    }
    let (kind, payment) = match envelope.body.content {
        sw::Operation::Deposit(p) => (TransactionKind::Deposit, p),
        sw::Operation::Withdraw(p) => (TransactionKind::Withdrawal, p),
        sw::Operation::GetStatus(query) => {
            return match status_lookup(&engine, &account, &query.reference).await {
                Lookup::Outage => {
                    (StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response()
                }
                Lookup::Missing => {
                    let result = sw::PaymentResult {
                        reference: query.reference,
                        state: sw::State::NotFound,
                        provider_reference: None,
                        failure_code: None,
                        failure_reason: None,
                    };
                    xml_reply(
                        StatusCode::OK,
                        &sw::Envelope::new(None, sw::Reply::Status(result)),
                    )
                }
                Lookup::Found(record) => xml_reply(
                    StatusCode::OK,
                    &sw::Envelope::new(None, sw::Reply::Status(soap_result(&record))),
                ),
            };
        }
    };
    let order = match order(
        account.clone(),
        Protocol::Soap,
        kind,
        &payment.reference,
        payment.amount,
        &payment.currency,
        &payment.customer,
    ) {
        Ok(order) => order,
        Err(refusal) => {
            count_refusal(&engine, Some(&account), &refusal);
            let message = match refusal {
                Refusal::Invalid(m) => m,
                _ => "invalid".into(),
            };
            return soap_fault(
                StatusCode::INTERNAL_SERVER_ERROR,
                "soap:Client",
                &message,
                "invalid_request",
            );
        }
    };
    match engine.submit(order).await {
        Decision::Outage => {
            (StatusCode::SERVICE_UNAVAILABLE, "service unavailable").into_response()
        }
        Decision::ServerError => soap_fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "soap:Server",
            "Internal error",
            "server_error",
        ),
        Decision::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "slow down",
        )
            .into_response(),
        Decision::Hung => (StatusCode::GATEWAY_TIMEOUT, "upstream timeout").into_response(),
        Decision::Declined(_) => soap_fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "soap:Client",
            "Do not honor",
            "declined",
        ),
        Decision::ExecutedThenError(status) => bare_status(status),
        Decision::DuplicateRefused(status) => {
            soap_fault(status, "soap:Client", DUPLICATE_MESSAGE, DUPLICATE_CODE)
        }
        Decision::Conflict => soap_fault(
            StatusCode::INTERNAL_SERVER_ERROR,
            "soap:Client",
            "Reference reused",
            "duplicate_reference",
        ),
        Decision::Accepted(record) => {
            let result = soap_result(&record);
            let reply = match kind {
                TransactionKind::Deposit => sw::Reply::Deposit(result),
                TransactionKind::Withdrawal => sw::Reply::Withdraw(result),
            };
            xml_reply(StatusCode::OK, &sw::Envelope::new(None, reply))
        }
    }
}

// ---------------------------------------------------------------- protobuf

fn proto_reply(status: StatusCode, message: &impl Message) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, pw::CONTENT_TYPE)],
        message.encode_to_vec(),
    )
        .into_response()
}

fn proto_error(status: StatusCode, code: &str, message: &str) -> Response {
    proto_reply(
        status,
        &pw::ErrorResponse {
            code: code.into(),
            message: message.into(),
        },
    )
}

fn proto_result(record: &Record) -> pw::PaymentResponse {
    let (state, failure_code, failure_reason) = match outcome(record) {
        None => (pw::PaymentState::Accepted, String::new(), String::new()),
        Some(ReportedStatus::Succeeded) => {
            (pw::PaymentState::Succeeded, String::new(), String::new())
        }
        Some(ReportedStatus::Failed { code, reason }) => {
            (pw::PaymentState::Failed, code.clone(), reason.clone())
        }
    };
    pw::PaymentResponse {
        reference: record.order.reference.to_string(),
        provider_reference: record.provider_reference.clone(),
        state: state as i32,
        failure_code,
        failure_reason,
    }
}

pub async fn proto_submit(
    State(engine): Shared,
    Path(raw_account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut known = None;
    let parsed = (|| {
        let account = account(&engine, &raw_account)?;
        known = Some(account.clone());
        if !bearer_ok(&engine, &headers) {
            return Err(Refusal::Unauthorized);
        }
        let r = pw::PaymentRequest::decode(body.as_ref())
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        let kind = match pw::PaymentKind::try_from(r.kind) {
            Ok(pw::PaymentKind::Deposit) => TransactionKind::Deposit,
            Ok(pw::PaymentKind::Withdrawal) => TransactionKind::Withdrawal,
            _ => return Err(Refusal::Invalid(format!("unknown kind {}", r.kind))),
        };
        order(
            account,
            Protocol::Protobuf,
            kind,
            &r.reference,
            r.amount_minor,
            &r.currency,
            &r.customer,
        )
    })();
    let order = match parsed {
        Ok(order) => order,
        Err(refusal) => {
            count_refusal(&engine, known.as_ref(), &refusal);
            return match refusal {
                Refusal::NotFound => {
                    proto_error(StatusCode::NOT_FOUND, "not_found", "no such account")
                }
                Refusal::Unauthorized => {
                    proto_error(StatusCode::UNAUTHORIZED, "unauthorized", "Invalid key")
                }
                Refusal::Invalid(m) => proto_error(StatusCode::BAD_REQUEST, "invalid_request", &m),
            };
        }
    };
    match engine.submit(order).await {
        fault @ (Decision::Outage
        | Decision::ServerError
        | Decision::RateLimited
        | Decision::Hung) => transport_fault(&fault, proto_error),
        Decision::Declined(_) => {
            proto_error(StatusCode::PAYMENT_REQUIRED, "declined", "Do not honor")
        }
        Decision::ExecutedThenError(status) => bare_status(status),
        Decision::DuplicateRefused(status) => {
            proto_error(status, DUPLICATE_CODE, DUPLICATE_MESSAGE)
        }
        Decision::Conflict => proto_error(
            StatusCode::CONFLICT,
            "duplicate_reference",
            "Reference reused",
        ),
        Decision::Accepted(record) => proto_reply(StatusCode::OK, &proto_result(&record)),
    }
}

pub async fn proto_status(
    State(engine): Shared,
    Path((account, reference)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(account) = GatewayName::parse(&account) else {
        return proto_error(StatusCode::NOT_FOUND, "not_found", "no such account");
    };
    if !bearer_ok(&engine, &headers) {
        return proto_error(StatusCode::UNAUTHORIZED, "unauthorized", "Invalid key");
    }
    match status_lookup(&engine, &account, &reference).await {
        Lookup::Outage => proto_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        ),
        Lookup::Missing => proto_error(StatusCode::NOT_FOUND, "not_found", "Unknown reference"),
        Lookup::Found(record) => proto_reply(StatusCode::OK, &proto_result(&record)),
    }
}
