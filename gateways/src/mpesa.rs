//! Safaricom M-Pesa Daraja: M-Pesa Express (STK push) for deposits, B2C v3 for withdrawals.
//! Written from <https://developer.safaricom.co.ke/APIs> (Authorization, M-Pesa Express,
//! M-Pesa Express Query, B2C).
//!
//! - Auth (Authorization API): `GET {base}/oauth/v1/generate?grant_type=client_credentials`
//!   with HTTP Basic `consumer_key:consumer_secret` answers `{"access_token", "expires_in":
//!   "3599"}` (`expires_in` is a string of seconds). The token is cached and refreshed
//!   before it expires (60 s early, or half its life when that is shorter); a `401` on a
//!   call invalidates it and the call is made once more with a fresh token (a `401` means
//!   the request was refused before anything was processed). Failing to get a token is
//!   always `Retryable`: the payment request was never sent.
//! - Deposit = STK push, `POST {base}/mpesa/stkpush/v1/processrequest`: `Password` =
//!   base64(Shortcode + Passkey + Timestamp), `Timestamp` `YYYYMMDDHHmmss` in East Africa
//!   Time (UTC+3), `Amount` in **whole shillings** (KES only; a fractional amount is refused
//!   as `Permanent` before anything is sent), the customer reference as the MSISDN
//!   (`2547XXXXXXXX` or `2541XXXXXXXX`). `AccountReference` is a label of at most 12
//!   characters shown to the customer (`account_reference`, default `paygate`): it is NOT
//!   unique and identifies nothing. The answer's `CheckoutRequestID` is the provider
//!   reference.
//! - **No idempotency**: every STK push prompts the customer again, so
//!   [`PaymentGateway::idempotent_submit`] is `false` (after an ambiguous attempt the
//!   processor only asks the status).
//! - Withdrawal = B2C v3, `POST {base}/mpesa/b2c/v3/paymentrequest` with our transaction id
//!   as `OriginatorConversationID`; the answer's `ConversationID` is the provider reference.
//! - Callbacks are unsigned ([`CallbackAuth::PathToken`]). Each payment gets its own URL
//!   `{callback_base_url}/callbacks/{gateway}/{reference}/{token}`, where `reference` is
//!   `{transaction id}.{d|w|t}{amount in KES cents}` (`d`: the STK `CallBackURL`, `w`: the
//!   B2C `ResultURL`, `t`: the B2C `QueueTimeOutURL`) and `token =
//!   callback::path_token(webhook_secret, reference)`. The token authenticates the whole
//!   segment, so which URL was called, for which payment and amount, is known without
//!   believing the body: a failure callback (which carries no amount in Daraja) still
//!   reports the amount we asked for, and a queue timeout can never be mistaken for a
//!   failed payout by its body's shape. The body must match the segment's kind.
//! - STK callback `{"Body":{"stkCallback":{"MerchantRequestID","CheckoutRequestID",
//!   "ResultCode","ResultDesc","CallbackMetadata":{"Item":[{"Name":"Amount","Value":1.00},
//!   …]}}}}`: `ResultCode` 0 paid, 1032 cancelled by the customer, anything else failed. The
//!   amount is a JSON number that may carry decimals: read from its text, never as a float.
//!   Event id `CheckoutRequestID:ResultCode`.
//! - B2C result `{"Result":{"ResultType","ResultCode","ResultDesc","OriginatorConversationID",
//!   "ConversationID","TransactionID","ResultParameters":{"ResultParameter":[{"Key":
//!   "TransactionAmount","Value":…}, …]}}}`. Event id `ConversationID:ResultCode`.
//! - A B2C queue timeout (`QueueTimeOutURL`) means the request waited too long in M-Pesa's
//!   queue: the payout may still execute, so it is [`CallbackEvent::Ignored`], never a
//!   failure; the result (or reconciliation) decides the payout.
//! - Status: `POST {base}/mpesa/stkpushquery/v1/query` by `CheckoutRequestID`. Without a
//!   provider reference there is nothing to ask, and "not found" would be a lie (the push may
//!   have reached the customer): that is an error ("could not find out"). While the customer
//!   has not answered, Daraja answers `500` with `errorCode` `500.001.1001` "The transaction
//!   is being processed" (and `ResultCode` 4999 in some answers): `InProgress`. B2C has only
//!   the asynchronous Transaction Status API (its answer comes to a result URL), so an
//!   accepted payout's status is `Unsupported` (nothing to ask; its result callback is then
//!   believed on its secret path token for a success only, a failure waits for a person) and
//!   one without a `ConversationID` an error.
//! - Refunds (M-Pesa's Reversal API) are out of scope: the trait's default (unsupported).
//!
//! Connector keys (`[gateways.<name>]`, all strings): `consumer_key`, `shortcode`,
//! `passkey`, `callback_base_url` (paygate's public URL, e.g. `https://pay.example.com`),
//! `initiator_name`, `security_credential`; optional `b2c_party_a` (default `shortcode`),
//! `b2c_command_id` (default `BusinessPayment`), `account_reference` (≤ 12 characters,
//! default `paygate`), `transaction_desc`, `b2c_remarks`. The consumer secret is
//! `secret_key`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{FixedOffset, Utc};
use paygate_core::domain::{GatewayName, Money, Transaction, TransactionId, TransactionKind};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use crate::callback;
use crate::http;
use crate::registry::{GatewaySettings, RegistryError};
use crate::secret::Secret;
use crate::{
    CallbackAuth, CallbackError, CallbackEvent, CallbackOutcome, CallbackRequest, GatewayError,
    Parsed, PaymentGateway, ProviderCall, ProviderResponse, ProviderStatus, Reported,
    ReportedStatus, SubmitOutcome, SubmitStatus,
};

