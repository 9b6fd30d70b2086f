//! Paystack (<https://paystack.com/docs/api/>), written from its public API reference and
//! its documented sample bodies (`PaystackOSS/openapi`, `PaystackOSS/doc-code-snippets`).
//!
//! - **Auth**: `Authorization: Bearer <secret_key>` on every call
//!   (<https://paystack.com/docs/api/#authentication>). Amounts are integers in the
//!   currency's subunit (kobo, pesewas, cents): our minor units, never floats.
//! - **Reference codec**: a Paystack transaction reference may hold only letters, digits,
//!   `-`, `.` and `=` (`TransactionInitialize.reference` in the OpenAPI spec), and a transfer
//!   reference only lower-case letters, digits, `-` and `_`. Our `txn_<32 hex>` is sent as
//!   `txn-<32 hex>`, which fits both; [`decode`] is its exact inverse.
//! - **Deposit** = `POST /transaction/initialize` `{email, amount, currency, reference,
//!   callback_url?}` → `{"status": true, "data": {"authorization_url", "access_code",
//!   "reference"}}`: the customer pays on Paystack's hosted checkout, so the answer is
//!   [`SubmitStatus::RequiresAction`] with the `authorization_url`. Nothing has moved yet.
//!   The provider reference we record is our own (encoded) reference: Paystack's numeric
//!   transaction id exists only once the customer pays, and every later report (webhook,
//!   verify) carries the reference, so one value identifies the payment everywhere.
//! - **Customer email**: Paystack requires one and paygate holds only an opaque customer
//!   reference. A reference that already is an e-mail address is sent as is; any other
//!   becomes the placeholder `<reference>@<customer_email_domain>` (the reference itself
//!   when it is a safe local part, else `c` + 32 hex digits of its SHA-256). The domain is
//!   the extra key `customer_email_domain`, default `example.com` (RFC 2606: never
//!   delivers, so Paystack's receipts go nowhere).
//! - **Withdrawal** = `POST /transferrecipient` `{type, name, account_number, bank_code,
//!   currency}` then `POST /transfer` `{source: "balance", amount, recipient, reference,
//!   reason, currency}`. **Limitation**: a payout needs the customer's bank details, which
//!   paygate does not hold yet; the recipient `type` and `bank_code` come from the extra
//!   keys `recipient_type` (default `nuban`) and `bank_code`, and the customer reference is
//!   the `account_number` and `name`. Without `bank_code` withdrawals are refused
//!   (`Permanent`, `not_configured`) before any call. Creating a recipient moves no money
//!   (and Paystack returns the existing recipient for a known account number), so any
//!   non-permanent failure of that first step is `Retryable`: the transfer itself was never
//!   sent. The transfer answers `data.status` `pending|received|processing|queued|otp`
//!   (accepted), `success`, or `failed|reversed|rejected|blocked|abandoned` (refused).
//!   `otp` means the integration asks for an OTP per transfer (disable it for API payouts):
//!   accepted, never failed, because the transfer can still be finalised.
//! - **Status** = `GET /transaction/verify/{reference}` or `GET /transfer/verify/{reference}`:
//!   `success` → succeeded; `failed|reversed` → failed; `abandoned` (checkout opened, not
//!   finished) → awaiting the customer; `ongoing|pending|processing|queued|received|otp` → in
//!   progress; a `404`, or the documented
//!   `Transaction reference not found` / `Transfer not found` message, → not found.
//! - **Refund** = `POST /refund` `{transaction: reference, amount, currency, merchant_note}`
//!   → `data.status` `pending|processing|needs-attention` (pending), `processed`
//!   (succeeded), `failed`. Paystack takes no idempotency key for refunds: our refund id
//!   travels in `merchant_note` for people, and Paystack refuses refunding more than is
//!   left, which bounds what a resubmission can do.
//! - **Errors**: `4xx` bodies are `{"status": false, "message", "type"?, "code"?}`; Paystack's
//!   `duplicate_reference` code means it holds the reference (ambiguous, [`http::refusal`]).
//! - **Webhooks** (<https://paystack.com/docs/payments/webhooks/>): `x-paystack-signature` =
//!   hex HMAC-SHA512 of the raw body keyed with the **secret key** (Paystack has no
//!   separate webhook secret, so `settings.secret_key` verifies; `webhook_secret` is unused).
//!   Bodies are `{"event", "data"}` with no event id and no timestamp: the dedupe id is
//!   `"{event}:{data.id}"` (`data.id` is Paystack's integer id), and there is no freshness
//!   check to make (a replay is caught by that dedupe id). `charge.success` settles a
//!   deposit, `transfer.success|failed|reversed` a withdrawal, `refund.processed|failed` a
//!   refund; every other event (subscriptions, disputes, customer identification, refund
//!   progress), and a charge or transfer whose reference is not one of ours (a payment page,
//!   a subscription renewal), is [`CallbackEvent::Ignored`].

