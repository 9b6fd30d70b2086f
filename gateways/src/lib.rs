//! paygate-gateways: the one trait a payment provider integration implements, plus the
//! registry that builds gateways from config, the circuit breaker, the built-in connectors
//! and the conformance kit every connector must pass.
//!
//! See `gateways/README.md` for a walk-through of adding a provider.

pub mod breaker;
pub mod callback;
pub mod check;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod http;
pub mod json;
pub mod mpesa;
pub mod paystack;
#[cfg(test)]
mod proptests;
pub mod protobuf;
pub mod registry;
pub mod secret;
pub mod soap;
pub mod stripe;
#[cfg(test)]
mod test_support;

pub use breaker::{
    Breaker, BreakerError, BreakerSettings, BreakerSnapshot, BreakerState, Rejection,
};
pub use callback::{CallbackFields, SignedCallback};
pub use registry::{GatewayRegistry, GatewaySettings, RegisteredGateway, RegistryError};
pub use secret::Secret;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use paygate_core::domain::{
    GatewayName, Money, RefundId, Transaction, TransactionId, TransactionKind,
};

/// What the caller of [`PaymentGateway::deposit`] / [`PaymentGateway::withdraw`] should do
/// after a failed attempt. Connectors must classify every failure into one of these, by
/// **one rule**: a payment may go to another gateway only when the connector can show the
/// request never reached the provider. Anything else that is not a refusal is ambiguous.
///
/// | what happened | class | why |
/// | --- | --- | --- |
/// | connect refused, DNS failure, TLS failure, connect timeout (nothing written) | `Retryable` | the provider never saw the request |
/// | circuit breaker open (the processor's, not a connector's) | `Retryable` | no call was made |
/// | `429 Too Many Requests` | `Retryable` | RFC 6585 §4: the server refused the request for rate, it did not act on it |
/// | `408 Request Timeout` | `Retryable` | RFC 9110 §15.5.9: the server did not receive a complete request |
/// | a provider error code the connector documents as "not processed" (cite the provider's docs) | `Retryable` | the provider says so |
/// | every `5xx` (`500`, `502`, `503`, `504`, …) | `Ambiguous` | a proxy or load balancer in front of the provider answers these too, after the provider may have committed |
/// | read timeout or connection dropped after the request was written | `Ambiguous` | it may have executed |
/// | a `2xx` we cannot read, or that names another reference | `Ambiguous` | the provider acted on something |
/// | "duplicate reference" (`409`, or the provider's duplicate code) | `Ambiguous` | the provider holds this reference: a status query tells what became of it |
/// | any other `4xx` refusal (declined, invalid account, unsupported currency) | `Permanent` | the provider refused; retrying cannot help |
///
/// After an `Ambiguous` attempt the processor asks the same gateway's status query, and
/// resubmits only to the same gateway with the same reference; it never fails such a
/// payment automatically (it becomes `unresolved` when it cannot find out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The provider certainly did **not** execute the request (see the table). Safe to
    /// retry, here or on another gateway. `retry_after` carries the provider's `Retry-After`
    /// when it sent one (callers cap it).
    #[error("retryable: {reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The request may have reached the provider and been executed. Ask the provider's
    /// status; retry only on the same gateway with the same idempotency reference (our
    /// transaction id); never fail over to another provider.
    #[error("ambiguous: {reason}")]
    Ambiguous { reason: String },
    /// The provider refused for good (declined, invalid account, unsupported currency).
    /// Retrying cannot help; the transaction fails with `code`.
    #[error("permanent ({code}): {reason}")]
    Permanent { code: String, reason: String },
}

impl GatewayError {
    /// A provider's decline, its code and text as the provider gave them: the text bounded
    /// ([`http::provider_text`]) and a code that is not one (blank, over-long, control
    /// characters: found by fuzzing) replaced by `provider_declined`. Every connector builds
    /// a decline from provider data through here or [`http::refusal`].
    pub fn declined(code: String, reason: String) -> Self {
        Self::Permanent {
            code: http::provider_code(Some(code)).unwrap_or_else(|| "provider_declined".into()),
            reason: http::provider_text(reason),
        }
    }

