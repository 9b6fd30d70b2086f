//! SOAP 1.1 over HTTP, XML with quick-xml's serde support.
//!
//! - `POST {base}/soap`, `Content-Type: text/xml; charset=utf-8`, `SOAPAction:
//!   "urn:sandbox:payments#Deposit"` (or `#Withdraw`, `#GetStatus`). The API key travels in
//!   the SOAP header (`<pay:Auth><pay:ApiKey>`), our transaction id as `<pay:Reference>`,
//!   the provider's idempotency key.
//! - Refusals are SOAP faults (HTTP 500 as SOAP 1.1 requires): `soap:Client` →
//!   `Permanent` (code from `<detail><pay:ErrorCode>`), `soap:Server` → `Retryable`,
//!   anything else → `Permanent`.
//! - Callbacks: a `<pay:PaymentNotification>` envelope, authenticated by the header
//!   `x-soap-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(webhook_secret, "<t>." + raw
//!   body)>`. Signing the raw bytes avoids XML canonicalisation; `t` is signed, so a stale
//!   one is refused.
//!
//! quick-xml's deserializer matches local names, so the types below serialize with the
//! `soap:`/`pay:` prefixes and deserialize by local name (any prefix the peer chose).
//! It never expands external entities or DTDs, so there is no XXE to guard against.

use std::sync::Arc;

use async_trait::async_trait;
#[cfg(any(test, feature = "simulator"))]
use bytes::Bytes;
use chrono::{DateTime, Utc};
use paygate_core::domain::{GatewayName, Transaction, TransactionKind};
use url::Url;

use crate::callback;
#[cfg(any(test, feature = "simulator"))]
use crate::callback::{CallbackFields, SignedCallback};
use crate::http;
use crate::registry::{GatewaySettings, RegistryError};
use crate::secret::Secret;
use crate::{
    CallbackError, CallbackEvent, CallbackOutcome, CallbackRequest, GatewayError, PaymentGateway,
    ProviderStatus, Reported, ReportedStatus, SubmitOutcome, SubmitStatus,
};

/// The provider's wire format, shared with the sandbox that plays this provider.
pub mod wire {
    use serde::{Deserialize, Serialize};

    pub const CONTENT_TYPE: &str = "text/xml; charset=utf-8";
    /// Media types accepted on callbacks.
    pub const ACCEPTED_TYPES: &[&str] = &["text/xml", "application/xml", "application/soap+xml"];
    pub const SIGNATURE_HEADER: &str = "x-soap-signature";
    /// The headers a callback is verified with (see `PaymentGateway::callback_headers`).
    pub const CALLBACK_HEADERS: &[&str] = &["content-type", SIGNATURE_HEADER];
    pub const SOAP_ACTION_HEADER: &str = "soapaction";
    pub const PATH: &str = "soap";
    pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
    pub const PAY_NS: &str = "urn:sandbox:payments";
    pub const ACTION_DEPOSIT: &str = "\"urn:sandbox:payments#Deposit\"";
    pub const ACTION_WITHDRAW: &str = "\"urn:sandbox:payments#Withdraw\"";
    pub const ACTION_STATUS: &str = "\"urn:sandbox:payments#GetStatus\"";

    /// `<soap:Envelope>` around a header and a body.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename(serialize = "soap:Envelope", deserialize = "Envelope"))]
    pub struct Envelope<T> {
        #[serde(rename = "@xmlns:soap", default, skip_deserializing)]
        pub xmlns_soap: String,
        #[serde(rename = "@xmlns:pay", default, skip_deserializing)]
        pub xmlns_pay: String,
        #[serde(
            rename(serialize = "soap:Header", deserialize = "Header"),
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub header: Option<Header>,
        #[serde(rename(serialize = "soap:Body", deserialize = "Body"))]
        pub body: Body<T>,
    }

