//! Small validated strings: gateway names and customer references.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("gateway name must be 1-32 characters of a-z, 0-9, '-' or '_' starting with a letter, got {0:?}")]
    Gateway(String),
    #[error("customer reference must be 1-128 printable characters, got {0} characters")]
    CustomerReference(usize),
}

/// The configured name of a gateway instance (`[gateways.<name>]`), e.g. `paystack-ng`.
/// It appears in URLs (`/callbacks/{gateway}`), metrics labels and config keys, so it is
/// kept to a URL- and label-safe alphabet.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct GatewayName(String);

impl GatewayName {
    /// The longest gateway name, in characters (all ASCII).
    pub const MAX_LEN: usize = 32;
    /// What [`GatewayName::parse`] admits, as the API document's pattern.
    pub const PATTERN: &'static str = "^[a-z][a-z0-9_-]{0,31}$";

    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Gateway(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GatewayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GatewayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GatewayName({})", self.0)
    }
}

impl FromStr for GatewayName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for GatewayName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The merchant's reference for the customer or account money moves to or from (a wallet
/// id, an account number). Opaque to us; only bounded and printable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct CustomerReference(String);

impl CustomerReference {
    /// The longest reference, in characters.
    pub const MAX_CHARS: usize = 128;
    /// What [`CustomerReference::parse`] admits besides the length, as the API document's
    /// pattern: no control character (Unicode `Cc`: U+0000–U+001F, U+007F–U+009F) and at
    /// least one character that is not white space.
    pub const PATTERN: &'static str =
        "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";

    pub fn parse(s: &str) -> Result<Self, NameError> {
        let len = s.chars().count();
        if (1..=Self::MAX_CHARS).contains(&len)
            && !s.chars().any(char::is_control)
            && !s.trim().is_empty()
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::CustomerReference(len))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CustomerReference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for GatewayName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A gateway name: a lower-case letter, then lower-case letters, digits, `-` or `_`",
            ))
            .min_length(Some(1))
            .max_length(Some(Self::MAX_LEN))
            .pattern(Some(Self::PATTERN))
            .examples([serde_json::json!("sandbox-json")])
            .into()
    }
}

impl utoipa::ToSchema for GatewayName {}

impl utoipa::PartialSchema for CustomerReference {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "Your reference for the customer's account: no control characters, not only white space",
            ))
            .min_length(Some(1))
            .max_length(Some(Self::MAX_CHARS))
            .pattern(Some(Self::PATTERN))
            .examples([serde_json::json!("cust_8812")])
            .into()
    }
}

impl utoipa::ToSchema for CustomerReference {}

/// Free text a person writes into an audit row (a resolution's reason, a review's note):
/// trimmed, and only if 1 to `max` characters remain.
pub fn bounded_text(text: &str, max: usize) -> Option<&str> {
    let text = text.trim();
    (!text.is_empty() && text.chars().count() <= max).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names() {
        for good in ["sandbox-json", "paystack", "p2", "a_b"] {
            assert!(GatewayName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Sandbox", "1abc", "a b", "a/b", "ünï", &"a".repeat(33)] {
            assert!(GatewayName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn customer_references() {
        assert!(CustomerReference::parse("acct_42").is_ok());
        assert!(CustomerReference::parse("").is_err());
        assert!(CustomerReference::parse("   ").is_err());
        assert!(CustomerReference::parse("a\nb").is_err());
        assert!(CustomerReference::parse(&"x".repeat(129)).is_err());
        assert!(CustomerReference::parse(&"é".repeat(128)).is_ok());
    }
}
