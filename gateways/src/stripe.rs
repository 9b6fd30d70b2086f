//! Stripe (<https://docs.stripe.com/api>), kind `stripe`.
//!
//! - **Requests** are `application/x-www-form-urlencoded` with bracketed keys for nested
//!   fields (`metadata[paygate_reference]=…`), authenticated with
//!   `Authorization: Bearer <secret_key>` (<https://docs.stripe.com/api/authentication>).
//!   Every `POST` carries our reference as `Idempotency-Key`
//!   (<https://docs.stripe.com/api/idempotent_requests>): Stripe saves the first answer for a
//!   key and replays it, so a retry after an ambiguous attempt cannot pay twice.
//! - **Deposit** = a PaymentIntent created and confirmed in one call,
//!   `POST /v1/payment_intents` with `amount`, `currency` (lower case), `confirm=true`,
//!   `payment_method` (extra key `payment_method`, default `pm_card_visa`, Stripe's test
//!   card: a live deployment names a saved payment method), `return_url` (extra key; Stripe
//!   needs it to answer a 3-D Secure step with a `redirect_to_url` action) and
//!   `metadata[paygate_reference]` = our id
//!   (<https://docs.stripe.com/api/payment_intents/create>). Its `status`
//!   (<https://docs.stripe.com/payments/paymentintents/lifecycle>): `succeeded` → Succeeded,
//!   `processing` → Accepted, `requires_action` with `next_action.type = redirect_to_url` →
//!   RequiresAction (`next_action.redirect_to_url.url`), `requires_payment_method` after a
//!   confirm (the card was refused; `last_payment_error` says why) or `canceled` → Permanent.
//!   A `requires_action` of another type (`use_stripe_sdk`: no `return_url` configured) is
//!   Permanent too: nothing moved and the customer has no page to go to.
//! - **Withdrawal** = a Connect transfer to the customer's connected account,
//!   `POST /v1/transfers` with `amount`, `currency`, `destination` = the transaction's
//!   customer reference (which must therefore be the customer's `acct_…` id),
//!   `transfer_group` and `metadata[paygate_reference]` = our id
//!   (<https://docs.stripe.com/api/transfers/create>). Not a payout: a payout moves money to
//!   the platform's own bank. A transfer is synchronous: a `200` is a success.
//! - **Refund**: `POST /v1/refunds` with `payment_intent`, `amount`,
//!   `metadata[paygate_refund]` = our refund id and `metadata[paygate_reference]` = the
//!   payment's id; `Idempotency-Key` = the refund id. Its `status`: `pending` /
//!   `requires_action` → Pending, `succeeded`, `failed` / `canceled` → Failed
//!   (<https://docs.stripe.com/api/refunds/object>).
//! - **Status** (`requires_action` → AwaitingCustomer; `processing` → InProgress):
//!   `GET /v1/payment_intents/{pi_…}` or `GET /v1/transfers/{tr_…}` when we hold
//!   Stripe's id. When we do not (the answer was lost), a deposit is looked up with
//!   `GET /v1/payment_intents/search?query=metadata['paygate_reference']:'txn_…'`
//!   (<https://docs.stripe.com/search>), and a withdrawal with
//!   `GET /v1/transfers?transfer_group=txn_…`. Search is eventually consistent ("data is
//!   usually searchable in under a minute"): an empty result is a lagging "not found",
//!   which `status_not_found_after_ms` must outlast (set it to a few minutes for Stripe).
//! - **Errors** (<https://docs.stripe.com/api/errors>): `{"error": {"type", "code",
//!   "decline_code", "message"}}`. `402 card_error` → Permanent (`decline_code`, else `code`);
//!   `idempotency_error` (`400` reused key with other parameters, `409` concurrent use) → a
//!   duplicate reference, Ambiguous (Stripe holds the key, a status query tells what became
//!   of it); other `4xx` → Permanent; `429` → Retryable; every `5xx` → Ambiguous
//!   ([`http`] implements the table).
//! - **Amounts**: Stripe takes the smallest currency unit, with documented exceptions
//!   (<https://docs.stripe.com/currencies#zero-decimal>): zero-decimal currencies are whole
//!   units, ISK and UGX are sent as two-decimal amounts ending in `00`. [`stripe_exponent`]
//!   converts; an amount Stripe cannot represent is refused before sending.
//! - **Webhooks** (<https://docs.stripe.com/webhooks#verify-manually>): `Stripe-Signature:
//!   t=<unix>,v1=<hex>[,v1=…]`, each `v1` the hex HMAC-SHA256 of `"{t}.{raw body}"` keyed with
//!   the endpoint secret (`whsec_…` = `webhook_secret`); any matching `v1` is accepted (two
//!   during a secret roll), `t` must be within `callback_tolerance` (300 s, Stripe's library
//!   default) of receipt. The event `id` (`evt_…`) is the dedupe id.
//!   - `payment_intent.succeeded` / `.payment_failed` / `.canceled` → Payment (deposit), our
//!     id from `data.object.metadata.paygate_reference`.
//!   - `transfer.created` → Payment succeeded (withdrawal). `transfer.reversed` with the
//!     whole amount reversed → Payment **failed** (`transfer_reversed`): the money went back
//!     to the platform, the customer was not paid. It is reported, not swallowed: after a
//!     success the callback processor flags the contradiction for review instead of
//!     applying it, which is what a reversal after success needs (a person's decision). A
//!     partial reversal is Ignored (the payment stands).
//!   - `refund.created` / `refund.updated` / `refund.failed` (and the older
//!     `charge.refund.updated`) → Refund, from the Refund object's metadata.
//!     `charge.refunded` is Ignored: since API version 2022-11-15 the Charge it carries no
//!     longer lists its refunds, so it cannot say which refund; the `refund.*` events do.
//!   - An event about an object without our metadata, and every other type → Ignored.
//! - **Reference codec**: our id as is (Stripe metadata values and idempotency keys take up
//!   to 500 / 255 characters).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paygate_core::domain::{GatewayName, Money, RefundId, Transaction, TransactionKind};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::callback;
use crate::http;
use crate::registry::{GatewaySettings, RegistryError};
use crate::{
    CallbackError, CallbackEvent, CallbackOutcome, CallbackRequest, GatewayError, Parsed,
    PaymentGateway, ProviderCall, ProviderResponse, ProviderStatus, RefundOutcome, RefundReport,
    RefundRequest, RefundStatus, Reported, ReportedStatus, SubmitOutcome, SubmitStatus,
};