use std::sync::Arc;

use async_trait::async_trait;
use paygate_core::domain::{GatewayName, Money, Transaction, TransactionId, TransactionKind};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::callback;
use crate::http;
use crate::registry::{GatewaySettings, RegistryError};
use crate::{
    CallbackError, CallbackEvent, CallbackOutcome, CallbackRequest, GatewayError, Parsed,
    PaymentGateway, ProviderCall, ProviderResponse, ProviderStatus, RefundOutcome, RefundReport,
    RefundRequest, RefundStatus, Reported, ReportedStatus, SubmitOutcome, SubmitStatus,
};

/// Paystack's request and answer shapes, as its API reference documents them (only the
/// fields paygate reads; everything else in an answer is ignored).
mod wire {
    use serde::{Deserialize, Serialize};

    pub const CONTENT_TYPE: &str = "application/json";
    pub const SIGNATURE_HEADER: &str = "x-paystack-signature";
    pub const CALLBACK_HEADERS: &[&str] = &["content-type", SIGNATURE_HEADER];
    pub const INITIALIZE_PATH: &str = "transaction/initialize";
    pub const VERIFY_PATH: &str = "transaction/verify/";
    pub const RECIPIENT_PATH: &str = "transferrecipient";
    pub const TRANSFER_PATH: &str = "transfer";
    pub const TRANSFER_VERIFY_PATH: &str = "transfer/verify/";
    pub const REFUND_PATH: &str = "refund";

