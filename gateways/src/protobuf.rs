//! Protobuf over HTTP (`application/x-protobuf`) with prost, for requests, responses and
//! callbacks. The schema is `gateways/proto/sandbox_payments.proto`; the messages below are
//! its hand-written prost equivalent (no `protoc` at build time).
//!
//! - `POST {base}/v1/payments` with a `PaymentRequest` (our transaction id as `reference`,
//!   also sent as `Idempotency-Key`), `Authorization: Bearer <secret_key>`.
//! - `GET {base}/v1/payments/{reference}` for status (`404` = never executed).
//! - Refusals: `4xx` with an `ErrorResponse` → `Permanent`.
//! - Callbacks: a `SignedEvent { payload, signature }` where `signature =
//!   HMAC-SHA256(webhook_secret, payload)` and `payload` is the encoded `PaymentEvent`,
//!   whose `sent_at_unix_ms` is therefore signed and checked for freshness.

use std::sync::Arc;

use async_trait::async_trait;
#[cfg(any(test, feature = "simulator"))]
use bytes::Bytes;
use chrono::DateTime;
use paygate_core::domain::{GatewayName, Transaction, TransactionKind};
use prost::Message;

use crate::callback;
#[cfg(any(test, feature = "simulator"))]
use crate::callback::{CallbackFields, SignedCallback};
use crate::http;
use crate::registry::{GatewaySettings, RegistryError};
#[cfg(any(test, feature = "simulator"))]
use crate::secret::Secret;
use crate::{
    CallbackError, CallbackEvent, CallbackOutcome, CallbackRequest, GatewayError, PaymentGateway,
    ProviderStatus, Reported, ReportedStatus, SubmitOutcome, SubmitStatus,
};