    /// Whether this is a provider's "duplicate reference" refusal ([`http::refusal`]): the
    /// provider holds our reference, so the payment reached it, whatever its status query
    /// says while it lags. Still `Ambiguous` (the class is the table's); the processor keeps
    /// the fact so a later "not found" is never read as "never executed".
    pub fn is_duplicate_reference(&self) -> bool {
        matches!(self, Self::Ambiguous { reason } if reason.starts_with(http::DUPLICATE_REFERENCE_REASON))
    }
}

/// How the provider answered an accepted request. A synchronous decline is not a status
/// but [`GatewayError::Permanent`]: one encoding for one fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitStatus {
    /// Accepted; the final result will come in a callback.
    Accepted,
    /// The provider answered with a final success at once.
    Succeeded,
    /// The customer must act at the provider first (3-D Secure, a hosted checkout page):
    /// send them to `url`. The transaction becomes `requires_action` with
    /// `next_action: {"type": "redirect_to_url", "url": …}`; a callback or a status query
    /// completes it, and the gateway's `action_expires_after_ms` fails it (voiding any
    /// hold) when the customer never finishes. Nothing has moved yet, so expiry is safe
    /// only after the provider's status says so: the processor asks before failing it.
    RequiresAction { url: String },
}

/// A provider's answer to a deposit or withdrawal it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOutcome {
    /// The provider's own id for the payment.
    pub provider_reference: String,
    pub status: SubmitStatus,
    /// What the provider says it took, where its answer carries it; checked against ours
    /// ([`check::check_outcome`]) before a success is believed.
    pub money: Option<Money>,
}

/// A provider callback exactly as received over HTTP. The body is raw because signatures
/// are computed over the exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackRequest {
    pub body: Bytes,
    /// The `Content-Type` header's value, if any.
    pub content_type: Option<String>,
    /// Headers with lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The URL path after `/callbacks/{gateway}/`, for [`CallbackAuth::PathToken`]
    /// gateways (`{reference}/{token}`); `None` when the callback came to
    /// `/callbacks/{gateway}`. A signed gateway ignores it.
    pub path: Option<String>,
    /// When paygate received it. Timestamp freshness is judged against this, not the
    /// current time, so re-parsing a queued callback later gives the same answer.
    pub received_at: DateTime<Utc>,
}

/// The outcome a provider reports in a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportedStatus {
    Succeeded,
    Failed { code: String, reason: String },
}

/// A provider's answer to a status query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    /// This gateway has no status query.
    Unsupported,
    /// The provider has no record of the transaction *now*. Status endpoints lag: this
    /// means "never executed" only once the gateway's settle window
    /// (`status_not_found_after`) has passed since the ambiguous attempt.
    NotFound,
    /// Executing; the outcome will follow.
    InProgress,
    /// The provider holds the payment but waits for the customer (a hosted page or 3-D
    /// Secure not finished, Paystack's `abandoned`, Stripe's `requires_action`): nothing has
    /// moved. Past the gateway's `action_expires_after` such a payment fails.
    AwaitingCustomer,
    /// Done, with this result and what the provider says moved (checked against ours by
    /// [`check::check_outcome`] before it is applied).
    Final {
        status: ReportedStatus,
        reported: Reported,
    },
}

/// What a provider says about a payment beside its verdict, each where its answer carries
/// it. [`check::check_outcome`] compares them with our record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    pub money: Option<Money>,
    pub kind: Option<TransactionKind>,
    pub provider_reference: Option<String>,
}

/// A parsed, authenticated callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackOutcome {
    /// Our transaction id (the idempotency reference we sent).
    pub transaction_id: TransactionId,
    pub status: ReportedStatus,
    pub provider_reference: String,
    /// The provider's id for this event; a repeat of the same event is a duplicate.
    pub provider_event_id: String,
    /// What the provider says moved, so a mismatch with our record is caught.
    pub money: Money,
    /// Charge or transfer, where the callback says (a charge's success must not settle a
    /// payout).
    pub kind: Option<TransactionKind>,
}