pub const CONTENT_TYPE: &str = "application/json";
const CALLBACK_HEADERS: &[&str] = &["content-type"];
const OAUTH_PATH: &str = "oauth/v1/generate?grant_type=client_credentials";
const STK_PUSH_PATH: &str = "mpesa/stkpush/v1/processrequest";
const STK_QUERY_PATH: &str = "mpesa/stkpushquery/v1/query";
const B2C_PATH: &str = "mpesa/b2c/v3/paymentrequest";
/// Daraja's "The transaction is being processed" (the STK query while the customer has
/// not answered).
const PROCESSING_CODE: &str = "500.001.1001";
/// STK `ResultCode` "Request cancelled by user".
const CANCELLED_BY_USER: i64 = 1032;
/// STK query `ResultCode` "The transaction is still under processing".
const STILL_PROCESSING: i64 = 4999;
/// East Africa Time, the zone of Daraja's `Timestamp`.
const EAT_SECONDS: i32 = 3 * 3600;
/// How early a cached token is replaced (at most half its life).
const REFRESH_EARLY: Duration = Duration::from_secs(60);

/// The connector-specific keys of `[gateways.<name>]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Extra {
    consumer_key: String,
    shortcode: String,
    passkey: String,
    callback_base_url: String,
    initiator_name: String,
    security_credential: String,
    #[serde(default)]
    b2c_party_a: Option<String>,
    #[serde(default)]
    b2c_command_id: Option<String>,
    #[serde(default)]
    account_reference: Option<String>,
    #[serde(default)]
    transaction_desc: Option<String>,
    #[serde(default)]
    b2c_remarks: Option<String>,
}

/// The checked connector settings.
#[derive(Debug)]
struct Config {
    consumer_key: String,
    shortcode: String,
    passkey: Secret,
    callback_base_url: Url,
    initiator_name: String,
    security_credential: Secret,
    b2c_party_a: String,
    b2c_command_id: String,
    account_reference: String,
    transaction_desc: String,
    b2c_remarks: String,
}

