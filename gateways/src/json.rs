//! `sandbox-json`: a JSON-over-HTTP protocol invented for paygate's sandbox, for
//! development, tests and benchmarks. It is NOT Paystack's (no real provider speaks it):
//! for Paystack configure `kind = "paystack"` ([`crate::paystack`]).
//!
//! - Auth: `Authorization: Bearer <secret_key>`.
//! - Deposit = a charge: `POST {base}/transaction/charge`; withdrawal = a transfer:
//!   `POST {base}/transfer`. Both carry our transaction id as `reference` (the
//!   idempotency key) and again as an `Idempotency-Key` header.
//! - Answers: `{"status": true, "message": …, "data": {"id", "reference", "status":
//!   "pending"|"success"|"failed", …}}`; refusals are `4xx` with `{"status": false,
//!   "message", "code"}`.
//! - Status query: `GET {base}/transaction/verify/{reference}` or
//!   `GET {base}/transfer/verify/{reference}` (`404` = no record *now*; see
//!   [`ProviderStatus::NotFound`] for when that means "never executed").
//! - Refusals: `4xx` with a `code`; `duplicate_reference` (or `409`) means the provider holds
//!   the reference already, which [`http::refusal`] reads as ambiguous, never as a decline.
//! - Webhooks: `{"event": "charge.success" | "charge.failed" | "transfer.success" |
//!   "transfer.failed", "event_id", "sent_at", "data": {…}}`, signed with
//!   `x-sandbox-signature: hex(HMAC-SHA512(webhook_secret, raw body))`. Because the whole
//!   body is signed, its `sent_at` is too, and stale events are refused.
//! - Refunds: `POST {base}/refund` `{"transaction": <the charge's reference>, "reference":
//!   <our refund id, the idempotency key>, "amount", "currency"}` → `data: {"id",
//!   "reference", "transaction", "status": "succeeded"|"pending"|"failed", …}`; the outcome
//!   of a pending one comes as a signed `refund.processed` / `refund.failed` webhook whose
//!   `data` is the same refund object.

use std::sync::Arc;

use async_trait::async_trait;
#[cfg(any(test, feature = "simulator"))]
use bytes::Bytes;
use paygate_core::domain::{GatewayName, RefundId, Transaction, TransactionKind};

use crate::callback;
#[cfg(any(test, feature = "simulator"))]
use crate::callback::{CallbackFields, SignedCallback};
use crate::http;
use crate::registry::{GatewaySettings, RegistryError};
use crate::secret::Secret;
use crate::{
    CallbackError, CallbackEvent, CallbackOutcome, CallbackRequest, GatewayError, PaymentGateway,
    ProviderStatus, RefundOutcome, RefundReport, RefundRequest, RefundStatus, Reported,
    ReportedStatus, SubmitOutcome, SubmitStatus,
};

/// The provider's wire format, shared with the sandbox that plays this provider.
pub mod wire {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Serialize};

    pub const CONTENT_TYPE: &str = "application/json";
    pub const SIGNATURE_HEADER: &str = "x-sandbox-signature";
    /// The headers a callback is verified with (see `PaymentGateway::callback_headers`).
    pub const CALLBACK_HEADERS: &[&str] = &["content-type", SIGNATURE_HEADER];
    pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
    pub const CHARGE_PATH: &str = "transaction/charge";
    pub const TRANSFER_PATH: &str = "transfer";
    pub const CHARGE_VERIFY_PATH: &str = "transaction/verify/";
    pub const TRANSFER_VERIFY_PATH: &str = "transfer/verify/";
    pub const REFUND_PATH: &str = "refund";

    /// A refund of a charge.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RefundRequest {
        /// The refunded charge's reference (our transaction id).
        pub transaction: String,
        /// Our refund id: the refund's idempotency reference.
        pub reference: String,
        /// Minor units.
        pub amount: i64,
        pub currency: String,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum RefundState {
        Pending,
        Succeeded,
        Failed,
    }

    /// A refund as the provider reports it (answer and webhook alike).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RefundData {
        /// The provider's id for the refund.
        pub id: String,
        /// Our refund id.
        pub reference: String,
        /// The refunded charge's reference.
        pub transaction: String,
        pub status: RefundState,
        pub amount: i64,
        pub currency: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub failure_code: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gateway_response: Option<String>,
    }

    /// A refund webhook: `refund.processed` or `refund.failed`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RefundWebhookEvent {
        pub event: String,
        pub event_id: String,
        pub sent_at: DateTime<Utc>,
        pub data: RefundData,
    }

    /// A deposit.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ChargeRequest {
        /// Our transaction id: the idempotency reference.
        pub reference: String,
        /// Minor units.
        pub amount: i64,
        pub currency: String,
        pub customer: String,
    }

    /// A withdrawal.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct TransferRequest {
        pub source: String,
        pub reference: String,
        pub amount: i64,
        pub currency: String,
        pub recipient: String,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub enum PaymentState {
        Pending,
        Success,
        Failed,
    }

    /// Every answer's envelope.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ApiResponse<T> {
        pub status: bool,
        pub message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub data: Option<T>,
        /// Machine-readable refusal code (`declined`, `invalid_amount`, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub code: Option<String>,
    }

    /// A charge or transfer as the provider reports it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PaymentData {
        /// The provider's id for the payment.
        pub id: String,
        pub reference: String,
        pub status: PaymentState,
        pub amount: i64,
        pub currency: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub gateway_response: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub failure_code: Option<String>,
    }

    /// A webhook.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct WebhookEvent {
        /// `charge.success`, `charge.failed`, `transfer.success`, `transfer.failed`.
        pub event: String,
        pub event_id: String,
        pub sent_at: DateTime<Utc>,
        pub data: PaymentData,
    }
}

