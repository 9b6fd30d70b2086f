//! Versioned protobuf event payloads (prost). Every message on every topic is an
//! [`Envelope`]: a schema version, an event id, a time, and exactly one body.
//!
//! Compatibility rule: fields are only ever added with new tags; a consumer refuses an
//! envelope whose `schema_version` is newer than it understands (to the DLQ, not silently
//! half-read). The schema in `.proto` form is `docs/events.proto`.

use prost::Message;

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct Envelope {
    #[prost(uint32, tag = "1")]
    pub schema_version: u32,
    /// Unique per event; consumers may dedupe by it.
    #[prost(string, tag = "2")]
    pub event_id: String,
    #[prost(int64, tag = "3")]
    pub occurred_at_unix_ms: i64,
    #[prost(oneof = "Body", tags = "10, 11, 12, 13, 14, 15")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    #[prost(message, tag = "10")]
    TransactionPending(TransactionPending),
    #[prost(message, tag = "11")]
    CallbackReceived(CallbackReceived),
    #[prost(message, tag = "12")]
    TransactionCompleted(TransactionCompleted),
    #[prost(message, tag = "13")]
    DeadLetter(DeadLetter),
    /// On `transactions.pending`, keyed by the refunded payment's id.
    #[prost(message, tag = "14")]
    RefundPending(RefundPending),
    /// On `transactions.completed`, keyed by the refunded payment's id.
    #[prost(message, tag = "15")]
    RefundCompleted(RefundCompleted),
}

/// A refund is ready for a provider call. It rides the payment processor's own topic (keyed
/// by the payment, so a refund is ordered after its payment on one partition) instead of a
/// topic of its own: the processor's consumer, its group, its DLQ and its deployment stay
/// as they are, and it only dispatches on the body.
#[derive(Clone, PartialEq, Message)]
pub struct RefundPending {
    #[prost(string, tag = "1")]
    pub refund_id: String,
    /// The version the publisher saw; informational (the row's version is what counts).
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A refund reached a terminal state: the dispatcher tells the merchant.
#[derive(Clone, PartialEq, Message)]
pub struct RefundCompleted {
    #[prost(string, tag = "1")]
    pub refund_id: String,
    #[prost(string, tag = "2")]
    pub merchant_id: String,
    /// `succeeded` or `failed`.
    #[prost(string, tag = "3")]
    pub status: String,
    #[prost(int64, tag = "4")]
    pub version: i64,
}

/// A transaction is ready for (another) provider attempt. The processor reloads the row;
/// the event only names it, so a stale copy can never be acted on.
#[derive(Clone, PartialEq, Message)]
pub struct TransactionPending {
    #[prost(string, tag = "1")]
    pub transaction_id: String,
    /// The version the publisher saw; informational (the row's version is what counts).
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A provider callback as received and authenticated by the API, raw, for the callback
/// processor to parse with the same gateway.
#[derive(Clone, PartialEq, Message)]
pub struct CallbackReceived {
    #[prost(string, tag = "1")]
    pub gateway: String,
    #[prost(string, tag = "2")]
    pub content_type: String,
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
    #[prost(map = "string, string", tag = "4")]
    pub headers: std::collections::HashMap<String, String>,
    #[prost(int64, tag = "5")]
    pub received_at_unix_ms: i64,
    /// The callback URL's path after `/callbacks/{gateway}/` (an unsigned provider's
    /// reference and secret token); empty for signed providers.
    #[prost(string, tag = "6")]
    pub path: String,
}

/// A transaction reached a terminal state: the dispatcher tells the merchant.
#[derive(Clone, PartialEq, Message)]
pub struct TransactionCompleted {
    #[prost(string, tag = "1")]
    pub transaction_id: String,
    #[prost(string, tag = "2")]
    pub merchant_id: String,
    /// `succeeded` or `failed`.
    #[prost(string, tag = "3")]
    pub status: String,
    #[prost(int64, tag = "4")]
    pub version: i64,
}

/// A message that could not be handled, kept whole with the reason.
#[derive(Clone, PartialEq, Message)]
pub struct DeadLetter {
    #[prost(string, tag = "1")]
    pub source_topic: String,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    #[prost(int64, tag = "3")]
    pub offset: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub payload: Vec<u8>,
    #[prost(string, tag = "6")]
    pub reason: String,
    #[prost(string, tag = "7")]
    pub consumer_group: String,
}

/// Why bytes are not a usable envelope.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("undecodable event: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("event schema version {0} is newer than this build understands ({SCHEMA_VERSION})")]
    UnsupportedVersion(u32),
    #[error("event has no body")]
    Empty,
}

impl Envelope {
    /// Wraps a body with a fresh event id and the current time.
    pub fn new(body: Body) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            event_id: uuid::Uuid::now_v7().simple().to_string(),
            occurred_at_unix_ms: chrono::Utc::now().timestamp_millis(),
            body: Some(body),
        }
    }

    pub fn encode_to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes and checks the version and body; the only way services read events.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, EventError> {
        let envelope = Self::decode(bytes)?;
        if envelope.schema_version == 0 || envelope.schema_version > SCHEMA_VERSION {
            return Err(EventError::UnsupportedVersion(envelope.schema_version));
        }
        if envelope.body.is_none() {
            return Err(EventError::Empty);
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_check_version() {
        let env = Envelope::new(Body::TransactionPending(TransactionPending {
            transaction_id: "txn_1".into(),
            version: 3,
        }));
        let bytes = env.encode_to_bytes();
        assert_eq!(Envelope::decode_checked(&bytes).ok(), Some(env.clone()));

        let future = Envelope {
            schema_version: SCHEMA_VERSION + 1,
            ..env.clone()
        };
        assert!(matches!(
            Envelope::decode_checked(&future.encode_to_bytes()),
            Err(EventError::UnsupportedVersion(_))
        ));
        let empty = Envelope { body: None, ..env };
        assert!(matches!(
            Envelope::decode_checked(&empty.encode_to_bytes()),
            Err(EventError::Empty)
        ));
        assert!(Envelope::decode_checked(b"\xff\xff\xff garbage").is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Envelope::decode_checked(&bytes);
        }
    }
}