impl Config {
    fn parse(settings: &mut GatewaySettings) -> Result<Self, RegistryError> {
        let extra = std::mem::take(&mut settings.extra);
        let raw: Extra = serde_json::from_value(Value::Object(extra.into_iter().collect()))
            .map_err(|e| settings.field_error("extra", e.to_string()))?;
        let shortcode_ok =
            |s: &str| (5..=7).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        if !shortcode_ok(&raw.shortcode) {
            return Err(settings.field_error("shortcode", "must be 5 to 7 digits"));
        }
        let b2c_party_a = raw.b2c_party_a.unwrap_or_else(|| raw.shortcode.clone());
        if !shortcode_ok(&b2c_party_a) {
            return Err(settings.field_error("b2c_party_a", "must be 5 to 7 digits"));
        }
        let callback_base_url = Url::parse(raw.callback_base_url.trim_end_matches('/'))
            .map_err(|e| settings.field_error("callback_base_url", e.to_string()))?;
        if !matches!(callback_base_url.scheme(), "http" | "https")
            || callback_base_url.host().is_none()
        {
            return Err(settings.field_error("callback_base_url", "must be an http(s) URL"));
        }
        let account_reference = raw.account_reference.unwrap_or_else(|| "paygate".into());
        if account_reference.is_empty() || account_reference.chars().count() > 12 {
            return Err(settings.field_error("account_reference", "must be 1 to 12 characters"));
        }
        for (key, value) in [
            ("consumer_key", &raw.consumer_key),
            ("passkey", &raw.passkey),
            ("initiator_name", &raw.initiator_name),
            ("security_credential", &raw.security_credential),
        ] {
            if value.is_empty() {
                return Err(settings.field_error(key, "must not be empty"));
            }
        }
        Ok(Self {
            consumer_key: raw.consumer_key,
            shortcode: raw.shortcode,
            passkey: Secret::new(raw.passkey),
            callback_base_url,
            initiator_name: raw.initiator_name,
            security_credential: Secret::new(raw.security_credential),
            b2c_party_a,
            b2c_command_id: raw
                .b2c_command_id
                .unwrap_or_else(|| "BusinessPayment".into()),
            account_reference,
            transaction_desc: raw.transaction_desc.unwrap_or_else(|| "Payment".into()),
            b2c_remarks: raw.b2c_remarks.unwrap_or_else(|| "Payout".into()),
        })
    }
}

/// A bearer token and when to stop using it.
struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// The M-Pesa Daraja connector.
pub struct MpesaGateway {
    conn: http::Connection,
    config: Config,
    /// One token for all calls; the lock is held while fetching, so concurrent calls wait
    /// for one fetch instead of each asking for a token.
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for MpesaGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpesaGateway")
            .field("name", &self.conn.name)
            .field("base_url", &self.conn.base_url.as_str())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Which URL of ours the provider called (the kind letter of the path reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    /// The STK push `CallBackURL`.
    Stk,
    /// The B2C `ResultURL`.
    B2cResult,
    /// The B2C `QueueTimeOutURL`.
    B2cTimeout,
}

impl Hook {
    fn letter(self) -> char {
        match self {
            Self::Stk => 'd',
            Self::B2cResult => 'w',
            Self::B2cTimeout => 't',
        }
    }
}

/// `{transaction id}.{letter}{KES cents}`: the reference segment of a callback URL.
fn path_reference(id: TransactionId, hook: Hook, money: Money) -> String {
    format!("{id}.{}{}", hook.letter(), money.amount.minor_units())
}

fn parse_path_reference(reference: &str) -> Result<(TransactionId, Hook, Money), CallbackError> {
    let (id, rest) = reference
        .split_once('.')
        .ok_or_else(|| callback::malformed("callback path reference without a kind"))?;
    let mut chars = rest.chars();
    let hook = match chars.next() {
        Some('d') => Hook::Stk,
        Some('w') => Hook::B2cResult,
        Some('t') => Hook::B2cTimeout,
        _ => return Err(callback::malformed("unknown callback kind in the path")),
    };
    let cents: i64 = chars
        .as_str()
        .parse()
        .map_err(|_| callback::malformed("bad amount in the callback path"))?;
    Ok((
        callback::parse_reference(id)?,
        hook,
        callback::parse_money(cents, "KES")?,
    ))
}

/// Reads an M-Pesa amount (shillings, a JSON number or string that may carry up to two
/// decimals) as KES cents, from its decimal text: never through a float.
fn kes_cents(value: &Value) -> Option<i64> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    if whole.is_empty()
        || whole.len() > 15
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let cents: i64 = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<i64>().ok()?.checked_mul(10)?,
        _ => fraction.parse().ok()?,
    };
    whole.checked_mul(100)?.checked_add(cents)
}