    impl<T> Envelope<T> {
        pub fn new(header: Option<Header>, content: T) -> Self {
            Self {
                xmlns_soap: SOAP_NS.into(),
                xmlns_pay: PAY_NS.into(),
                header,
                body: Body { content },
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Body<T> {
        #[serde(rename = "$value")]
        pub content: T,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Header {
        #[serde(rename(serialize = "pay:Auth", deserialize = "Auth"))]
        pub auth: Auth,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Auth {
        #[serde(rename(serialize = "pay:ApiKey", deserialize = "ApiKey"))]
        pub api_key: String,
    }

    /// The body of a request.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Operation {
        #[serde(rename(serialize = "pay:Deposit", deserialize = "Deposit"))]
        Deposit(PaymentOrder),
        #[serde(rename(serialize = "pay:Withdraw", deserialize = "Withdraw"))]
        Withdraw(PaymentOrder),
        #[serde(rename(serialize = "pay:GetStatus", deserialize = "GetStatus"))]
        GetStatus(StatusQuery),
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PaymentOrder {
        /// Our transaction id: the idempotency reference.
        #[serde(rename(serialize = "pay:Reference", deserialize = "Reference"))]
        pub reference: String,
        /// Minor units.
        #[serde(rename(serialize = "pay:Amount", deserialize = "Amount"))]
        pub amount: i64,
        #[serde(rename(serialize = "pay:Currency", deserialize = "Currency"))]
        pub currency: String,
        #[serde(rename(serialize = "pay:Customer", deserialize = "Customer"))]
        pub customer: String,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StatusQuery {
        #[serde(rename(serialize = "pay:Reference", deserialize = "Reference"))]
        pub reference: String,
    }

    /// The body of a response.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Reply {
        #[serde(rename(serialize = "pay:DepositResponse", deserialize = "DepositResponse"))]
        Deposit(PaymentResult),
        #[serde(rename(serialize = "pay:WithdrawResponse", deserialize = "WithdrawResponse"))]
        Withdraw(PaymentResult),
        #[serde(rename(serialize = "pay:GetStatusResponse", deserialize = "GetStatusResponse"))]
        Status(PaymentResult),
        #[serde(rename(serialize = "soap:Fault", deserialize = "Fault"))]
        Fault(Fault),
    }

    /// `ACCEPTED`, `SUCCEEDED`, `FAILED`, and for status queries `NOT_FOUND`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    pub enum State {
        Accepted,
        Succeeded,
        Failed,
        NotFound,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct PaymentResult {
        #[serde(rename(serialize = "pay:Reference", deserialize = "Reference"))]
        pub reference: String,
        #[serde(rename(serialize = "pay:State", deserialize = "State"))]
        pub state: State,
        #[serde(
            rename(serialize = "pay:ProviderReference", deserialize = "ProviderReference"),
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub provider_reference: Option<String>,
        #[serde(
            rename(serialize = "pay:FailureCode", deserialize = "FailureCode"),
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub failure_code: Option<String>,
        #[serde(
            rename(serialize = "pay:FailureReason", deserialize = "FailureReason"),
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub failure_reason: Option<String>,
    }

    /// A SOAP 1.1 fault; its children are unqualified, as the spec says.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Fault {
        pub faultcode: String,
        pub faultstring: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub detail: Option<FaultDetail>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct FaultDetail {
        #[serde(
            rename(serialize = "pay:ErrorCode", deserialize = "ErrorCode"),
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub error_code: Option<String>,
    }

    /// The body of a callback.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Callback {
        #[serde(rename(
            serialize = "pay:PaymentNotification",
            deserialize = "PaymentNotification"
        ))]
        Notification(Notification),
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Notification {
        #[serde(rename(serialize = "pay:EventId", deserialize = "EventId"))]
        pub event_id: String,
        #[serde(rename(serialize = "pay:Reference", deserialize = "Reference"))]
        pub reference: String,
        /// `deposit` or `withdrawal`.
        #[serde(rename(serialize = "pay:Kind", deserialize = "Kind"))]
        pub kind: String,
        #[serde(rename(serialize = "pay:ProviderReference", deserialize = "ProviderReference"))]
        pub provider_reference: String,
        /// `SUCCEEDED` or `FAILED`.
        #[serde(rename(serialize = "pay:State", deserialize = "State"))]
        pub state: State,
        #[serde(
            rename(serialize = "pay:FailureCode", deserialize = "FailureCode"),
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub failure_code: Option<String>,
        #[serde(
            rename(serialize = "pay:FailureReason", deserialize = "FailureReason"),
            default,
            skip_serializing_if = "Option::is_none"
        )]
        pub failure_reason: Option<String>,
        #[serde(rename(serialize = "pay:Amount", deserialize = "Amount"))]
        pub amount: i64,
        #[serde(rename(serialize = "pay:Currency", deserialize = "Currency"))]
        pub currency: String,
        #[serde(rename(serialize = "pay:Timestamp", deserialize = "Timestamp"))]
        pub timestamp: String,
    }

    /// Serializes with an XML declaration.
    pub fn to_xml<T: Serialize>(value: &T) -> Result<String, quick_xml::SeError> {
        let mut text = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
        let mut serializer = quick_xml::se::Serializer::new(&mut text);
        serializer.expand_empty_elements(false);
        value.serialize(serializer)?;
        Ok(text)
    }