pub const CONTENT_TYPE: &str = "application/json";
pub const SIGNATURE_HEADER: &str = "stripe-signature";
/// The headers a webhook is verified with (see `PaymentGateway::callback_headers`).
pub const CALLBACK_HEADERS: &[&str] = &["content-type", SIGNATURE_HEADER];
const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The metadata key carrying our transaction id on every object we create.
pub const REFERENCE_KEY: &str = "paygate_reference";
/// The metadata key carrying our refund id on a refund.
pub const REFUND_KEY: &str = "paygate_refund";
/// Stripe's test card, when `payment_method` is not configured.
pub const DEFAULT_PAYMENT_METHOD: &str = "pm_card_visa";
/// Longest event type kept for the log of an ignored event.
const MAX_EVENT_NAME: usize = 100;

/// The connector-specific keys of a `[gateways.<name>]` table of kind `stripe`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extra {
    /// The PaymentMethod deposits are confirmed with (`pm_…`).
    #[serde(default = "default_payment_method")]
    payment_method: String,
    /// Where Stripe sends the customer back after a 3-D Secure step.
    #[serde(default)]
    return_url: Option<String>,
}

fn default_payment_method() -> String {
    DEFAULT_PAYMENT_METHOD.into()
}

// ------------------------------------------------------------------ wire model (read side)

/// `{"error": {…}}` (<https://docs.stripe.com/api/errors>).
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ApiError,
}

#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl ApiError {
    /// The most specific code: a card's `decline_code`, else `code`, else `type`.
    fn best_code(&self) -> Option<String> {
        self.decline_code
            .clone()
            .or_else(|| self.code.clone())
            .or_else(|| self.kind.clone())
    }
}