/// A Daraja code that may come as a number or a numeric string.
fn code(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A valid Safaricom MSISDN in the international form Daraja wants.
fn msisdn(customer: &str) -> Option<&str> {
    let ok = customer.len() == 12
        && (customer.starts_with("2547") || customer.starts_with("2541"))
        && customer.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(customer)
}

fn permanent(code: &str, reason: impl Into<String>) -> GatewayError {
    GatewayError::declined(code.into(), reason.into())
}

fn ambiguous(reason: impl Into<String>) -> GatewayError {
    GatewayError::Ambiguous {
        reason: reason.into(),
    }
}

/// Whole shillings of a KES amount; anything else is refused before sending.
fn whole_shillings(money: Money) -> Result<i64, GatewayError> {
    if money.currency.code() != "KES" {
        return Err(permanent(
            "unsupported_currency",
            format!("M-Pesa pays KES only, not {}", money.currency.code()),
        ));
    }
    let cents = money.amount.minor_units();
    if cents % 100 != 0 {
        return Err(permanent(
            "invalid_amount",
            format!("M-Pesa takes whole shillings only, not {money}"),
        ));
    }
    Ok(cents / 100)
}

/// A Daraja `4xx` refusal: `{"requestId","errorCode","errorMessage"}`.
fn refusal(status: StatusCode, body: &[u8]) -> GatewayError {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => http::refusal(
            status,
            text(&v, "errorCode").map(str::to_owned),
            text(&v, "errorMessage")
                .map(str::to_owned)
                .unwrap_or_else(|| http::excerpt(body)),
        ),
        Err(_) => http::refusal(status, None, http::excerpt(body)),
    }
}

/// The synchronous answer to an STK push or a B2C request.
fn parse_submit(
    tx: &Transaction,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<SubmitOutcome, GatewayError> {
    if let Some(error) = http::classify_status(status, headers) {
        return Err(error);
    }
    if status == StatusCode::UNAUTHORIZED {
        // "Invalid Access Token": refused before anything was processed.
        return Err(GatewayError::Retryable {
            reason: format!("M-Pesa refused the access token: {}", http::excerpt(body)),
            retry_after: None,
        });
    }
    if !status.is_success() {
        return Err(refusal(status, body));
    }
    let answer: Value = serde_json::from_slice(body).map_err(|e| {
        ambiguous(format!(
            "unreadable success answer ({e}): {}",
            http::excerpt(body)
        ))
    })?;
    let response_code = match answer.get("ResponseCode") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(ambiguous("success answer without ResponseCode")),
    };
    if response_code != "0" {
        // Readable and not accepted: the provider refused the request.
        let reason = text(&answer, "ResponseDescription").unwrap_or("refused");
        return Err(permanent(&format!("mpesa_{response_code}"), reason));
    }
    let reference = match tx.kind {
        TransactionKind::Deposit => text(&answer, "CheckoutRequestID"),
        TransactionKind::Withdrawal => {
            let ours = tx.id.to_string();
            match text(&answer, "OriginatorConversationID") {
                Some(theirs) if theirs == ours => {}
                other => {
                    return Err(ambiguous(format!(
                        "answer names OriginatorConversationID {other:?}"
                    )))
                }
            }
            text(&answer, "ConversationID")
        }
    };
    let reference = reference
        .filter(|r| !r.trim().is_empty() && r.len() <= 256)
        .ok_or_else(|| ambiguous("accepted answer without the provider's id"))?;
    Ok(SubmitOutcome {
        provider_reference: reference.to_owned(),
        status: SubmitStatus::Accepted,
        money: None,
    })
}

/// The failure an M-Pesa result code stands for.
fn failure(result_code: i64, description: &str) -> ReportedStatus {
    let code = if result_code == CANCELLED_BY_USER {
        "cancelled".to_owned()
    } else {
        format!("mpesa_{result_code}")
    };
    ReportedStatus::Failed {
        code,
        reason: description.chars().take(300).collect(),
    }
}