    #[derive(Debug, Serialize)]
    pub struct InitializeRequest<'a> {
        pub email: &'a str,
        pub amount: i64,
        pub currency: &'a str,
        pub reference: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub callback_url: Option<&'a str>,
    }

    #[derive(Debug, Serialize)]
    pub struct RecipientRequest<'a> {
        #[serde(rename = "type")]
        pub kind: &'a str,
        pub name: &'a str,
        pub account_number: &'a str,
        pub bank_code: &'a str,
        pub currency: &'a str,
    }

    #[derive(Debug, Serialize)]
    pub struct TransferRequest<'a> {
        pub source: &'a str,
        pub amount: i64,
        pub recipient: &'a str,
        pub reference: &'a str,
        pub reason: &'a str,
        pub currency: &'a str,
    }

    #[derive(Debug, Serialize)]
    pub struct RefundRequest<'a> {
        pub transaction: &'a str,
        pub amount: i64,
        pub currency: &'a str,
        pub merchant_note: &'a str,
    }

    /// Every answer's envelope.
    #[derive(Debug, Deserialize)]
    pub struct Envelope<T> {
        pub status: bool,
        #[serde(default)]
        pub message: String,
        pub data: Option<T>,
    }

    /// A refusal (`4xx`): `{"status": false, "message", "type"?, "code"?}`.
    #[derive(Debug, Deserialize)]
    pub struct ErrorBody {
        #[serde(default)]
        pub message: String,
        #[serde(default)]
        pub code: Option<String>,
    }

    /// `data` of `POST /transaction/initialize`.
    #[derive(Debug, Deserialize)]
    pub struct Authorization {
        pub authorization_url: String,
        pub reference: String,
    }

    /// An integer id (Paystack's ids are integers; a string is tolerated).
    #[derive(Debug, Clone, Deserialize)]
    #[serde(untagged)]
    pub enum Id {
        Number(u64),
        Text(String),
    }

    impl Id {
        pub fn text(&self) -> String {
            match self {
                Self::Number(n) => n.to_string(),
                Self::Text(s) => s.clone(),
            }
        }
    }

    /// An amount in subunits: an integer, or (in refund webhooks) a string of digits.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(untagged)]
    pub enum Subunits {
        Number(i64),
        Text(String),
    }

    impl Subunits {
        pub fn value(&self) -> Option<i64> {
            match self {
                Self::Number(n) => Some(*n),
                Self::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    s.parse().ok()
                }
                Self::Text(_) => None,
            }
        }
    }

    /// A transaction (verify answer, `charge.success` data).
    #[derive(Debug, Deserialize)]
    pub struct Charge {
        pub id: Id,
        pub status: String,
        pub reference: String,
        pub amount: i64,
        pub currency: String,
        #[serde(default)]
        pub gateway_response: Option<String>,
    }

    /// A transfer (initiate and verify answers, `transfer.*` data).
    #[derive(Debug, Deserialize)]
    pub struct Transfer {
        pub id: Id,
        pub status: String,
        pub reference: String,
        pub amount: i64,
        pub currency: String,
        #[serde(default)]
        pub gateway_response: Option<String>,
    }

    /// `data` of `POST /transferrecipient`.
    #[derive(Debug, Deserialize)]
    pub struct Recipient {
        pub recipient_code: String,
    }

    /// `data` of `POST /refund`.
    #[derive(Debug, Deserialize)]
    pub struct Refund {
        pub id: Id,
        pub status: String,
    }

    /// `data` of `refund.*` webhooks.
    #[derive(Debug, Deserialize)]
    pub struct RefundEvent {
        #[serde(default)]
        pub id: Option<Id>,
        pub transaction_reference: String,
        #[serde(default)]
        pub refund_reference: Option<String>,
        pub amount: Subunits,
        pub currency: String,
    }

    /// A webhook: `{"event", "data"}`, nothing else paygate reads.
    #[derive(Debug, Deserialize)]
    pub struct Webhook {
        pub event: String,
        pub data: Option<serde_json::Value>,
    }
}

/// Connector-specific keys of a `[gateways.<name>]` table with `kind = "paystack"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Extra {
    /// Where Paystack sends the customer after checkout (its `callback_url`); default: the
    /// one set on the Paystack dashboard.
    #[serde(default)]
    callback_url: Option<String>,
    /// The domain of placeholder customer e-mails (see the module docs).
    #[serde(default = "default_email_domain")]
    customer_email_domain: String,
    /// The transfer recipient `type` (`nuban`, `mobile_money`, `ghipss`, `basa`, …).
    #[serde(default = "default_recipient_type")]
    recipient_type: String,
    /// The recipients' bank (or mobile money operator) code; withdrawals need it.
    #[serde(default)]
    bank_code: Option<String>,
}

fn default_email_domain() -> String {
    "example.com".into()
}

fn default_recipient_type() -> String {
    "nuban".into()
}

/// The Paystack connector.
pub struct PaystackGateway {
    conn: http::Connection,
    extra: Extra,
}

impl std::fmt::Debug for PaystackGateway {
    /// Never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaystackGateway")
            .field("name", &self.conn.name)
            .field("base_url", &self.conn.base_url.as_str())
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

/// Our transaction id as a Paystack reference: `txn-<32 hex>`.
pub fn encode(id: TransactionId) -> String {
    let text = id.to_string();
    match text.strip_prefix("txn_") {
        Some(hex) => format!("txn-{hex}"),
        None => text,
    }
}

/// The inverse of [`encode`]; anything else is malformed.
pub fn decode(reference: &str) -> Result<TransactionId, CallbackError> {
    let hex = reference
        .strip_prefix("txn-")
        .ok_or_else(|| callback::malformed(format!("{reference:?} is not a paygate reference")))?;
    callback::parse_reference(&format!("txn_{hex}"))
}

impl PaystackGateway {
    pub fn new(mut settings: GatewaySettings) -> Result<Self, RegistryError> {
        let raw = std::mem::take(&mut settings.extra);
        let table = serde_json::Value::Object(raw.into_iter().collect());
        let extra: Extra = serde_json::from_value(table)
            .map_err(|e| settings.field_error("extra", e.to_string()))?;
        if extra.customer_email_domain.trim().is_empty()
            || extra.customer_email_domain.contains(['@', ' '])
        {
            return Err(settings.field_error("customer_email_domain", "not a domain"));
        }
        Ok(Self {
            conn: http::Connection::new(settings)?,
            extra,
        })
    }