impl CallbackOutcome {
    /// The facts [`check::check_outcome`] compares with our record.
    pub fn reported(&self) -> Reported {
        Reported {
            money: Some(self.money),
            kind: self.kind,
            provider_reference: (!self.provider_reference.is_empty())
                .then(|| self.provider_reference.clone()),
        }
    }
}

/// What an authentic callback is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackEvent {
    /// The outcome of one of our payments: queued for the callback processor.
    Payment(CallbackOutcome),
    /// The outcome of a refund of one of our payments.
    Refund(RefundReport),
    /// Authentic, but nothing paygate acts on (a provider's subscription, dispute or
    /// customer event): answered 200 so the provider stops retrying, logged and counted
    /// (`paygate_callbacks_ignored_total`), never queued. `event` is the provider's event
    /// name, bounded, for the log.
    Ignored { event: String },
}

impl CallbackEvent {
    /// The payment outcome, if this is one.
    pub fn payment(self) -> Option<CallbackOutcome> {
        match self {
            Self::Payment(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// Our transaction id this event is about, if any (the bus key).
    pub fn transaction_id(&self) -> Option<TransactionId> {
        match self {
            Self::Payment(outcome) => Some(outcome.transaction_id),
            Self::Refund(report) => Some(report.transaction_id),
            Self::Ignored { .. } => None,
        }
    }
}

/// How a provider authenticates its callbacks, declared by the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackAuth {
    /// Every callback carries a signature over its body ([`PaymentGateway::handle_callback`]
    /// verifies it). Received at `POST /callbacks/{gateway}`.
    Signed,
    /// The provider signs nothing (M-Pesa Daraja). The connector gives the provider a
    /// callback URL per payment, `/callbacks/{gateway}/{reference}/{token}` with
    /// `token = `[`callback::path_token`]`(webhook_secret, reference)`, and its
    /// `handle_callback` checks the token in [`CallbackRequest::path`] (constant time,
    /// [`callback::verify_path_token`]) before reading the body, and takes the payment from
    /// the path, never from the body. The API refuses a callback to such a gateway without
    /// a path (404) and one with a wrong token (401). Because a URL can leak, the body is
    /// still not believed: the callback processor confirms every such callback with
    /// [`PaymentGateway::status`] and applies the provider's answer, flagging one the
    /// status contradicts.
    PathToken,
}

/// A refund paygate asks a provider for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Our refund id: the provider's idempotency reference for this refund.
    pub id: RefundId,
    /// How much to give back (at most what is left of the payment).
    pub money: Money,
}

/// Where a refund stands at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundStatus {
    /// Accepted; a callback (or a later status) finishes it.
    Pending,
    Succeeded,
    Failed {
        code: String,
        reason: String,
    },
}

/// A provider's answer to a refund it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOutcome {
    pub provider_reference: String,
    pub status: RefundStatus,
}

/// A callback about a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundReport {
    /// The payment refunded.
    pub transaction_id: TransactionId,
    /// Our refund id where the provider echoes it; else matched by `provider_reference`.
    pub refund_id: Option<RefundId>,
    pub provider_reference: String,
    pub provider_event_id: String,
    pub status: RefundStatus,
    pub money: Money,
}

/// Which provider answer a response fixture holds ([`PaymentGateway::parse_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderCall {
    Deposit,
    Withdraw,
    Status,
    Refund,
}

/// One HTTP answer of a provider, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderResponse {
    pub status: u16,
    pub body: Bytes,
}

/// What a connector read from a provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Submit(SubmitOutcome),
    Status(ProviderStatus),
    Refund(RefundOutcome),
}

/// Why a callback was refused. Mapped by the API to HTTP statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// Missing, forged or stale signature (HTTP 401). Nothing in the body is believed.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Authentic but unparseable or missing fields (HTTP 400).
    #[error("malformed: {0}")]
    Malformed(String),
    /// Not a content type this gateway speaks (HTTP 415).
    #[error("unsupported content type: {0}")]
    UnsupportedContentType(String),
    /// Larger than the gateway accepts (HTTP 413).
    #[error("callback body too large")]
    TooLarge,
}