/// The answer of an STK push query.
fn parse_stk_query(
    tx: &Transaction,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ProviderStatus, GatewayError> {
    let answer = serde_json::from_slice::<Value>(body).ok();
    let error_code = answer.as_ref().and_then(|a| text(a, "errorCode"));
    if status.is_server_error() && error_code == Some(PROCESSING_CODE) {
        return Ok(ProviderStatus::InProgress);
    }
    if let Some(error) = http::classify_status(status, headers) {
        return Err(error);
    }
    if !status.is_success() {
        // Could not find out (an unknown CheckoutRequestID is not "never executed": we
        // hold it because M-Pesa accepted the push).
        return Err(refusal(status, body));
    }
    let answer = answer
        .ok_or_else(|| ambiguous(format!("unreadable status answer: {}", http::excerpt(body))))?;
    let checkout = text(&answer, "CheckoutRequestID").unwrap_or_default();
    if Some(checkout) != tx.provider_reference.as_deref() {
        return Err(ambiguous(format!(
            "status answer names CheckoutRequestID {checkout:?}"
        )));
    }
    let result_code = code(answer.get("ResultCode"))
        .ok_or_else(|| ambiguous("status answer without ResultCode"))?;
    let reported = Reported {
        money: None,
        kind: Some(TransactionKind::Deposit),
        provider_reference: Some(checkout.to_owned()),
    };
    let status = match result_code {
        0 => ReportedStatus::Succeeded,
        STILL_PROCESSING => return Ok(ProviderStatus::InProgress),
        other => failure(other, text(&answer, "ResultDesc").unwrap_or("failed")),
    };
    Ok(ProviderStatus::Final { status, reported })
}

/// What can be said of a payout: B2C has no synchronous status query.
fn b2c_status(tx: &Transaction) -> Result<ProviderStatus, GatewayError> {
    match &tx.provider_reference {
        Some(_) => Ok(ProviderStatus::Unsupported),
        None => Err(ambiguous(
            "M-Pesa B2C has no synchronous status query and this payout has no ConversationID",
        )),
    }
}

impl MpesaGateway {
    pub fn new(mut settings: GatewaySettings) -> Result<Self, RegistryError> {
        let config = Config::parse(&mut settings)?;
        Ok(Self {
            conn: http::Connection::new(settings)?,
            config,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The registry's constructor.
    pub fn from_settings(
        settings: GatewaySettings,
    ) -> Result<Arc<dyn PaymentGateway>, RegistryError> {
        Ok(Arc::new(Self::new(settings)?))
    }

    /// `{callback_base_url}/callbacks/{gateway}/{reference}/{token}` for one hook.
    fn callback_url(&self, tx: &Transaction, hook: Hook) -> String {
        let reference = path_reference(tx.id, hook, tx.money);
        let token = callback::path_token(self.conn.webhook_secret.expose().as_bytes(), &reference);
        format!(
            "{}/callbacks/{}/{reference}/{token}",
            self.config.callback_base_url.as_str().trim_end_matches('/'),
            self.conn.name
        )
    }

    /// `(Timestamp, Password)` for now.
    fn password(&self) -> (String, String) {
        let now = Utc::now();
        let timestamp = match FixedOffset::east_opt(EAT_SECONDS) {
            Some(eat) => now.with_timezone(&eat).format("%Y%m%d%H%M%S").to_string(),
            None => now.format("%Y%m%d%H%M%S").to_string(),
        };
        let password = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}{}{timestamp}",
            self.config.shortcode,
            self.config.passkey.expose()
        ));
        (timestamp, password)
    }

    /// A valid bearer token, fetched when there is none (or it is due for refresh).
    async fn token(&self) -> Result<Secret, GatewayError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.token.clone());
        }
        let fresh = self.fetch_token().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets `used` (not a newer token another call fetched meanwhile).
    async fn invalidate(&self, used: &Secret) {
        let mut cached = self.token.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| t.token.expose() == used.expose())
        {
            *cached = None;
        }
    }

    /// Every failure here is `Retryable`: no payment request has been sent yet.
    async fn fetch_token(&self) -> Result<CachedToken, GatewayError> {
        let not_sent = |reason: String| GatewayError::Retryable {
            reason: format!("cannot get an M-Pesa access token: {reason}"),
            retry_after: None,
        };
        let request = self.conn.client.get(self.conn.url(OAUTH_PATH)?).basic_auth(
            &self.config.consumer_key,
            Some(self.conn.secret_key.expose()),
        );
        let started = Instant::now();
        let (status, _, body) = http::exchange(request)
            .await
            .map_err(|e| not_sent(e.to_string()))?;
        if !status.is_success() {
            return Err(not_sent(format!("{status}: {}", http::excerpt(&body))));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| not_sent(format!("unreadable answer: {e}")))?;
        let token = text(&answer, "access_token")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| not_sent("answer without access_token".into()))?;
        let seconds = code(answer.get("expires_in"))
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| not_sent("answer without a positive expires_in".into()))?;
        let life = Duration::from_secs(seconds);
        let early = REFRESH_EARLY.min(life / 2);
        Ok(CachedToken {
            token: Secret::new(token),
            refresh_at: started + life.saturating_sub(early),
        })
    }

    /// POSTs a JSON body with a bearer token; a `401` (Daraja's "Invalid Access Token")
    /// invalidates the token and the request is sent once more with a fresh one. A second
    /// `401` is `Retryable`: the provider refused it before processing anything.
    async fn post(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), GatewayError> {
        let url = self.conn.url(path)?;
        for attempt in 0..2 {
            let token = self.token().await?;
            let request = self
                .conn
                .client
                .post(url.clone())
                .bearer_auth(token.expose())
                .json(body);
            let (status, headers, answer) = http::exchange(request).await?;
            if status != StatusCode::UNAUTHORIZED {
                return Ok((status, headers, answer));
            }
            self.invalidate(&token).await;
            if attempt == 1 {
                break;
            }
        }
        Err(GatewayError::Retryable {
            reason: "M-Pesa refused the access token twice (401); nothing was processed".into(),
            retry_after: None,
        })
    }

    fn stk_push_body(&self, tx: &Transaction) -> Result<Value, GatewayError> {
        let amount = whole_shillings(tx.money)?;
        let phone = msisdn(tx.customer.as_str()).ok_or_else(|| {
            permanent(
                "invalid_customer",
                "the customer reference must be an M-Pesa number 2547XXXXXXXX",
            )
        })?;
        let (timestamp, password) = self.password();
        Ok(json!({
            "BusinessShortCode": self.config.shortcode,
            "Password": password,
            "Timestamp": timestamp,
            "TransactionType": "CustomerPayBillOnline",
            "Amount": amount,
            "PartyA": phone,
            "PartyB": self.config.shortcode,
            "PhoneNumber": phone,
            "CallBackURL": self.callback_url(tx, Hook::Stk),
            "AccountReference": self.config.account_reference,
            "TransactionDesc": self.config.transaction_desc,
        }))
    }

    fn b2c_body(&self, tx: &Transaction) -> Result<Value, GatewayError> {
        let amount = whole_shillings(tx.money)?;
        let phone = msisdn(tx.customer.as_str()).ok_or_else(|| {
            permanent(
                "invalid_customer",
                "the customer reference must be an M-Pesa number 2547XXXXXXXX",
            )
        })?;
        Ok(json!({
            "OriginatorConversationID": tx.id.to_string(),
            "InitiatorName": self.config.initiator_name,
            "SecurityCredential": self.config.security_credential.expose(),
            "CommandID": self.config.b2c_command_id,
            "Amount": amount,
            "PartyA": self.config.b2c_party_a,
            "PartyB": phone,
            "Remarks": self.config.b2c_remarks,
            "QueueTimeOutURL": self.callback_url(tx, Hook::B2cTimeout),
            "ResultURL": self.callback_url(tx, Hook::B2cResult),
            "Occasion": tx.id.to_string(),
        }))
    }

    fn stk_callback(
        &self,
        id: TransactionId,
        path_money: Money,
        body: &Value,
    ) -> Result<CallbackEvent, CallbackError> {
        let stk = body
            .get("Body")
            .and_then(|b| b.get("stkCallback"))
            .ok_or_else(|| callback::malformed("not an STK callback (no Body.stkCallback)"))?;
        let checkout = callback::non_empty(
            "CheckoutRequestID",
            text(stk, "CheckoutRequestID").unwrap_or_default(),
        )?;
        callback::non_empty(
            "MerchantRequestID",
            text(stk, "MerchantRequestID").unwrap_or_default(),
        )?;
        let result_code = code(stk.get("ResultCode"))
            .ok_or_else(|| callback::malformed("ResultCode must be a number"))?;
        let items = stk
            .get("CallbackMetadata")
            .and_then(|m| m.get("Item"))
            .and_then(Value::as_array);
        let item = |name: &str| {
            items?
                .iter()
                .find(|i| text(i, "Name") == Some(name))
                .and_then(|i| i.get("Value"))
        };
        let (status, money) = if result_code == 0 {
            let cents = item("Amount").and_then(kes_cents).ok_or_else(|| {
                callback::malformed("a paid STK callback needs a readable Amount")
            })?;
            if item("MpesaReceiptNumber").is_none() {
                return Err(callback::malformed(
                    "a paid STK callback needs MpesaReceiptNumber",
                ));
            }
            (
                ReportedStatus::Succeeded,
                callback::parse_money(cents, "KES")?,
            )
        } else {
            // Daraja sends no metadata on failure: the amount is the one we asked for
            // (authenticated by the path token).
            let desc = text(stk, "ResultDesc").unwrap_or("failed");
            (failure(result_code, desc), path_money)
        };
        Ok(CallbackEvent::Payment(CallbackOutcome {
            transaction_id: id,
            status,
            provider_event_id: format!("{checkout}:{result_code}"),
            provider_reference: checkout,
            money,
            kind: Some(TransactionKind::Deposit),
        }))
    }

    fn b2c_result(
        &self,
        id: TransactionId,
        path_money: Money,
        body: &Value,
    ) -> Result<CallbackEvent, CallbackError> {
        let result = body
            .get("Result")
            .ok_or_else(|| callback::malformed("not a B2C result (no Result)"))?;
        if text(result, "OriginatorConversationID") != Some(id.to_string().as_str()) {
            return Err(callback::malformed(
                "OriginatorConversationID does not name the payment of the URL",
            ));
        }
        let conversation = callback::non_empty(
            "ConversationID",
            text(result, "ConversationID").unwrap_or_default(),
        )?;
        let result_code = code(result.get("ResultCode"))
            .ok_or_else(|| callback::malformed("ResultCode must be a number"))?;
        let parameter = |key: &str| {
            result
                .get("ResultParameters")?
                .get("ResultParameter")?
                .as_array()?
                .iter()
                .find(|p| text(p, "Key") == Some(key))
                .and_then(|p| p.get("Value"))
        };
        let (status, money) = if result_code == 0 {
            let cents = parameter("TransactionAmount")
                .and_then(kes_cents)
                .ok_or_else(|| callback::malformed("a paid B2C result needs TransactionAmount"))?;
            (
                ReportedStatus::Succeeded,
                callback::parse_money(cents, "KES")?,
            )
        } else {
            let desc = text(result, "ResultDesc").unwrap_or("failed");
            (failure(result_code, desc), path_money)
        };
        Ok(CallbackEvent::Payment(CallbackOutcome {
            transaction_id: id,
            status,
            provider_event_id: format!("{conversation}:{result_code}"),
            provider_reference: conversation,
            money,
            kind: Some(TransactionKind::Withdrawal),
        }))
    }
}