#[derive(Debug, Deserialize)]
struct PaymentIntent {
    id: String,
    amount: i64,
    currency: String,
    status: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    next_action: Option<NextAction>,
    #[serde(default)]
    last_payment_error: Option<ApiError>,
    #[serde(default)]
    cancellation_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NextAction {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    redirect_to_url: Option<RedirectToUrl>,
}

#[derive(Debug, Deserialize)]
struct RedirectToUrl {
    #[serde(default)]
    url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Transfer {
    id: String,
    amount: i64,
    currency: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    transfer_group: Option<String>,
    #[serde(default)]
    reversed: bool,
    #[serde(default)]
    amount_reversed: i64,
}

#[derive(Debug, Deserialize)]
struct Refund {
    id: String,
    amount: i64,
    currency: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    failure_reason: Option<String>,
}

/// A list or a search result: both carry `data`.
#[derive(Debug, Deserialize)]
struct List<T> {
    data: Vec<T>,
}

/// An event (<https://docs.stripe.com/api/events/object>).
#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(Debug, Deserialize)]
struct EventData {
    #[serde(default)]
    object: Option<Value>,
}

// ------------------------------------------------------------------ the connector

/// The Stripe connector.
pub struct StripeGateway {
    conn: http::Connection,
    payment_method: String,
    return_url: Option<String>,
}

impl std::fmt::Debug for StripeGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeGateway")
            .field("name", &self.conn.name)
            .field("base_url", &self.conn.base_url.as_str())
            .field("payment_method", &self.payment_method)
            .field("return_url", &self.return_url)
            .finish_non_exhaustive()
    }
}

impl StripeGateway {
    pub fn new(mut settings: GatewaySettings) -> Result<Self, RegistryError> {
        let raw = std::mem::take(&mut settings.extra);
        let extra: Extra = serde_json::from_value(Value::Object(raw.into_iter().collect()))
            .map_err(|e| settings.field_error("extra", e.to_string()))?;
        if !extra.payment_method.starts_with("pm_") {
            return Err(settings.field_error("payment_method", "expected a pm_… id"));
        }
        if let Some(url) = &extra.return_url {
            url::Url::parse(url).map_err(|e| settings.field_error("return_url", e.to_string()))?;
        }
        Ok(Self {
            conn: http::Connection::new(settings)?,
            payment_method: extra.payment_method,
            return_url: extra.return_url,
        })
    }

    /// The registry's constructor.
    pub fn from_settings(
        settings: GatewaySettings,
    ) -> Result<Arc<dyn PaymentGateway>, RegistryError> {
        Ok(Arc::new(Self::new(settings)?))
    }

    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, String)],
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), GatewayError> {
        let request = self
            .conn
            .client
            .post(self.conn.url(path)?)
            .bearer_auth(self.conn.secret_key.expose())
            .header(IDEMPOTENCY_HEADER, idempotency_key)
            .form(form);
        http::exchange(request).await
    }

    async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), GatewayError> {
        let request = self
            .conn
            .client
            .get(self.conn.url(path)?)
            .bearer_auth(self.conn.secret_key.expose())
            .query(query);
        http::exchange(request).await
    }
}