    /// Parses bytes as UTF-8 XML.
    pub fn from_xml<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        quick_xml::de::from_str(text).map_err(|e| e.to_string())
    }

    /// A fault envelope.
    pub fn fault(faultcode: &str, faultstring: &str, error_code: Option<&str>) -> Envelope<Reply> {
        Envelope::new(
            None,
            Reply::Fault(Fault {
                faultcode: faultcode.into(),
                faultstring: faultstring.into(),
                detail: error_code.map(|c| FaultDetail {
                    error_code: Some(c.into()),
                }),
            }),
        )
    }
}

use wire::{Envelope, Reply, State};

/// The SOAP connector.
pub struct SoapGateway {
    conn: http::Connection,
    /// `base_url` joined with the service path, computed once.
    endpoint: Url,
}

impl SoapGateway {
    pub fn new(settings: GatewaySettings) -> Result<Self, RegistryError> {
        let endpoint = settings
            .base_url
            .join(wire::PATH)
            .map_err(|e| settings.field_error("base_url", e.to_string()))?;
        Ok(Self {
            conn: http::Connection::new(settings)?,
            endpoint,
        })
    }

    /// The registry's constructor.
    pub fn from_settings(
        settings: GatewaySettings,
    ) -> Result<Arc<dyn PaymentGateway>, RegistryError> {
        Ok(Arc::new(Self::new(settings)?))
    }

    /// Sends one operation and returns the non-fault reply of a `2xx`.
    async fn call(&self, action: &str, operation: wire::Operation) -> Result<Reply, GatewayError> {
        let header = wire::Header {
            auth: wire::Auth {
                api_key: self.conn.secret_key.expose().to_owned(),
            },
        };
        let xml = wire::to_xml(&Envelope::new(Some(header), operation)).map_err(|e| {
            GatewayError::Permanent {
                code: "invalid_request".into(),
                reason: e.to_string(),
            }
        })?;
        let request = self
            .conn
            .client
            .post(self.endpoint.clone())
            .header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE)
            .header(wire::SOAP_ACTION_HEADER, action)
            .body(xml);
        let (status, headers, body) = http::exchange(request).await?;
        // These mean the same whatever the body says. A 500 is read first: SOAP 1.1 sends
        // every fault (a decline too) with it, and a `Server` fault is ambiguous anyway.
        if matches!(status.as_u16(), 408 | 429 | 501..=599)
            || status.is_redirection()
            || status.is_informational()
        {
            if let Some(error) = http::classify_status(status, &headers) {
                return Err(error);
            }
        }
        let (body, parsed) = parse_reply(body).await;
        match parsed {
            Ok(envelope) => match envelope.body.content {
                Reply::Fault(fault) => Err(fault_error(&fault, status)),
                reply if status.is_success() => Ok(reply),
                _ => Err(http::classify_status(status, &headers).unwrap_or_else(|| {
                    GatewayError::Permanent {
                        code: format!("http_{}", status.as_u16()),
                        reason: "non-fault reply with an error status".into(),
                    }
                })),
            },
            Err(error) => Err(match http::classify_status(status, &headers) {
                Some(class) => class,
                None if status.is_success() => GatewayError::Ambiguous {
                    reason: format!(
                        "unreadable success reply ({error}): {}",
                        http::excerpt(&body)
                    ),
                },
                None => http::refusal(status, None, http::excerpt(&body)),
            }),
        }
    }

    async fn submit(
        &self,
        action: &str,
        operation: wire::Operation,
        tx: &Transaction,
    ) -> Result<SubmitOutcome, GatewayError> {
        let result = match self.call(action, operation).await? {
            Reply::Deposit(r) | Reply::Withdraw(r) => r,
            other => {
                return Err(GatewayError::Ambiguous {
                    reason: format!("unexpected reply {other:?}"),
                })
            }
        };
        if result.reference != tx.id.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("reply names reference {:?}", result.reference),
            });
        }
        let status = match result.state {
            State::Accepted => SubmitStatus::Accepted,
            State::Succeeded => SubmitStatus::Succeeded,
            State::Failed => {
                let (code, reason) = failure(result.failure_code, result.failure_reason);
                return Err(GatewayError::declined(code, reason));
            }
            State::NotFound => {
                return Err(GatewayError::Ambiguous {
                    reason: "NOT_FOUND in a submit reply".into(),
                })
            }
        };
        let provider_reference =
            result
                .provider_reference
                .ok_or_else(|| GatewayError::Ambiguous {
                    reason: "reply without ProviderReference".into(),
                })?;
        Ok(SubmitOutcome {
            provider_reference,
            status,
            // This protocol's replies carry no amount.
            money: None,
        })
    }

    fn order(tx: &Transaction) -> wire::PaymentOrder {
        wire::PaymentOrder {
            reference: tx.id.to_string(),
            amount: tx.money.amount.minor_units(),
            currency: tx.money.currency.code().into(),
            customer: tx.customer.as_str().to_owned(),
        }
    }
}