#[async_trait]
impl PaymentGateway for MpesaGateway {
    fn name(&self) -> &GatewayName {
        &self.conn.name
    }

    async fn deposit(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        let body = self.stk_push_body(tx)?;
        let (status, headers, answer) = self.post(STK_PUSH_PATH, &body).await?;
        parse_submit(tx, status, &headers, &answer)
    }

    async fn withdraw(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        let body = self.b2c_body(tx)?;
        let (status, headers, answer) = self.post(B2C_PATH, &body).await?;
        parse_submit(tx, status, &headers, &answer)
    }

    fn callback_content_types(&self) -> &'static [&'static str] {
        &[CONTENT_TYPE]
    }

    fn callback_headers(&self) -> &'static [&'static str] {
        CALLBACK_HEADERS
    }

    fn callback_auth(&self) -> CallbackAuth {
        CallbackAuth::PathToken
    }

    fn idempotent_submit(&self) -> bool {
        false
    }

    /// Our id as sent (`OriginatorConversationID`), or a callback path's reference segment
    /// (`{id}.{d|w|t}{cents}`).
    fn decode_reference(&self, reference: &str) -> Result<TransactionId, CallbackError> {
        callback::parse_reference(reference.split_once('.').map_or(reference, |(id, _)| id))
    }

    fn handle_callback(&self, request: &CallbackRequest) -> Result<CallbackEvent, CallbackError> {
        // The token first: nothing else is looked at for a caller without it.
        let path = request.path.as_deref().ok_or_else(|| {
            CallbackError::Unauthenticated("no reference/token in the path".into())
        })?;
        let (reference, token) = path
            .split_once('/')
            .ok_or_else(|| CallbackError::Unauthenticated("no token in the path".into()))?;
        if !callback::verify_path_token(
            self.conn.webhook_secret.expose().as_bytes(),
            reference,
            token,
        ) {
            return Err(CallbackError::Unauthenticated("wrong path token".into()));
        }
        callback::check_envelope(
            request,
            self.conn.max_callback_bytes,
            self.callback_content_types(),
        )?;
        let (id, hook, money) = parse_path_reference(reference)?;
        let body: Value = serde_json::from_slice(&request.body).map_err(callback::malformed)?;
        if !body.is_object() {
            return Err(callback::malformed("callback body is not a JSON object"));
        }
        match hook {
            Hook::Stk => self.stk_callback(id, money, &body),
            Hook::B2cResult => self.b2c_result(id, money, &body),
            Hook::B2cTimeout => Ok(CallbackEvent::Ignored {
                event: "b2c.queue_timeout".into(),
            }),
        }
    }

    async fn status(&self, tx: &Transaction) -> Result<ProviderStatus, GatewayError> {
        if tx.kind == TransactionKind::Withdrawal {
            return b2c_status(tx);
        }
        let checkout = tx.provider_reference.as_deref().ok_or_else(|| {
            ambiguous(
                "no CheckoutRequestID to ask M-Pesa about: the push may have reached the customer",
            )
        })?;
        let (timestamp, password) = self.password();
        let body = json!({
            "BusinessShortCode": self.config.shortcode,
            "Password": password,
            "Timestamp": timestamp,
            "CheckoutRequestID": checkout,
        });
        let (status, headers, answer) = self.post(STK_QUERY_PATH, &body).await?;
        parse_stk_query(tx, status, &headers, &answer)
    }

    fn parse_response(
        &self,
        call: ProviderCall,
        tx: &Transaction,
        response: &ProviderResponse,
    ) -> Option<Result<Parsed, GatewayError>> {
        let status = match StatusCode::from_u16(response.status) {
            Ok(status) => status,
            Err(e) => return Some(Err(ambiguous(format!("bad status: {e}")))),
        };
        let headers = HeaderMap::new();
        Some(match call {
            ProviderCall::Deposit | ProviderCall::Withdraw => {
                parse_submit(tx, status, &headers, &response.body).map(Parsed::Submit)
            }
            ProviderCall::Status if tx.kind == TransactionKind::Withdrawal => {
                b2c_status(tx).map(Parsed::Status)
            }
            ProviderCall::Status => {
                parse_stk_query(tx, status, &headers, &response.body).map(Parsed::Status)
            }
            ProviderCall::Refund => Err(permanent(
                "refunds_unsupported",
                "M-Pesa reversals are not supported by this connector",
            )),
        })
    }
}

#[cfg(test)]
mod tests;