/// Which path a status query of `tx` takes.
enum StatusPath {
    ById,
    Search(Vec<(&'static str, String)>),
}

fn status_path(tx: &Transaction) -> (String, StatusPath) {
    let known = tx.provider_reference.as_deref().filter(|r| !r.is_empty());
    match (tx.kind, known) {
        (TransactionKind::Deposit, Some(id)) => {
            (format!("v1/payment_intents/{id}"), StatusPath::ById)
        }
        (TransactionKind::Deposit, None) => (
            "v1/payment_intents/search".into(),
            StatusPath::Search(vec![(
                "query",
                format!("metadata['{REFERENCE_KEY}']:'{}'", tx.id),
            )]),
        ),
        (TransactionKind::Withdrawal, Some(id)) => (format!("v1/transfers/{id}"), StatusPath::ById),
        (TransactionKind::Withdrawal, None) => (
            "v1/transfers".into(),
            StatusPath::Search(vec![("transfer_group", tx.id.to_string())]),
        ),
    }
}

/// The exponent Stripe's `amount` uses for `currency`
/// (<https://docs.stripe.com/currencies#special-cases>).
pub fn stripe_exponent(money: &Money) -> u32 {
    const ZERO_DECIMAL: &[&str] = &[
        "BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "VND", "VUV", "XAF",
        "XOF", "XPF",
    ];
    let code = money.currency.code();
    if ZERO_DECIMAL.contains(&code) {
        0
    } else if code == "ISK" || code == "UGX" {
        2
    } else {
        money.currency.exponent()
    }
}

/// Our amount in Stripe's unit, or `None` when Stripe cannot carry it exactly.
fn to_stripe_amount(money: &Money) -> Option<i64> {
    let ours = money.currency.exponent();
    let theirs = stripe_exponent(money);
    let units = money.amount.minor_units();
    if theirs >= ours {
        units.checked_mul(10_i64.checked_pow(theirs - ours)?)
    } else {
        let divisor = 10_i64.checked_pow(ours - theirs)?;
        (units % divisor == 0).then(|| units / divisor)
    }
}

/// Stripe's `amount`/`currency` as our money, or `None` when it is not representable.
fn from_stripe_amount(amount: i64, currency: &str) -> Option<Money> {
    let code = currency.to_ascii_uppercase();
    // Parse once at the currency's own exponent to learn the conversion, then convert.
    let probe = Money::from_parts(1, &code).ok()?;
    let ours = probe.currency.exponent();
    let theirs = stripe_exponent(&probe);
    let units = if theirs >= ours {
        let divisor = 10_i64.checked_pow(theirs - ours)?;
        if amount % divisor != 0 {
            return None;
        }
        amount / divisor
    } else {
        amount.checked_mul(10_i64.checked_pow(ours - theirs)?)?
    };
    Money::from_parts(units, &code).ok()
}

fn reported_money(amount: i64, currency: &str) -> Result<Money, GatewayError> {
    from_stripe_amount(amount, currency).ok_or_else(|| GatewayError::Ambiguous {
        reason: format!("answer names unreadable money {amount} {currency:?}"),
    })
}

fn callback_money(amount: i64, currency: &str) -> Result<Money, CallbackError> {
    from_stripe_amount(amount, currency)
        .ok_or_else(|| callback::malformed(format!("unreadable money {amount} {currency:?}")))
}

/// A non-2xx answer, classified by the trait's table.
fn refusal(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
    if let Some(error) = http::classify_status(status, headers) {
        return error;
    }
    let parsed = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let error = parsed.unwrap_or_default();
    let message = error.message.clone().map(http::provider_text);
    let message = message.unwrap_or_else(|| http::excerpt(body));
    // Stripe holds this idempotency key (reused with other parameters, or in flight):
    // the first request may have executed.
    if error.kind.as_deref() == Some("idempotency_error") || status == StatusCode::CONFLICT {
        return GatewayError::Ambiguous {
            reason: format!(
                "{} ({status}, idempotency_error): {message}",
                http::DUPLICATE_REFERENCE_REASON
            ),
        };
    }
    http::refusal(status, error.best_code(), message)
}

fn unreadable(what: &str, error: impl std::fmt::Display, body: &[u8]) -> GatewayError {
    GatewayError::Ambiguous {
        reason: format!("unreadable {what} ({error}): {}", http::excerpt(body)),
    }
}

/// Refuses an answer naming another payment than `tx`.
fn check_reference(
    metadata: &BTreeMap<String, String>,
    tx: &Transaction,
) -> Result<(), GatewayError> {
    match metadata.get(REFERENCE_KEY) {
        Some(reference) if *reference == tx.id.to_string() => Ok(()),
        other => Err(GatewayError::Ambiguous {
            reason: format!("answer names reference {other:?}, not {}", tx.id),
        }),
    }
}

fn intent_failure(intent: &PaymentIntent) -> (String, String) {
    if intent.status == "canceled" {
        return (
            "canceled".into(),
            intent
                .cancellation_reason
                .clone()
                .unwrap_or_else(|| "The PaymentIntent was canceled".into()),
        );
    }
    match &intent.last_payment_error {
        Some(error) => (
            error
                .best_code()
                .unwrap_or_else(|| callback::DEFAULT_FAILURE_CODE.into()),
            error
                .message
                .clone()
                .unwrap_or_else(|| "declined by Stripe".into()),
        ),
        None => (
            callback::DEFAULT_FAILURE_CODE.into(),
            format!("PaymentIntent {}", intent.status),
        ),
    }
}

fn parse_deposit(tx: &Transaction, body: &[u8]) -> Result<SubmitOutcome, GatewayError> {
    let intent: PaymentIntent =
        serde_json::from_slice(body).map_err(|e| unreadable("PaymentIntent", e, body))?;
    check_reference(&intent.metadata, tx)?;
    let money = Some(reported_money(intent.amount, &intent.currency)?);
    let status = match intent.status.as_str() {
        "succeeded" => SubmitStatus::Succeeded,
        "processing" => SubmitStatus::Accepted,
        "requires_action" => {
            let url = intent
                .next_action
                .as_ref()
                .filter(|a| a.kind == "redirect_to_url")
                .and_then(|a| a.redirect_to_url.as_ref())
                .and_then(|r| r.url.clone());
            match url {
                Some(url) => SubmitStatus::RequiresAction {
                    url: http::redirect_url(&url)?,
                },
                None => {
                    return Err(GatewayError::Permanent {
                        code: "authentication_unsupported".into(),
                        reason: format!(
                            "the customer must act ({:?}) but no redirect was given; configure return_url",
                            intent.next_action.as_ref().map(|a| a.kind.as_str())
                        ),
                    })
                }
            }
        }
        "requires_payment_method" | "canceled" => {
            let (code, reason) = intent_failure(&intent);
            return Err(GatewayError::declined(code, reason));
        }
        other => {
            return Err(GatewayError::Ambiguous {
                reason: format!("PaymentIntent {} in unexpected status {other:?}", intent.id),
            })
        }
    };
    Ok(SubmitOutcome {
        provider_reference: intent.id,
        status,
        money,
    })
}

fn parse_withdrawal(tx: &Transaction, body: &[u8]) -> Result<SubmitOutcome, GatewayError> {
    let transfer: Transfer =
        serde_json::from_slice(body).map_err(|e| unreadable("Transfer", e, body))?;
    check_reference(&transfer.metadata, tx)?;
    if transfer.reversed {
        return Err(GatewayError::Ambiguous {
            reason: format!("transfer {} is already reversed", transfer.id),
        });
    }
    Ok(SubmitOutcome {
        money: Some(reported_money(transfer.amount, &transfer.currency)?),
        provider_reference: transfer.id,
        status: SubmitStatus::Succeeded,
    })
}

fn intent_status(tx: &Transaction, intent: PaymentIntent) -> Result<ProviderStatus, GatewayError> {
    check_reference(&intent.metadata, tx)?;
    let status = match intent.status.as_str() {
        "succeeded" => ReportedStatus::Succeeded,
        "requires_payment_method" | "canceled" => {
            let (code, reason) = intent_failure(&intent);
            ReportedStatus::Failed { code, reason }
        }
        // The customer has not finished 3-D Secure: nothing has moved.
        "requires_action" => return Ok(ProviderStatus::AwaitingCustomer),
        _ => return Ok(ProviderStatus::InProgress),
    };
    Ok(ProviderStatus::Final {
        status,
        reported: Reported {
            money: Some(reported_money(intent.amount, &intent.currency)?),
            kind: Some(TransactionKind::Deposit),
            provider_reference: Some(intent.id),
        },
    })
}

/// Whether a transfer was reversed in full: the customer kept nothing.
fn fully_reversed(transfer: &Transfer) -> bool {
    transfer.reversed || (transfer.amount > 0 && transfer.amount_reversed >= transfer.amount)
}

fn transfer_status(tx: &Transaction, transfer: Transfer) -> Result<ProviderStatus, GatewayError> {
    check_reference(&transfer.metadata, tx)?;
    let status = if fully_reversed(&transfer) {
        ReportedStatus::Failed {
            code: "transfer_reversed".into(),
            reason: "the transfer was reversed".into(),
        }
    } else {
        ReportedStatus::Succeeded
    };
    Ok(ProviderStatus::Final {
        status,
        reported: Reported {
            money: Some(reported_money(transfer.amount, &transfer.currency)?),
            kind: Some(TransactionKind::Withdrawal),
            provider_reference: Some(transfer.id),
        },
    })
}

fn parse_status(
    tx: &Transaction,
    by_id: bool,
    body: &[u8],
) -> Result<ProviderStatus, GatewayError> {
    match (tx.kind, by_id) {
        (TransactionKind::Deposit, true) => intent_status(
            tx,
            serde_json::from_slice(body).map_err(|e| unreadable("PaymentIntent", e, body))?,
        ),
        (TransactionKind::Withdrawal, true) => transfer_status(
            tx,
            serde_json::from_slice(body).map_err(|e| unreadable("Transfer", e, body))?,
        ),
        (TransactionKind::Deposit, false) => {
            let list: List<PaymentIntent> =
                serde_json::from_slice(body).map_err(|e| unreadable("search result", e, body))?;
            match pick(list.data, |i| &i.metadata, tx)? {
                Some(intent) => intent_status(tx, intent),
                None => Ok(ProviderStatus::NotFound),
            }
        }
        (TransactionKind::Withdrawal, false) => {
            let list: List<Transfer> =
                serde_json::from_slice(body).map_err(|e| unreadable("transfer list", e, body))?;
            match pick(list.data, |t| &t.metadata, tx)? {
                Some(transfer) => transfer_status(tx, transfer),
                None => Ok(ProviderStatus::NotFound),
            }
        }
    }
}

/// The one object of a lookup; two objects for one reference cannot be told apart safely.
fn pick<T>(
    items: Vec<T>,
    metadata: fn(&T) -> &BTreeMap<String, String>,
    tx: &Transaction,
) -> Result<Option<T>, GatewayError> {
    let id = tx.id.to_string();
    let mut ours: Vec<T> = items
        .into_iter()
        .filter(|item| metadata(item).get(REFERENCE_KEY) == Some(&id))
        .collect();
    match ours.len() {
        0 | 1 => Ok(ours.pop()),
        n => Err(GatewayError::Ambiguous {
            reason: format!("{n} Stripe objects carry reference {id}"),
        }),
    }
}

fn parse_refund(
    tx: &Transaction,
    refund_id: Option<&RefundId>,
    body: &[u8],
) -> Result<RefundOutcome, GatewayError> {
    let refund: Refund = serde_json::from_slice(body).map_err(|e| unreadable("Refund", e, body))?;
    if let Some(reference) = refund.metadata.get(REFERENCE_KEY) {
        if *reference != tx.id.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("refund answer names payment {reference:?}"),
            });
        }
    }
    if let (Some(expected), Some(echoed)) = (refund_id, refund.metadata.get(REFUND_KEY)) {
        if *echoed != expected.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("refund answer names refund {echoed:?}"),
            });
        }
    }
    // Checked for readability; the amount itself is the processor's to compare.
    reported_money(refund.amount, &refund.currency)?;
    Ok(RefundOutcome {
        status: refund_status(&refund),
        provider_reference: refund.id,
    })
}