fn failure(code: Option<String>, reason: Option<String>) -> (String, String) {
    (
        code.unwrap_or_else(|| callback::DEFAULT_FAILURE_CODE.into()),
        reason.unwrap_or_else(|| "declined by provider".into()),
    )
}

/// Parses a reply off the runtime's worker threads: up to [`http::MAX_RESPONSE_BYTES`] of a
/// provider's XML is CPU work that must not stall the other requests on the same worker
/// (quick-xml's attribute check was quadratic before 0.41, RUSTSEC-2026-0194). A parse that
/// does not finish reads as unparseable, which a success status makes `Ambiguous`.
async fn parse_reply(body: Vec<u8>) -> (Vec<u8>, Result<Envelope<Reply>, String>) {
    let joined = tokio::task::spawn_blocking(move || {
        let parsed = wire::from_xml::<Envelope<Reply>>(&body);
        (body, parsed)
    })
    .await;
    joined.unwrap_or_else(|error| {
        (
            Vec::new(),
            Err(format!("the XML parse did not finish: {error}")),
        )
    })
}

/// Maps a fault to an error class by its code's local part (`soap:Client.Declined` → `Client`).
/// A `Server` fault is the provider failing while handling the request: it may have
/// executed, so it is ambiguous (the rule on [`GatewayError`]). A `Client` fault is a refusal
/// ([`http::refusal`]: a duplicate reference is ambiguous, anything else permanent).
fn fault_error(fault: &wire::Fault, status: reqwest::StatusCode) -> GatewayError {
    let local = fault.faultcode.rsplit(':').next().unwrap_or_default();
    let class = local.split('.').next().unwrap_or_default();
    let code = fault.detail.as_ref().and_then(|d| d.error_code.clone());
    match class {
        "Server" => GatewayError::Ambiguous {
            reason: format!("SOAP server fault: {}", fault.faultstring),
        },
        "Client" => http::refusal(
            status,
            Some(code.unwrap_or_else(|| "client_fault".into())),
            fault.faultstring.clone(),
        ),
        _ => http::refusal(
            status,
            Some(code.unwrap_or_else(|| format!("soap_{}", local.to_ascii_lowercase()))),
            fault.faultstring.clone(),
        ),
    }
}

#[async_trait]
impl PaymentGateway for SoapGateway {
    fn name(&self) -> &GatewayName {
        &self.conn.name
    }

    async fn deposit(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        self.submit(
            wire::ACTION_DEPOSIT,
            wire::Operation::Deposit(Self::order(tx)),
            tx,
        )
        .await
    }

    async fn withdraw(&self, tx: &Transaction) -> Result<SubmitOutcome, GatewayError> {
        self.submit(
            wire::ACTION_WITHDRAW,
            wire::Operation::Withdraw(Self::order(tx)),
            tx,
        )
        .await
    }

