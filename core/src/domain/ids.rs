//! Typed identifiers.
//!
//! Every id is a UUID (v7, so ids sort by creation time and index well) shown to the outside
//! world with a short prefix naming what it identifies: `txn_0192…`. A transaction id can
//! therefore never be passed where a merchant id is expected, in code or over the API, and
//! an id pasted into the wrong endpoint is refused as malformed rather than looked up.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A string that is not a well-formed id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {kind} id (expected \"{prefix}_\" followed by 32 hex digits)")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
        #[sqlx(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }

            /// Parses the external form `prefix_<32 hex>`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                let error = || IdError { kind: $kind, prefix: $prefix, value: s.to_owned() };
                let hex = s
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .ok_or_else(error)?;
                if hex.len() != 32 {
                    return Err(error());
                }
                Uuid::try_parse(hex).map(Self).map_err(|_| error())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some(concat!("A ", $kind, " id: \"", $prefix, "_\" and 32 hex digits")))
                    .pattern(Some(concat!("^", $prefix, "_[0-9a-fA-F]{32}$")))
                    .examples([serde_json::json!(concat!($prefix, "_0192f4a1c2b37d8e9f0a1b2c3d4e5f60"))])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// Our id for a payment. It is also the idempotency reference every provider receives,
    /// so a retried attempt can never execute twice at the provider.
    TransactionId, "txn", "transaction"
);
typed_id!(
    /// Our id for a refund of a payment: the provider's idempotency reference for it.
    RefundId, "rfd", "refund"
);
typed_id!(
    /// A merchant: the owner of API keys, transactions and webhook endpoints.
    MerchantId, "mer", "merchant"
);
typed_id!(
    /// One API key of a merchant (the key itself is secret and stored only as a hash).
    ApiKeyId, "key", "API key"
);
typed_id!(
    /// A merchant's registered webhook endpoint.
    WebhookEndpointId, "we", "webhook endpoint"
);
typed_id!(
    /// An event told to merchants; the `webhook-id` a receiver dedupes by.
    EventId, "evt", "event"
);
typed_id!(
    /// One attempt to deliver an event to one endpoint.
    DeliveryAttemptId, "att", "delivery attempt"
);
typed_id!(
    /// A person who signs in to the console (a merchant user or an operator).
    ConsoleUserId, "usr", "console user"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_external_form() {
        let id = TransactionId::new();
        let text = id.to_string();
        assert!(text.starts_with("txn_") && text.len() == 36, "{text}");
        assert_eq!(TransactionId::parse(&text), Ok(id));
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(serde_json::from_str::<TransactionId>(&json).ok(), Some(id));
    }

    #[test]
    fn ids_of_another_kind_or_malformed_are_refused() {
        let merchant = MerchantId::new().to_string();
        assert!(TransactionId::parse(&merchant).is_err());
        for bad in [
            "",
            "txn_",
            "txn_123",
            "txn-0192f4a1c2b37d8e9f0a1b2c3d4e5f60",
            "0192f4a1c2b37d8e9f0a1b2c3d4e5f60",
            "txn_0192f4a1c2b37d8e9f0a1b2c3d4e5fzz",
            "txn_0192f4a1-c2b3-7d8e-9f0a-1b2c3d4e5f60",
        ] {
            assert!(TransactionId::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn new_ids_sort_by_creation() {
        let a = TransactionId::new();
        let b = TransactionId::new();
        assert!(a < b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
    }
}