    /// The registry's constructor.
    pub fn from_settings(
        settings: GatewaySettings,
    ) -> Result<Arc<dyn PaymentGateway>, RegistryError> {
        Ok(Arc::new(Self::new(settings)?))
    }

    /// The e-mail Paystack requires, from the customer reference (see the module docs).
    fn email(&self, customer: &str) -> String {
        let safe_local = |s: &str| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
                && !s.starts_with('.')
                && !s.ends_with('.')
        };
        if let Some((local, domain)) = customer.split_once('@') {
            let domain_ok = domain.contains('.')
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            if safe_local(local) && domain_ok {
                return customer.to_owned();
            }
        }
        let local = if safe_local(customer) {
            customer.to_owned()
        } else {
            let digest = Sha256::digest(customer.as_bytes());
            format!("c{}", hex::encode(digest.get(..16).unwrap_or_default()))
        };
        format!("{local}@{}", self.extra.customer_email_domain)
    }

    async fn post<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), GatewayError> {
        let request = self
            .conn
            .client
            .post(self.conn.url(path)?)
            .bearer_auth(self.conn.secret_key.expose())
            .json(body);
        http::exchange(request).await
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, HeaderMap, Vec<u8>), GatewayError> {
        let request = self
            .conn
            .client
            .get(self.conn.url(path)?)
            .bearer_auth(self.conn.secret_key.expose());
        http::exchange(request).await
    }

    /// The recipient code for this customer (step one of a withdrawal).
    async fn recipient(&self, tx: &Transaction, bank_code: &str) -> Result<String, GatewayError> {
        let body = wire::RecipientRequest {
            kind: &self.extra.recipient_type,
            name: tx.customer.as_str(),
            account_number: tx.customer.as_str(),
            bank_code,
            currency: tx.money.currency.code(),
        };
        let answer =
            self.post(wire::RECIPIENT_PATH, &body)
                .await
                .and_then(|(status, headers, body)| {
                    fail_on_status(status, &headers, &body)?;
                    let data: wire::Recipient = success_data(&body)?;
                    callback::non_empty("recipient_code", &data.recipient_code).map_err(|e| {
                        GatewayError::Ambiguous {
                            reason: e.to_string(),
                        }
                    })
                });
        // No transfer was sent: whatever became of this call, no money moved.
        answer.map_err(|error| match error {
            permanent @ GatewayError::Permanent { .. } => permanent,
            GatewayError::Retryable {
                reason,
                retry_after,
            } => GatewayError::Retryable {
                reason: format!("creating the transfer recipient: {reason}"),
                retry_after,
            },
            GatewayError::Ambiguous { reason } => GatewayError::Retryable {
                reason: format!("creating the transfer recipient (no transfer sent): {reason}"),
                retry_after: None,
            },
        })
    }
}

/// The error for a status that is not a `2xx`: the shared classes, and a `4xx`'s code and
/// message through [`http::refusal`].
fn fail_on_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), GatewayError> {
    if let Some(error) = http::classify_status(status, headers) {
        return Err(error);
    }
    if status.is_success() {
        return Ok(());
    }
    Err(match serde_json::from_slice::<wire::ErrorBody>(body) {
        Ok(answer) if !answer.message.is_empty() => {
            http::refusal(status, answer.code, answer.message)
        }
        _ => http::refusal(status, None, http::excerpt(body)),
    })
}

/// A `2xx` answer's `data`; one we cannot read (or `status: false`) is ambiguous, since the
/// provider acted on something.
fn success_data<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    let answer: wire::Envelope<T> =
        serde_json::from_slice(body).map_err(|e| GatewayError::Ambiguous {
            reason: format!("unreadable success answer ({e}): {}", http::excerpt(body)),
        })?;
    if !answer.status {
        return Err(GatewayError::Ambiguous {
            reason: format!("2xx answer with status false: {:?}", answer.message),
        });
    }
    answer.data.ok_or_else(|| GatewayError::Ambiguous {
        reason: "success answer without data".into(),
    })
}

