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
#[cfg(test)]
mod proptests;
pub mod protobuf;
pub mod registry;
pub mod secret;
pub mod soap;
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
use paygate_core::domain::{GatewayName, Money, Transaction, TransactionId, TransactionKind};

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
    fn handle_callback(&self, request: &CallbackRequest) -> Result<CallbackOutcome, CallbackError>;

    /// Asks the provider what became of a transaction: after an ambiguous attempt, and for
    /// reconciliation of one stuck mid-flight or unresolved. The default says the provider
    /// offers no status query; callers then retry with the same idempotency reference,
    /// which the provider dedupes. An error here (any class) means "could not find out":
    /// callers ask again later and never read it as "not found".
    async fn status(&self, _transaction: &Transaction) -> Result<ProviderStatus, GatewayError> {
        Ok(ProviderStatus::Unsupported)
    }
}