    fn callback_content_types(&self) -> &'static [&'static str] {
        wire::ACCEPTED_TYPES
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
        let timestamp = verify(&self.conn.webhook_secret, request)?;
        callback::check_fresh(timestamp, request.received_at, self.conn.callback_tolerance)?;
        let envelope: Envelope<wire::Callback> =
            wire::from_xml(&request.body).map_err(callback::malformed)?;
        let wire::Callback::Notification(n) = envelope.body.content;
        let status = match n.state {
            State::Succeeded => ReportedStatus::Succeeded,
            State::Failed => {
                let (code, reason) = failure(n.failure_code, n.failure_reason);
                ReportedStatus::Failed { code, reason }
            }
            other => return Err(callback::malformed(format!("notification state {other:?}"))),
        };
        Ok(CallbackEvent::Payment(CallbackOutcome {
            transaction_id: callback::parse_reference(&n.reference)?,
            status,
            provider_reference: callback::non_empty("ProviderReference", &n.provider_reference)?,
            provider_event_id: callback::non_empty("EventId", &n.event_id)?,
            money: callback::parse_money(n.amount, &n.currency)?,
            kind: match n.kind.as_str() {
                "deposit" => Some(TransactionKind::Deposit),
                "withdrawal" => Some(TransactionKind::Withdrawal),
                _ => None,
            },
        }))
    }

    async fn status(&self, tx: &Transaction) -> Result<ProviderStatus, GatewayError> {
        let query = wire::Operation::GetStatus(wire::StatusQuery {
            reference: tx.id.to_string(),
        });
        let result = match self.call(wire::ACTION_STATUS, query).await? {
            Reply::Status(r) => r,
            other => {
                return Err(GatewayError::Ambiguous {
                    reason: format!("unexpected reply {other:?}"),
                })
            }
        };
        let status = match result.state {
            State::NotFound => return Ok(ProviderStatus::NotFound),
            State::Accepted => return Ok(ProviderStatus::InProgress),
            State::Succeeded => ReportedStatus::Succeeded,
            State::Failed => {
                let (code, reason) = failure(result.failure_code, result.failure_reason);
                ReportedStatus::Failed { code, reason }
            }
        };
        if result.reference != tx.id.to_string() {
            return Err(GatewayError::Ambiguous {
                reason: format!("status reply names reference {:?}", result.reference),
            });
        }
        Ok(ProviderStatus::Final {
            status,
            reported: Reported {
                money: None,
                kind: None,
                provider_reference: result.provider_reference,
            },
        })
    }
}

#[cfg(any(test, feature = "simulator"))]
/// The signing rule: `x-soap-signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
pub fn sign_body(webhook_secret: &Secret, body: Bytes, at: DateTime<Utc>) -> SignedCallback {
    let t = at.timestamp().to_string();
    let tag = callback::hmac_sha256(
        webhook_secret.expose().as_bytes(),
        &[t.as_bytes(), b".", &body],
    );
    SignedCallback {
        content_type: wire::CONTENT_TYPE.into(),
        headers: vec![(
            wire::SIGNATURE_HEADER.into(),
            format!("t={t},v1={}", hex::encode(tag)),
        )],
        body,
    }
}

/// Checks the signature header and returns its (signed) timestamp.
fn verify(
    webhook_secret: &Secret,
    request: &CallbackRequest,
) -> Result<DateTime<Utc>, CallbackError> {
    let header = callback::required_header(request, wire::SIGNATURE_HEADER)?;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = Some(value),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(CallbackError::Unauthenticated(format!(
            "{} needs t= and v1=",
            wire::SIGNATURE_HEADER
        )));
    };
    let tag = callback::decode_hex_signature(v1)?;
    callback::verify_sha256(
        webhook_secret.expose().as_bytes(),
        &[t.as_bytes(), b".", &request.body],
        &tag,
    )?;
    t.parse::<i64>()
        .ok()
        .and_then(|secs| DateTime::from_timestamp(secs, 0))
        .ok_or_else(|| {
            CallbackError::Unauthenticated("signature timestamp is not unix seconds".into())
        })
}

#[cfg(any(test, feature = "simulator"))]
/// The notification envelope for `fields`.
pub fn notification(fields: &CallbackFields) -> Envelope<wire::Callback> {
    let (state, failure_code, failure_reason) = match &fields.status {
        ReportedStatus::Succeeded => (State::Succeeded, None, None),
        ReportedStatus::Failed { code, reason } => {
            (State::Failed, Some(code.clone()), Some(reason.clone()))
        }
    };
    Envelope::new(
        None,
        wire::Callback::Notification(wire::Notification {
            event_id: fields.event_id.clone(),
            reference: fields.transaction_id.to_string(),
            kind: match fields.kind {
                TransactionKind::Deposit => "deposit".into(),
                TransactionKind::Withdrawal => "withdrawal".into(),
            },
            provider_reference: fields.provider_reference.clone(),
            state,
            failure_code,
            failure_reason,
            amount: fields.money.amount.minor_units(),
            currency: fields.money.currency.code().into(),
            timestamp: fields.sent_at.to_rfc3339(),
        }),
    )
}

#[cfg(any(test, feature = "simulator"))]
/// A correctly signed notification for `fields`, as the provider would send it.
pub fn signed_callback(webhook_secret: &Secret, fields: &CallbackFields) -> SignedCallback {
    let body = wire::to_xml(&notification(fields)).unwrap_or_default();
    sign_body(webhook_secret, Bytes::from(body), fields.sent_at)
}

#[cfg(test)]
mod tests;