/// The provider's wire format, shared with the sandbox that plays this provider.
pub mod wire {
    pub const CONTENT_TYPE: &str = "application/x-protobuf";
    pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
    /// The headers a callback is verified with (see `PaymentGateway::callback_headers`):
    /// the signature travels inside the body (`SignedEvent`), so only the content type.
    pub const CALLBACK_HEADERS: &[&str] = &["content-type"];
    pub const PAYMENTS_PATH: &str = "v1/payments";

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum PaymentKind {
        Unspecified = 0,
        Deposit = 1,
        Withdrawal = 2,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum PaymentState {
        Unspecified = 0,
        Accepted = 1,
        Succeeded = 2,
        Failed = 3,
        NotFound = 4,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PaymentRequest {
        #[prost(string, tag = "1")]
        pub reference: String,
        #[prost(enumeration = "PaymentKind", tag = "2")]
        pub kind: i32,
        #[prost(int64, tag = "3")]
        pub amount_minor: i64,
        #[prost(string, tag = "4")]
        pub currency: String,
        #[prost(string, tag = "5")]
        pub customer: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PaymentResponse {
        #[prost(string, tag = "1")]
        pub reference: String,
        #[prost(string, tag = "2")]
        pub provider_reference: String,
        #[prost(enumeration = "PaymentState", tag = "3")]
        pub state: i32,
        #[prost(string, tag = "4")]
        pub failure_code: String,
        #[prost(string, tag = "5")]
        pub failure_reason: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ErrorResponse {
        #[prost(string, tag = "1")]
        pub code: String,
        #[prost(string, tag = "2")]
        pub message: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PaymentEvent {
        #[prost(string, tag = "1")]
        pub event_id: String,
        #[prost(string, tag = "2")]
        pub reference: String,
        #[prost(enumeration = "PaymentKind", tag = "3")]
        pub kind: i32,
        #[prost(string, tag = "4")]
        pub provider_reference: String,
        #[prost(enumeration = "PaymentState", tag = "5")]
        pub state: i32,
        #[prost(int64, tag = "6")]
        pub amount_minor: i64,
        #[prost(string, tag = "7")]
        pub currency: String,
        #[prost(string, tag = "8")]
        pub failure_code: String,
        #[prost(string, tag = "9")]
        pub failure_reason: String,
        #[prost(int64, tag = "10")]
        pub sent_at_unix_ms: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SignedEvent {
        #[prost(bytes = "vec", tag = "1")]
        pub payload: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub signature: Vec<u8>,
    }
}

use wire::{PaymentEvent, PaymentKind, PaymentResponse, PaymentState, SignedEvent};

/// The protobuf connector.
pub struct ProtobufGateway {
    conn: http::Connection,
}

impl ProtobufGateway {
    pub fn new(settings: GatewaySettings) -> Result<Self, RegistryError> {
        Ok(Self {
            conn: http::Connection::new(settings)?,
        })
    }

    /// The registry's constructor.
    pub fn from_settings(
        settings: GatewaySettings,
    ) -> Result<Arc<dyn PaymentGateway>, RegistryError> {
        Ok(Arc::new(Self::new(settings)?))
    }

    /// Sends and returns the decoded `PaymentResponse` of a `2xx`, or `None` for a `404`.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<PaymentResponse>, GatewayError> {
        let request = request
            .bearer_auth(self.conn.secret_key.expose())
            .header(reqwest::header::ACCEPT, wire::CONTENT_TYPE);
        let (status, headers, body) = http::exchange(request).await?;
        if let Some(error) = http::classify_status(status, &headers) {
            return Err(error);
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(match wire::ErrorResponse::decode(body.as_slice()) {
                Ok(e) if !e.code.is_empty() => http::refusal(status, Some(e.code), e.message),
                _ => http::refusal(status, None, http::excerpt(&body)),
            });
        }
        PaymentResponse::decode(body.as_slice())
            .map(Some)
            .map_err(|e| GatewayError::Ambiguous {
                reason: format!("unreadable success answer: {e}"),
            })
    }

    async fn submit(
        &self,
        tx: &Transaction,
        kind: PaymentKind,
    ) -> Result<SubmitOutcome, GatewayError> {
        let message = wire::PaymentRequest {
            reference: tx.id.to_string(),
            kind: kind as i32,
            amount_minor: tx.money.amount.minor_units(),
            currency: tx.money.currency.code().into(),
            customer: tx.customer.as_str().to_owned(),
        };
        let request = self
            .conn
            .client
            .post(self.conn.url(wire::PAYMENTS_PATH)?)
            .header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE)
            .header(wire::IDEMPOTENCY_HEADER, tx.id.to_string())
            .body(message.encode_to_vec());
        let answer = self
            .exchange(request)
            .await?
            .ok_or_else(|| GatewayError::Permanent {
                code: "not_found".into(),
                reason: "payments endpoint answered 404".into(),
            })?;
        if answer.reference != tx.id.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("answer names reference {:?}", answer.reference),
            });
        }
        let status = match PaymentState::try_from(answer.state) {
            Ok(PaymentState::Accepted) => SubmitStatus::Accepted,
            Ok(PaymentState::Succeeded) => SubmitStatus::Succeeded,
            Ok(PaymentState::Failed) => {
                let (code, reason) = failure(answer.failure_code, answer.failure_reason);
                return Err(GatewayError::declined(code, reason));
            }
            other => {
                return Err(GatewayError::Ambiguous {
                    reason: format!("answer state {other:?}"),
                })
            }
        };
        if answer.provider_reference.is_empty() {
            return Err(GatewayError::Ambiguous {
                reason: "answer without provider_reference".into(),
            });
        }
        Ok(SubmitOutcome {
            provider_reference: answer.provider_reference,
            status,
            // This protocol's answers carry no amount.
            money: None,
        })
    }
}

fn failure(code: String, reason: String) -> (String, String) {
    (
        if code.is_empty() {
            callback::DEFAULT_FAILURE_CODE.into()
        } else {
            code
        },
        if reason.is_empty() {
            "declined by provider".into()
        } else {
            reason
        },
    )
}

#[async_trait]
impl PaymentGateway for ProtobufGateway {
    fn name(&self) -> &GatewayName {
        &self.conn.name
    }

    async fn deposit(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        self.submit(tx, PaymentKind::Deposit).await
    }