fn refund_status(refund: &Refund) -> RefundStatus {
    match refund.status.as_deref() {
        Some("succeeded") => RefundStatus::Succeeded,
        Some(status @ ("failed" | "canceled")) => RefundStatus::Failed {
            code: refund
                .failure_reason
                .clone()
                .unwrap_or_else(|| status.to_owned()),
            reason: format!("refund {status}"),
        },
        _ => RefundStatus::Pending,
    }
}

/// Reads one answer of `call` (the live path and the fixtures both come here).
fn interpret(
    call: ProviderCall,
    tx: &Transaction,
    refund_id: Option<&RefundId>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Parsed, GatewayError> {
    if call == ProviderCall::Status && status == StatusCode::NOT_FOUND {
        return Ok(Parsed::Status(ProviderStatus::NotFound));
    }
    if !status.is_success() {
        return Err(refusal(status, headers, body));
    }
    match call {
        ProviderCall::Deposit => parse_deposit(tx, body).map(Parsed::Submit),
        ProviderCall::Withdraw => parse_withdrawal(tx, body).map(Parsed::Submit),
        ProviderCall::Status => {
            let (_, path) = status_path(tx);
            parse_status(tx, matches!(path, StatusPath::ById), body).map(Parsed::Status)
        }
        ProviderCall::Refund => parse_refund(tx, refund_id, body).map(Parsed::Refund),
    }
}

fn unexpected(parsed: Parsed) -> GatewayError {
    GatewayError::Ambiguous {
        reason: format!("internal: unexpected parse {parsed:?}"),
    }
}

fn amount_field(money: &Money) -> Result<String, GatewayError> {
    to_stripe_amount(money)
        .map(|a| a.to_string())
        .ok_or_else(|| GatewayError::Permanent {
            code: "amount_not_representable".into(),
            reason: format!("Stripe cannot carry {money} exactly"),
        })
}

fn currency_field(money: &Money) -> String {
    money.currency.code().to_ascii_lowercase()
}

#[async_trait]
impl PaymentGateway for StripeGateway {
    fn name(&self) -> &GatewayName {
        &self.conn.name
    }

    async fn deposit(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        let reference = self.encode_reference(tx.id);
        let mut form = vec![
            ("amount", amount_field(&tx.money)?),
            ("currency", currency_field(&tx.money)),
            ("confirm", "true".into()),
            ("payment_method", self.payment_method.clone()),
            ("metadata[paygate_reference]", reference.clone()),
        ];
        if let Some(url) = &self.return_url {
            form.push(("return_url", url.clone()));
        }
        let (status, headers, body) = self.post("v1/payment_intents", &reference, &form).await?;
        match interpret(ProviderCall::Deposit, tx, None, status, &headers, &body)? {
            Parsed::Submit(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn withdraw(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        let reference = self.encode_reference(tx.id);
        let form = vec![
            ("amount", amount_field(&tx.money)?),
            ("currency", currency_field(&tx.money)),
            ("destination", tx.customer.as_str().to_owned()),
            ("transfer_group", reference.clone()),
            ("metadata[paygate_reference]", reference.clone()),
        ];
        let (status, headers, body) = self.post("v1/transfers", &reference, &form).await?;
        match interpret(ProviderCall::Withdraw, tx, None, status, &headers, &body)? {
            Parsed::Submit(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    fn callback_content_types(&self) -> &'static [&'static str] {
        &[CONTENT_TYPE]
    }

    fn callback_headers(&self) -> &'static [&'static str] {
        CALLBACK_HEADERS
    }

    fn handle_callback(&self, request: &CallbackRequest) -> Result<CallbackEvent, CallbackError> {
        callback::check_envelope(
            request,
            self.conn.max_callback_bytes,
            self.callback_content_types(),
        )?;
        let signed_at = verify(self.conn.webhook_secret.expose().as_bytes(), request)?;
        callback::check_fresh(signed_at, request.received_at, self.conn.callback_tolerance)?;
        let event: Event = serde_json::from_slice(&request.body).map_err(callback::malformed)?;
        let event_id = callback::non_empty("id", &event.id)?;
        read_event(self, event, event_id)
    }

    fn parse_response(
        &self,
        call: ProviderCall,
        transaction: &Transaction,
        response: &ProviderResponse,
    ) -> Option<Result<Parsed, GatewayError>> {
        let status = match StatusCode::from_u16(response.status) {
            Ok(status) => status,
            Err(e) => {
                return Some(Err(GatewayError::Ambiguous {
                    reason: format!("bad status: {e}"),
                }))
            }
        };
        Some(interpret(
            call,
            transaction,
            None,
            status,
            &HeaderMap::new(),
            &response.body,
        ))
    }

    async fn refund(
        &self,
        tx: &Transaction,
        refund: &RefundRequest,
    ) -> Result<RefundOutcome, GatewayError> {
        let Some(intent) = tx.provider_reference.as_deref().filter(|r| !r.is_empty()) else {
            return Err(GatewayError::Permanent {
                code: "no_provider_reference".into(),
                reason: format!("{} has no Stripe PaymentIntent id to refund", tx.id),
            });
        };
        if tx.kind != TransactionKind::Deposit {
            return Err(GatewayError::Permanent {
                code: "not_refundable".into(),
                reason: "only deposits (PaymentIntents) are refunded".into(),
            });
        }
        let key = refund.id.to_string();
        let form = vec![
            ("payment_intent", intent.to_owned()),
            ("amount", amount_field(&refund.money)?),
            ("metadata[paygate_refund]", key.clone()),
            ("metadata[paygate_reference]", self.encode_reference(tx.id)),
        ];
        let (status, headers, body) = self.post("v1/refunds", &key, &form).await?;
        match interpret(
            ProviderCall::Refund,
            tx,
            Some(&refund.id),
            status,
            &headers,
            &body,
        )? {
            Parsed::Refund(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn status(&self, tx: &Transaction) -> Result<ProviderStatus, GatewayError> {
        let (path, how) = status_path(tx);
        let query = match how {
            StatusPath::ById => Vec::new(),
            StatusPath::Search(query) => query,
        };
        let (status, headers, body) = self.get(&path, &query).await?;
        match interpret(ProviderCall::Status, tx, None, status, &headers, &body)? {
            Parsed::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }
}

/// Checks `Stripe-Signature` and returns its signed timestamp.
fn verify(secret: &[u8], request: &CallbackRequest) -> Result<DateTime<Utc>, CallbackError> {
    let header = callback::required_header(request, SIGNATURE_HEADER)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = value.parse::<i64>().ok(),
            "v1" => signatures.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let Some(t) = timestamp else {
        return Err(CallbackError::Unauthenticated(
            "Stripe-Signature has no timestamp".into(),
        ));
    };
    if signatures.is_empty() {
        return Err(CallbackError::Unauthenticated(
            "Stripe-Signature has no v1 signature".into(),
        ));
    }
    let prefix = format!("{t}.");
    let parts: [&[u8]; 2] = [prefix.as_bytes(), &request.body];
    if !signatures
        .iter()
        .any(|tag| callback::verify_sha256(secret, &parts, tag).is_ok())
    {
        return Err(CallbackError::Unauthenticated("signature mismatch".into()));
    }
    DateTime::from_timestamp(t, 0)
        .ok_or_else(|| CallbackError::Unauthenticated(format!("timestamp {t} out of range")))
}

fn ignored(kind: &str) -> CallbackEvent {
    CallbackEvent::Ignored {
        event: kind.chars().take(MAX_EVENT_NAME).collect(),
    }
}

/// `data.object` as `T`, checking its `object` name.
fn object<T: serde::de::DeserializeOwned>(
    data: Option<EventData>,
    name: &str,
) -> Result<T, CallbackError> {
    let object = data
        .and_then(|d| d.object)
        .ok_or_else(|| callback::malformed("event without data.object"))?;
    match object.get("object").and_then(Value::as_str) {
        Some(found) if found == name => {}
        other => {
            return Err(callback::malformed(format!(
                "data.object is {other:?}, expected {name:?}"
            )))
        }
    }
    serde_json::from_value(object).map_err(callback::malformed)
}

fn read_event(
    gateway: &StripeGateway,
    event: Event,
    event_id: String,
) -> Result<CallbackEvent, CallbackError> {
    let kind = event.kind.as_str();
    match kind {
        "payment_intent.succeeded"
        | "payment_intent.payment_failed"
        | "payment_intent.canceled" => {
            let intent: PaymentIntent = object(event.data, "payment_intent")?;
            let Some(reference) = intent.metadata.get(REFERENCE_KEY) else {
                return Ok(ignored(kind));
            };
            let status = match (kind, intent.status.as_str()) {
                ("payment_intent.succeeded", "succeeded") => ReportedStatus::Succeeded,
                ("payment_intent.payment_failed", _) | ("payment_intent.canceled", "canceled") => {
                    let (code, reason) = intent_failure(&intent);
                    ReportedStatus::Failed { code, reason }
                }
                (_, status) => {
                    return Err(callback::malformed(format!(
                        "{kind} for a PaymentIntent in status {status:?}"
                    )))
                }
            };
            Ok(CallbackEvent::Payment(CallbackOutcome {
                transaction_id: gateway.decode_reference(reference)?,
                status,
                provider_reference: callback::non_empty("data.object.id", &intent.id)?,
                provider_event_id: event_id,
                money: callback_money(intent.amount, &intent.currency)?,
                kind: Some(TransactionKind::Deposit),
            }))
        }
        "transfer.created" | "transfer.reversed" => {
            let transfer: Transfer = object(event.data, "transfer")?;
            let Some(reference) = transfer
                .metadata
                .get(REFERENCE_KEY)
                .or(transfer.transfer_group.as_ref())
                .filter(|r| r.starts_with("txn_"))
            else {
                return Ok(ignored(kind));
            };
            let status = match kind {
                "transfer.created" if !transfer.reversed => ReportedStatus::Succeeded,
                "transfer.reversed" if fully_reversed(&transfer) => ReportedStatus::Failed {
                    code: "transfer_reversed".into(),
                    reason: "the transfer was reversed in full".into(),
                },
                // A partial reversal leaves the payment standing.
                _ => return Ok(ignored(kind)),
            };
            Ok(CallbackEvent::Payment(CallbackOutcome {
                transaction_id: gateway.decode_reference(reference)?,
                status,
                provider_reference: callback::non_empty("data.object.id", &transfer.id)?,
                provider_event_id: event_id,
                money: callback_money(transfer.amount, &transfer.currency)?,
                kind: Some(TransactionKind::Withdrawal),
            }))
        }
        "refund.created" | "refund.updated" | "refund.failed" | "charge.refund.updated" => {
            let refund: Refund = object(event.data, "refund")?;
            let Some(reference) = refund.metadata.get(REFERENCE_KEY) else {
                return Ok(ignored(kind));
            };
            let refund_id = match refund.metadata.get(REFUND_KEY) {
                Some(id) => Some(RefundId::parse(id).map_err(callback::malformed)?),
                None => None,
            };
            Ok(CallbackEvent::Refund(RefundReport {
                transaction_id: gateway.decode_reference(reference)?,
                refund_id,
                status: refund_status(&refund),
                provider_reference: callback::non_empty("data.object.id", &refund.id)?,
                provider_event_id: event_id,
                money: callback_money(refund.amount, &refund.currency)?,
            }))
        }
        other => Ok(ignored(other)),
    }
}

/// The `Stripe-Signature` value for `body` signed at `t` (tests and fixtures).
pub fn signature_header(webhook_secret: &[u8], t: i64, body: &[u8]) -> String {
    let tag = callback::hmac_sha256(webhook_secret, &[format!("{t}.").as_bytes(), body]);
    format!("t={t},v1={}", hex::encode(tag))
}

#[cfg(test)]
mod tests;