/// A payment provider integration. Implement this (one file) and add one line to the
/// registry to add a provider.
///
/// Every attempt must send `transaction.id` as the provider's idempotency reference, so a
/// retry after an [`GatewayError::Ambiguous`] failure cannot execute the payment twice.
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// The configured instance name (`[gateways.<name>]`).
    fn name(&self) -> &GatewayName;

    /// Money in: charge the customer.
    async fn deposit(&self, transaction: &Transaction) -> Result<SubmitOutcome, GatewayError>;

    /// Money out: pay the customer.
    async fn withdraw(&self, transaction: &Transaction) -> Result<SubmitOutcome, GatewayError>;

    /// The request headers (lower-case names) [`PaymentGateway::handle_callback`] reads:
    /// its signature header(s) and `content-type`. Only these are kept with a received
    /// callback (on the bus, in dead letters); every other header (`authorization`,
    /// `cookie`, proxies' additions) is dropped at the door, so a callback re-verified later
    /// from the queue verifies exactly as it did on receipt.
    fn callback_headers(&self) -> &'static [&'static str];

    /// Authenticates (signature, freshness) and parses a callback. Must never panic,
    /// whatever the bytes. Reads no header outside [`PaymentGateway::callback_headers`].
    /// An authentic event that is about none of our payments is
    /// [`CallbackEvent::Ignored`], never an error (an error makes the provider retry).
    fn handle_callback(&self, request: &CallbackRequest) -> Result<CallbackEvent, CallbackError>;

    /// The media types [`PaymentGateway::handle_callback`] accepts (what it passes to
    /// [`callback::check_envelope`]; parameters such as `charset` are ignored). The API's
    /// served OpenAPI document lists them on this gateway's callback route, so a provider
    /// (or a fuzzer) is told exactly what the route takes. Default: JSON.
    fn callback_content_types(&self) -> &'static [&'static str] {
        &["application/json"]
    }

    /// How this provider authenticates callbacks. Default: signed bodies.
    fn callback_auth(&self) -> CallbackAuth {
        CallbackAuth::Signed
    }

    /// Our transaction id as this provider's payment reference (its charset and length
    /// rules). Must round-trip through [`PaymentGateway::decode_reference`] (tested for
    /// every connector). Default: the id as is (`txn_<32 hex>`).
    fn encode_reference(&self, id: TransactionId) -> String {
        id.to_string()
    }

    /// The transaction id a provider reference stands for.
    fn decode_reference(&self, reference: &str) -> Result<TransactionId, CallbackError> {
        callback::parse_reference(reference)
    }

    /// Whether resubmitting the same reference after an ambiguous attempt is safe because
    /// the provider dedupes it. A provider without idempotency (M-Pesa's STK push prompts
    /// the customer again for every request) answers `false`: after an ambiguous attempt
    /// the processor only asks its status, and never submits again.
    fn idempotent_submit(&self) -> bool {
        true
    }

    /// Gives money back to the customer of a succeeded deposit. Default: this provider
    /// offers no refunds (`Permanent`, code `refunds_unsupported`).
    async fn refund(
        &self,
        _transaction: &Transaction,
        _refund: &RefundRequest,
    ) -> Result<RefundOutcome, GatewayError> {
        Err(GatewayError::Permanent {
            code: "refunds_unsupported".into(),
            reason: format!("gateway {} offers no refunds", self.name()),
        })
    }

    /// Reads one provider answer without a server, for the conformance kit's response
    /// fixtures (the provider's documented samples). A connector builds its requests,
    /// sends them and hands each answer to this; `None` means it does not expose its
    /// parsing (the older built-in connectors).
    fn parse_response(
        &self,
        _call: ProviderCall,
        _transaction: &Transaction,
        _response: &ProviderResponse,
    ) -> Option<Result<Parsed, GatewayError>> {
        None
    }

    /// Asks the provider what became of a transaction: after an ambiguous attempt, and for
    /// reconciliation of one stuck mid-flight or unresolved. The default says the provider
    /// offers no status query; callers then retry with the same idempotency reference,
    /// which the provider dedupes. An error here (any class) means "could not find out":
    /// callers ask again later and never read it as "not found".
    async fn status(&self, _transaction: &Transaction) -> Result<ProviderStatus, GatewayError> {
        Ok(ProviderStatus::Unsupported)
    }
}