use wire::{ApiResponse, PaymentData, PaymentState, WebhookEvent};

/// The JSON connector.
pub struct JsonGateway {
    conn: http::Connection,
}

impl JsonGateway {
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

    async fn submit<B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
        tx: &Transaction,
    ) -> Result<SubmitOutcome, GatewayError> {
        let request = self
            .conn
            .client
            .post(self.conn.url(path)?)
            .bearer_auth(self.conn.secret_key.expose())
            .header(wire::IDEMPOTENCY_HEADER, tx.id.to_string())
            .json(body);
        let (status, headers, body) = http::exchange(request).await?;
        if let Some(error) = http::classify_status(status, &headers) {
            return Err(error);
        }
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        let data = success_data(&body)?;
        if data.reference != tx.id.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("answer names reference {:?}", data.reference),
            });
        }
        let status = match data.status {
            PaymentState::Pending => SubmitStatus::Accepted,
            PaymentState::Success => SubmitStatus::Succeeded,
            PaymentState::Failed => {
                let (code, reason) = failure(&data);
                return Err(GatewayError::declined(code, reason));
            }
        };
        Ok(SubmitOutcome {
            money: Some(reported_money(&data)?),
            provider_reference: data.id,
            status,
        })
    }
}

/// The amount and currency an answer names; one we cannot read is not believed.
fn reported_money(data: &PaymentData) -> Result<paygate_core::domain::Money, GatewayError> {
    paygate_core::domain::Money::from_parts(data.amount, &data.currency).map_err(|e| {
        GatewayError::Ambiguous {
            reason: format!("answer names unreadable money: {e}"),
        }
    })
}

/// A `4xx`'s code and message, classified by [`http::refusal`].
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> GatewayError {
    match serde_json::from_slice::<ApiResponse<serde_json::Value>>(body) {
        Ok(answer) => http::refusal(status, answer.code, answer.message),
        Err(_) => http::refusal(status, None, http::excerpt(body)),
    }
}

fn success_data(body: &[u8]) -> Result<PaymentData, GatewayError> {
    let answer: ApiResponse<PaymentData> =
        serde_json::from_slice(body).map_err(|e| GatewayError::Ambiguous {
            reason: format!("unreadable success answer ({e}): {}", http::excerpt(body)),
        })?;
    answer.data.ok_or_else(|| GatewayError::Ambiguous {
        reason: "success answer without data".into(),
    })
}

fn failure(data: &PaymentData) -> (String, String) {
    (
        data.failure_code
            .clone()
            .unwrap_or_else(|| callback::DEFAULT_FAILURE_CODE.into()),
        data.gateway_response
            .clone()
            .unwrap_or_else(|| "declined by provider".into()),
    )
}

#[async_trait]
impl PaymentGateway for JsonGateway {
    fn name(&self) -> &GatewayName {
        &self.conn.name
    }

    async fn deposit(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        let body = wire::ChargeRequest {
            reference: tx.id.to_string(),
            amount: tx.money.amount.minor_units(),
            currency: tx.money.currency.code().into(),
            customer: tx.customer.as_str().to_owned(),
        };
        self.submit(wire::CHARGE_PATH, &body, tx).await
    }