/// What an answer names as moved; one we cannot read is not believed.
fn answer_money(amount: i64, currency: &str) -> Result<Money, GatewayError> {
    Money::from_parts(amount, currency).map_err(|e| GatewayError::Ambiguous {
        reason: format!("answer names unreadable money: {e}"),
    })
}

fn same_reference(expected: &str, reported: &str) -> Result<(), GatewayError> {
    if expected == reported {
        Ok(())
    } else {
        Err(GatewayError::Ambiguous {
            reason: format!("answer names reference {reported:?}, not {expected:?}"),
        })
    }
}

/// Whether a `4xx` is the documented "no such reference" answer of a verify endpoint.
fn is_not_found(status: StatusCode, body: &[u8]) -> bool {
    if status == StatusCode::NOT_FOUND {
        return true;
    }
    if !status.is_client_error() {
        return false;
    }
    serde_json::from_slice::<wire::ErrorBody>(body).is_ok_and(|answer| {
        let message = answer.message.to_ascii_lowercase();
        message.contains("reference not found")
            || message == "transfer not found"
            || answer.code.as_deref() == Some("transaction_not_found")
    })
}

/// A transaction's `status` at Paystack.
fn charge_state(status: &str, gateway_response: Option<&str>) -> Option<ProviderState> {
    Some(match status {
        "success" => ProviderState::Succeeded,
        "failed" => ProviderState::Failed {
            code: callback::DEFAULT_FAILURE_CODE.into(),
            reason: gateway_response.unwrap_or("Declined").to_owned(),
        },
        "reversed" => ProviderState::Failed {
            code: "reversed".into(),
            reason: gateway_response.unwrap_or("Reversed").to_owned(),
        },
        "abandoned" => ProviderState::AwaitingCustomer,
        "ongoing" | "pending" | "processing" | "queued" => ProviderState::Pending,
        _ => return None,
    })
}

/// A transfer's `status` at Paystack.
fn transfer_state(status: &str, gateway_response: Option<&str>) -> Option<ProviderState> {
    let failed = |code: &str, default: &str| ProviderState::Failed {
        code: code.into(),
        reason: gateway_response.unwrap_or(default).to_owned(),
    };
    Some(match status {
        "success" => ProviderState::Succeeded,
        "failed" => failed("transfer_failed", "Transfer failed"),
        "reversed" => failed("transfer_reversed", "Transfer reversed"),
        "rejected" | "blocked" | "abandoned" => failed("transfer_rejected", "Transfer rejected"),
        "pending" | "received" | "processing" | "queued" | "otp" => ProviderState::Pending,
        _ => return None,
    })
}

enum ProviderState {
    /// Paystack's `abandoned`: the checkout was opened and not finished; nothing moved.
    AwaitingCustomer,
    Pending,
    Succeeded,
    Failed {
        code: String,
        reason: String,
    },
}

fn unknown_state(status: &str) -> GatewayError {
    GatewayError::Ambiguous {
        reason: format!(
            "unknown status {:?}",
            status.chars().take(40).collect::<String>()
        ),
    }
}