    async fn withdraw(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        self.submit(tx, PaymentKind::Withdrawal).await
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
        // The outer frame carries the signature: a body that is not one cannot be authentic,
        // so it is refused as unauthenticated, and the decoder's detail is not echoed to an
        // anonymous sender.
        let signed = SignedEvent::decode(request.body.as_ref())
            .map_err(|_| CallbackError::Unauthenticated("not a SignedEvent".into()))?;
        if signed.signature.is_empty() {
            return Err(CallbackError::Unauthenticated("missing signature".into()));
        }
        callback::verify_sha256(
            self.conn.webhook_secret.expose().as_bytes(),
            &[&signed.payload],
            &signed.signature,
        )?;
        let event = PaymentEvent::decode(signed.payload.as_slice())
            .map_err(|e| callback::malformed(format!("not a PaymentEvent: {e}")))?;
        let sent_at = DateTime::from_timestamp_millis(event.sent_at_unix_ms)
            .ok_or_else(|| CallbackError::Unauthenticated("sent_at_unix_ms out of range".into()))?;
        callback::check_fresh(sent_at, request.received_at, self.conn.callback_tolerance)?;
        let status = match PaymentState::try_from(event.state) {
            Ok(PaymentState::Succeeded) => ReportedStatus::Succeeded,
            Ok(PaymentState::Failed) => {
                let (code, reason) = failure(event.failure_code, event.failure_reason);
                ReportedStatus::Failed { code, reason }
            }
            other => return Err(callback::malformed(format!("event state {other:?}"))),
        };
        Ok(CallbackEvent::Payment(CallbackOutcome {
            transaction_id: callback::parse_reference(&event.reference)?,
            status,
            provider_reference: callback::non_empty(
                "provider_reference",
                &event.provider_reference,
            )?,
            provider_event_id: callback::non_empty("event_id", &event.event_id)?,
            money: callback::parse_money(event.amount_minor, &event.currency)?,
            kind: match PaymentKind::try_from(event.kind) {
                Ok(PaymentKind::Deposit) => Some(TransactionKind::Deposit),
                Ok(PaymentKind::Withdrawal) => Some(TransactionKind::Withdrawal),
                _ => None,
            },
        }))
    }

    async fn status(&self, tx: &Transaction) -> Result<ProviderStatus, GatewayError> {
        let request = self.conn.client.get(self.conn.url(&format!(
            "{}/{}",
            wire::PAYMENTS_PATH,
            tx.id
        ))?);
        let Some(answer) = self.exchange(request).await? else {
            return Ok(ProviderStatus::NotFound);
        };
        let status = match PaymentState::try_from(answer.state) {
            Ok(PaymentState::NotFound) => return Ok(ProviderStatus::NotFound),
            Ok(PaymentState::Accepted) => return Ok(ProviderStatus::InProgress),
            Ok(PaymentState::Succeeded) => ReportedStatus::Succeeded,
            Ok(PaymentState::Failed) => {
                let (code, reason) = failure(answer.failure_code, answer.failure_reason);
                ReportedStatus::Failed { code, reason }
            }
            other => {
                return Err(GatewayError::Ambiguous {
                    reason: format!("status state {other:?}"),
                })
            }
        };
        if answer.reference != tx.id.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("status answer names reference {:?}", answer.reference),
            });
        }
        Ok(ProviderStatus::Final {
            status,
            reported: Reported {
                money: None,
                kind: None,
                provider_reference: (!answer.provider_reference.is_empty())
                    .then_some(answer.provider_reference),
            },
        })
    }
}

#[cfg(any(test, feature = "simulator"))]
/// The signing rule: wrap `payload` in a `SignedEvent` with `HMAC-SHA256(secret, payload)`.
pub fn sign_body(webhook_secret: &Secret, payload: Vec<u8>) -> SignedCallback {
    let signature = callback::hmac_sha256(webhook_secret.expose().as_bytes(), &[&payload]);
    SignedCallback {
        content_type: wire::CONTENT_TYPE.into(),
        headers: Vec::new(),
        body: Bytes::from(SignedEvent { payload, signature }.encode_to_vec()),
    }
}

#[cfg(any(test, feature = "simulator"))]
/// The event message for `fields`.
pub fn event(fields: &CallbackFields) -> PaymentEvent {
    let (state, failure_code, failure_reason) = match &fields.status {
        ReportedStatus::Succeeded => (PaymentState::Succeeded, String::new(), String::new()),
        ReportedStatus::Failed { code, reason } => {
            (PaymentState::Failed, code.clone(), reason.clone())
        }
    };
    PaymentEvent {
        event_id: fields.event_id.clone(),
        reference: fields.transaction_id.to_string(),
        kind: match fields.kind {
            TransactionKind::Deposit => PaymentKind::Deposit,
            TransactionKind::Withdrawal => PaymentKind::Withdrawal,
        } as i32,
        provider_reference: fields.provider_reference.clone(),
        state: state as i32,
        amount_minor: fields.money.amount.minor_units(),
        currency: fields.money.currency.code().into(),
        failure_code,
        failure_reason,
        sent_at_unix_ms: fields.sent_at.timestamp_millis(),
    }
}

#[cfg(any(test, feature = "simulator"))]
/// A correctly signed callback for `fields`, as the provider would send it.
pub fn signed_callback(webhook_secret: &Secret, fields: &CallbackFields) -> SignedCallback {
    sign_body(webhook_secret, event(fields).encode_to_vec())
}

#[cfg(test)]
mod tests;