    async fn withdraw(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        let body = wire::TransferRequest {
            source: "balance".into(),
            reference: tx.id.to_string(),
            amount: tx.money.amount.minor_units(),
            currency: tx.money.currency.code().into(),
            recipient: tx.customer.as_str().to_owned(),
        };
        self.submit(wire::TRANSFER_PATH, &body, tx).await
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
        verify(&self.conn.webhook_secret, request)?;
        let raw: serde_json::Value =
            serde_json::from_slice(&request.body).map_err(callback::malformed)?;
        if raw
            .get("event")
            .and_then(|e| e.as_str())
            .is_some_and(|e| e.starts_with("refund."))
        {
            return self.refund_callback(raw, request);
        }
        let event: WebhookEvent = serde_json::from_value(raw).map_err(callback::malformed)?;
        callback::check_fresh(
            event.sent_at,
            request.received_at,
            self.conn.callback_tolerance,
        )?;
        let kind = match event.event.split('.').next() {
            Some("charge") => Some(TransactionKind::Deposit),
            Some("transfer") => Some(TransactionKind::Withdrawal),
            _ => None,
        };
        let status = match (event.event.as_str(), event.data.status) {
            ("charge.success" | "transfer.success", PaymentState::Success) => {
                ReportedStatus::Succeeded
            }
            ("charge.failed" | "transfer.failed", PaymentState::Failed) => {
                let (code, reason) = failure(&event.data);
                ReportedStatus::Failed { code, reason }
            }
            (other, state) => {
                return Err(callback::malformed(format!(
                    "event {other:?} with data status {state:?}"
                )))
            }
        };
        Ok(CallbackEvent::Payment(CallbackOutcome {
            transaction_id: callback::parse_reference(&event.data.reference)?,
            status,
            provider_reference: callback::non_empty("data.id", &event.data.id)?,
            provider_event_id: callback::non_empty("event_id", &event.event_id)?,
            money: callback::parse_money(event.data.amount, &event.data.currency)?,
            kind,
        }))
    }

    async fn refund(
        &self,
        tx: &Transaction,
        refund: &RefundRequest,
    ) -> Result<RefundOutcome, GatewayError> {
        let body = wire::RefundRequest {
            transaction: tx.id.to_string(),
            reference: refund.id.to_string(),
            amount: refund.money.amount.minor_units(),
            currency: refund.money.currency.code().into(),
        };
        let request = self
            .conn
            .client
            .post(self.conn.url(wire::REFUND_PATH)?)
            .bearer_auth(self.conn.secret_key.expose())
            .header(wire::IDEMPOTENCY_HEADER, refund.id.to_string())
            .json(&body);
        let (status, headers, body) = http::exchange(request).await?;
        if let Some(error) = http::classify_status(status, &headers) {
            return Err(error);
        }
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        let answer: ApiResponse<wire::RefundData> =
            serde_json::from_slice(&body).map_err(|e| GatewayError::Ambiguous {
                reason: format!("unreadable refund answer ({e}): {}", http::excerpt(&body)),
            })?;
        let data = answer.data.ok_or_else(|| GatewayError::Ambiguous {
            reason: "refund answer without data".into(),
        })?;
        if data.reference != refund.id.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("refund answer names reference {:?}", data.reference),
            });
        }
        Ok(RefundOutcome {
            provider_reference: data.id.clone(),
            status: refund_status(&data),
        })
    }

    async fn status(&self, tx: &Transaction) -> Result<ProviderStatus, GatewayError> {
        let path = match tx.kind {
            TransactionKind::Deposit => wire::CHARGE_VERIFY_PATH,
            TransactionKind::Withdrawal => wire::TRANSFER_VERIFY_PATH,
        };
        let request = self
            .conn
            .client
            .get(self.conn.url(&format!("{path}{}", tx.id))?)
            .bearer_auth(self.conn.secret_key.expose());
        let (status, headers, body) = http::exchange(request).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(ProviderStatus::NotFound);
        }
        if let Some(error) = http::classify_status(status, &headers) {
            return Err(error);
        }
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        let data = success_data(&body)?;
        let status = match data.status {
            PaymentState::Pending => return Ok(ProviderStatus::InProgress),
            PaymentState::Success => ReportedStatus::Succeeded,
            PaymentState::Failed => {
                let (code, reason) = failure(&data);
                ReportedStatus::Failed { code, reason }
            }
        };
        if data.reference != tx.id.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("status answer names reference {:?}", data.reference),
            });
        }
        Ok(ProviderStatus::Final {
            status,
            reported: Reported {
                money: Some(reported_money(&data)?),
                kind: None,
                provider_reference: Some(data.id),
            },
        })
    }
}