impl PaystackGateway {
    fn parse_deposit(
        &self,
        tx: &Transaction,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<SubmitOutcome, GatewayError> {
        fail_on_status(status, headers, body)?;
        let data: wire::Authorization = success_data(body)?;
        let reference = encode(tx.id);
        same_reference(&reference, &data.reference)?;
        let url = http::redirect_url(&data.authorization_url)?;
        Ok(SubmitOutcome {
            provider_reference: reference,
            status: SubmitStatus::RequiresAction { url },
            money: None,
        })
    }

    fn parse_transfer(
        &self,
        tx: &Transaction,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<SubmitOutcome, GatewayError> {
        fail_on_status(status, headers, body)?;
        let data: wire::Transfer = success_data(body)?;
        let reference = encode(tx.id);
        same_reference(&reference, &data.reference)?;
        let money = answer_money(data.amount, &data.currency)?;
        let status = match transfer_state(&data.status, data.gateway_response.as_deref()) {
            Some(ProviderState::Pending | ProviderState::AwaitingCustomer) => {
                SubmitStatus::Accepted
            }
            Some(ProviderState::Succeeded) => SubmitStatus::Succeeded,
            Some(ProviderState::Failed { code, reason }) => {
                return Err(GatewayError::declined(code, reason))
            }
            None => return Err(unknown_state(&data.status)),
        };
        Ok(SubmitOutcome {
            provider_reference: reference,
            status,
            money: Some(money),
        })
    }

    fn parse_status(
        &self,
        tx: &Transaction,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ProviderStatus, GatewayError> {
        // The status classes first (the table on `GatewayError`): a 408 or 429 means "could
        // not find out" whatever its body says, never "no record" (found by fuzz/, target
        // `responses`: a 429 whose body said "reference not found" was read as NotFound).
        if let Some(error) = http::classify_status(status, headers) {
            return Err(error);
        }
        if is_not_found(status, body) {
            return Ok(ProviderStatus::NotFound);
        }
        fail_on_status(status, headers, body)?;
        let reference = encode(tx.id);
        let (state, reported_reference, money, raw) = match tx.kind {
            TransactionKind::Deposit => {
                let data: wire::Charge = success_data(body)?;
                let state = charge_state(&data.status, data.gateway_response.as_deref());
                (
                    state,
                    data.reference,
                    (data.amount, data.currency),
                    data.status,
                )
            }
            TransactionKind::Withdrawal => {
                let data: wire::Transfer = success_data(body)?;
                let state = transfer_state(&data.status, data.gateway_response.as_deref());
                (
                    state,
                    data.reference,
                    (data.amount, data.currency),
                    data.status,
                )
            }
        };
        same_reference(&reference, &reported_reference)?;
        let status = match state {
            Some(ProviderState::Pending) => return Ok(ProviderStatus::InProgress),
            Some(ProviderState::AwaitingCustomer) => return Ok(ProviderStatus::AwaitingCustomer),
            Some(ProviderState::Succeeded) => ReportedStatus::Succeeded,
            Some(ProviderState::Failed { code, reason }) => ReportedStatus::Failed { code, reason },
            None => return Err(unknown_state(&raw)),
        };
        Ok(ProviderStatus::Final {
            status,
            reported: Reported {
                money: Some(answer_money(money.0, &money.1)?),
                kind: Some(tx.kind),
                provider_reference: Some(reference),
            },
        })
    }

    fn parse_refund(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<RefundOutcome, GatewayError> {
        fail_on_status(status, headers, body)?;
        let data: wire::Refund = success_data(body)?;
        let status = match data.status.as_str() {
            "pending" | "processing" | "queued" | "needs-attention" => RefundStatus::Pending,
            "processed" => RefundStatus::Succeeded,
            "failed" => RefundStatus::Failed {
                code: "refund_failed".into(),
                reason: "Paystack could not process the refund".into(),
            },
            other => return Err(unknown_state(other)),
        };
        Ok(RefundOutcome {
            provider_reference: data.id.text(),
            status,
        })
    }

    fn parse_call(
        &self,
        call: ProviderCall,
        tx: &Transaction,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Parsed, GatewayError> {
        match call {
            ProviderCall::Deposit => self
                .parse_deposit(tx, status, headers, body)
                .map(Parsed::Submit),
            ProviderCall::Withdraw => self
                .parse_transfer(tx, status, headers, body)
                .map(Parsed::Submit),
            ProviderCall::Status => self
                .parse_status(tx, status, headers, body)
                .map(Parsed::Status),
            ProviderCall::Refund => self.parse_refund(status, headers, body).map(Parsed::Refund),
        }
    }

    fn verify_signature(&self, request: &CallbackRequest) -> Result<(), CallbackError> {
        let signature = callback::decode_hex_signature(callback::required_header(
            request,
            wire::SIGNATURE_HEADER,
        )?)?;
        callback::verify_sha512(
            self.conn.secret_key.expose().as_bytes(),
            &[&request.body],
            &signature,
        )
    }
}

/// A bounded event name for [`CallbackEvent::Ignored`].
fn ignored(event: &str) -> CallbackEvent {
    CallbackEvent::Ignored {
        event: event.chars().take(64).collect(),
    }
}

fn data_of<T: serde::de::DeserializeOwned>(
    event: &str,
    data: serde_json::Value,
) -> Result<T, CallbackError> {
    serde_json::from_value(data).map_err(|e| callback::malformed(format!("{event} data: {e}")))
}

fn event_id(event: &str, id: &wire::Id) -> Result<String, CallbackError> {
    callback::non_empty("data.id", &format!("{event}:{}", id.text()))
}

#[async_trait]
impl PaymentGateway for PaystackGateway {
    fn name(&self) -> &GatewayName {
        &self.conn.name
    }

    async fn deposit(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        let email = self.email(tx.customer.as_str());
        let reference = encode(tx.id);
        let body = wire::InitializeRequest {
            email: &email,
            amount: tx.money.amount.minor_units(),
            currency: tx.money.currency.code(),
            reference: &reference,
            callback_url: self.extra.callback_url.as_deref(),
        };
        let (status, headers, body) = self.post(wire::INITIALIZE_PATH, &body).await?;
        self.parse_deposit(tx, status, &headers, &body)
    }

    async fn withdraw(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        let Some(bank_code) = self.extra.bank_code.as_deref() else {
            return Err(GatewayError::Permanent {
                code: "not_configured".into(),
                reason: format!("gateway {} has no bank_code for transfers", self.conn.name),
            });
        };
        let recipient = self.recipient(tx, bank_code).await?;
        let reference = encode(tx.id);
        let reason = format!("paygate {}", tx.id);
        let body = wire::TransferRequest {
            source: "balance",
            amount: tx.money.amount.minor_units(),
            recipient: &recipient,
            reference: &reference,
            reason: &reason,
            currency: tx.money.currency.code(),
        };
        let (status, headers, body) = self.post(wire::TRANSFER_PATH, &body).await?;
        self.parse_transfer(tx, status, &headers, &body)
    }

    fn callback_content_types(&self) -> &'static [&'static str] {
        &[wire::CONTENT_TYPE]
    }

    fn callback_headers(&self) -> &'static [&'static str] {
        wire::CALLBACK_HEADERS
    }

    fn handle_callback(&self, request: &CallbackRequest) -> Result<CallbackEvent, CallbackError> {
        callback::check_envelope(
            request,
            self.conn.max_callback_bytes,
            self.callback_content_types(),
        )?;
        self.verify_signature(request)?;
        let webhook: wire::Webhook =
            serde_json::from_slice(&request.body).map_err(callback::malformed)?;
        let event = webhook.event.as_str();
        let handled = matches!(
            event,
            "charge.success"
                | "transfer.success"
                | "transfer.failed"
                | "transfer.reversed"
                | "refund.processed"
                | "refund.failed"
        );
        if !handled {
            return Ok(ignored(event));
        }
        let data = webhook
            .data
            .ok_or_else(|| callback::malformed(format!("{event} without data")))?;
        match event {
            "charge.success" => {
                let charge: wire::Charge = data_of(event, data)?;
                if charge.status != "success" {
                    return Err(callback::malformed(format!(
                        "charge.success with status {:?}",
                        charge.status.chars().take(40).collect::<String>()
                    )));
                }
                let Ok(transaction_id) = decode(&charge.reference) else {
                    return Ok(ignored(event));
                };
                Ok(CallbackEvent::Payment(CallbackOutcome {
                    transaction_id,
                    status: ReportedStatus::Succeeded,
                    provider_reference: callback::non_empty("data.reference", &charge.reference)?,
                    provider_event_id: event_id(event, &charge.id)?,
                    money: callback::parse_money(charge.amount, &charge.currency)?,
                    kind: Some(TransactionKind::Deposit),
                }))
            }
            "transfer.success" | "transfer.failed" | "transfer.reversed" => {
                let transfer: wire::Transfer = data_of(event, data)?;
                let state = transfer_state(&transfer.status, transfer.gateway_response.as_deref());
                let status = match (event, state) {
                    ("transfer.success", Some(ProviderState::Succeeded)) => {
                        ReportedStatus::Succeeded
                    }
                    (
                        "transfer.failed" | "transfer.reversed",
                        Some(ProviderState::Failed { code, reason }),
                    ) => ReportedStatus::Failed { code, reason },
                    _ => {
                        return Err(callback::malformed(format!(
                            "{event} with status {:?}",
                            transfer.status.chars().take(40).collect::<String>()
                        )))
                    }
                };
                let Ok(transaction_id) = decode(&transfer.reference) else {
                    return Ok(ignored(event));
                };
                Ok(CallbackEvent::Payment(CallbackOutcome {
                    transaction_id,
                    status,
                    provider_reference: callback::non_empty("data.reference", &transfer.reference)?,
                    provider_event_id: event_id(event, &transfer.id)?,
                    money: callback::parse_money(transfer.amount, &transfer.currency)?,
                    kind: Some(TransactionKind::Withdrawal),
                }))
            }
            // "refund.processed" | "refund.failed"
            _ => {
                let refund: wire::RefundEvent = data_of(event, data)?;
                let Ok(transaction_id) = decode(&refund.transaction_reference) else {
                    return Ok(ignored(event));
                };
                let amount = refund
                    .amount
                    .value()
                    .ok_or_else(|| callback::malformed("refund amount is not an integer"))?;
                // Paystack's refund id where the event carries it (the `POST /refund` answer's
                // `data.id`), else its processor reference.
                let provider_reference = refund
                    .id
                    .as_ref()
                    .map(wire::Id::text)
                    .or(refund.refund_reference.clone())
                    .unwrap_or_default();
                let provider_reference = callback::non_empty("data.id", &provider_reference)?;
                let status = if event == "refund.processed" {
                    RefundStatus::Succeeded
                } else {
                    RefundStatus::Failed {
                        code: "refund_failed".into(),
                        reason: "Paystack could not process the refund".into(),
                    }
                };
                Ok(CallbackEvent::Refund(RefundReport {
                    transaction_id,
                    refund_id: None,
                    provider_event_id: format!("{event}:{provider_reference}"),
                    provider_reference,
                    status,
                    money: callback::parse_money(amount, &refund.currency)?,
                }))
            }
        }
    }

    fn encode_reference(&self, id: TransactionId) -> String {
        encode(id)
    }

    fn decode_reference(&self, reference: &str) -> Result<TransactionId, CallbackError> {
        decode(reference)
    }

    async fn refund(
        &self,
        tx: &Transaction,
        refund: &RefundRequest,
    ) -> Result<RefundOutcome, GatewayError> {
        let reference = encode(tx.id);
        let note = format!("paygate refund {}", refund.id);
        let body = wire::RefundRequest {
            transaction: &reference,
            amount: refund.money.amount.minor_units(),
            currency: refund.money.currency.code(),
            merchant_note: &note,
        };
        let (status, headers, body) = self.post(wire::REFUND_PATH, &body).await?;
        self.parse_refund(status, &headers, &body)
    }

    fn parse_response(
        &self,
        call: ProviderCall,
        tx: &Transaction,
        response: &ProviderResponse,
    ) -> Option<Result<Parsed, GatewayError>> {
        let status = match StatusCode::from_u16(response.status) {
            Ok(status) => status,
            Err(e) => {
                return Some(Err(GatewayError::Ambiguous {
                    reason: format!("unusable status: {e}"),
                }))
            }
        };
        Some(self.parse_call(call, tx, status, &HeaderMap::new(), &response.body))
    }

    async fn status(&self, tx: &Transaction) -> Result<ProviderStatus, GatewayError> {
        let path = match tx.kind {
            TransactionKind::Deposit => wire::VERIFY_PATH,
            TransactionKind::Withdrawal => wire::TRANSFER_VERIFY_PATH,
        };
        let (status, headers, body) = self.get(&format!("{path}{}", encode(tx.id))).await?;
        self.parse_status(tx, status, &headers, &body)
    }
}

#[cfg(test)]
mod tests;