impl JsonGateway {
    /// A verified `refund.*` webhook, read as a [`RefundReport`].
    fn refund_callback(
        &self,
        raw: serde_json::Value,
        request: &CallbackRequest,
    ) -> Result<CallbackEvent, CallbackError> {
        let event: wire::RefundWebhookEvent =
            serde_json::from_value(raw).map_err(callback::malformed)?;
        callback::check_fresh(
            event.sent_at,
            request.received_at,
            self.conn.callback_tolerance,
        )?;
        let status = match (event.event.as_str(), event.data.status) {
            ("refund.processed", wire::RefundState::Succeeded) => RefundStatus::Succeeded,
            ("refund.failed", wire::RefundState::Failed) => refund_status(&event.data),
            ("refund.pending", wire::RefundState::Pending) => RefundStatus::Pending,
            (other, state) => {
                return Err(callback::malformed(format!(
                    "event {other:?} with refund status {state:?}"
                )))
            }
        };
        Ok(CallbackEvent::Refund(RefundReport {
            transaction_id: callback::parse_reference(&event.data.transaction)?,
            refund_id: RefundId::parse(&event.data.reference).ok(),
            provider_reference: callback::non_empty("data.id", &event.data.id)?,
            provider_event_id: callback::non_empty("event_id", &event.event_id)?,
            status,
            money: callback::parse_money(event.data.amount, &event.data.currency)?,
        }))
    }
}

fn refund_status(data: &wire::RefundData) -> RefundStatus {
    match data.status {
        wire::RefundState::Pending => RefundStatus::Pending,
        wire::RefundState::Succeeded => RefundStatus::Succeeded,
        wire::RefundState::Failed => RefundStatus::Failed {
            code: data
                .failure_code
                .clone()
                .unwrap_or_else(|| callback::DEFAULT_FAILURE_CODE.into()),
            reason: data
                .gateway_response
                .clone()
                .unwrap_or_else(|| "refused by provider".into()),
        },
    }
}

#[cfg(any(test, feature = "simulator"))]
/// A correctly signed refund webhook, as the provider would send it.
pub fn signed_refund_callback(
    webhook_secret: &Secret,
    event: &wire::RefundWebhookEvent,
) -> SignedCallback {
    let body = serde_json::to_vec(event).unwrap_or_default();
    sign_body(webhook_secret, Bytes::from(body))
}

#[cfg(any(test, feature = "simulator"))]
/// The signing rule: `x-sandbox-signature` = hex HMAC-SHA512 of the raw body.
pub fn sign_body(webhook_secret: &Secret, body: Bytes) -> SignedCallback {
    let signature = hex::encode(callback::hmac_sha512(
        webhook_secret.expose().as_bytes(),
        &[&body],
    ));
    SignedCallback {
        content_type: wire::CONTENT_TYPE.into(),
        headers: vec![(wire::SIGNATURE_HEADER.into(), signature)],
        body,
    }
}

fn verify(webhook_secret: &Secret, request: &CallbackRequest) -> Result<(), CallbackError> {
    let signature = callback::decode_hex_signature(callback::required_header(
        request,
        wire::SIGNATURE_HEADER,
    )?)?;
    callback::verify_sha512(
        webhook_secret.expose().as_bytes(),
        &[&request.body],
        &signature,
    )
}

#[cfg(any(test, feature = "simulator"))]
/// The webhook body for `fields`.
pub fn event(fields: &CallbackFields) -> WebhookEvent {
    let prefix = match fields.kind {
        TransactionKind::Deposit => "charge",
        TransactionKind::Withdrawal => "transfer",
    };
    let (suffix, status, gateway_response, failure_code) = match &fields.status {
        ReportedStatus::Succeeded => (
            "success",
            PaymentState::Success,
            Some("Approved".to_owned()),
            None,
        ),
        ReportedStatus::Failed { code, reason } => (
            "failed",
            PaymentState::Failed,
            Some(reason.clone()),
            Some(code.clone()),
        ),
    };
    WebhookEvent {
        event: format!("{prefix}.{suffix}"),
        event_id: fields.event_id.clone(),
        sent_at: fields.sent_at,
        data: PaymentData {
            id: fields.provider_reference.clone(),
            reference: fields.transaction_id.to_string(),
            status,
            amount: fields.money.amount.minor_units(),
            currency: fields.money.currency.code().into(),
            gateway_response,
            failure_code,
        },
    }
}

#[cfg(any(test, feature = "simulator"))]
/// A correctly signed webhook for `fields`, as the provider would send it.
pub fn signed_callback(webhook_secret: &Secret, fields: &CallbackFields) -> SignedCallback {
    let body = serde_json::to_vec(&event(fields)).unwrap_or_default();
    sign_body(webhook_secret, Bytes::from(body))
}

#[cfg(test)]
mod tests;
