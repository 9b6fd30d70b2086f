//! What every callback format shares: the fields a provider reports, the signed HTTP
//! request a provider sends, and the checks done before a body is believed (size, content
//! type, HMAC in constant time, timestamp freshness).
//!
//! Each connector module owns its format's signing rule in one pair of functions
//! (`sign_body` / verify) and exposes `signed_callback(secret, &CallbackFields)`, which the
//! sandbox uses to send callbacks and tests use to send valid and forged ones.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use paygate_core::domain::{Money, TransactionId, TransactionKind};
use sha2::{Sha256, Sha512};

use crate::{CallbackError, CallbackRequest, ReportedStatus};

/// The facts of one provider event, independent of the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackFields {
    /// Our transaction id: the idempotency reference we sent.
    pub transaction_id: TransactionId,
    pub kind: TransactionKind,
    pub status: ReportedStatus,
    pub provider_reference: String,
    /// The provider's event id (repeats of one event share it).
    pub event_id: String,
    /// What the provider says moved.
    pub money: Money,
    /// When the provider sent it; signed, and checked for freshness on receipt.
    pub sent_at: DateTime<Utc>,
}

/// A callback ready to POST: content type, extra headers (lower-case names), raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCallback {
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl SignedCallback {
    /// The request paygate would see on receiving this at `received_at`.
    pub fn to_request(&self, received_at: DateTime<Utc>) -> CallbackRequest {
        let mut headers: BTreeMap<String, String> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        headers.insert("content-type".into(), self.content_type.clone());
        CallbackRequest {
            body: self.body.clone(),
            content_type: Some(self.content_type.clone()),
            headers,
            received_at,
            path: None,
        }
    }
}

/// Refuses an over-sized body or a content type outside `accepted` (media types compared
/// case-insensitively, parameters such as `charset` ignored). Done before any crypto, so
/// junk costs nothing.
pub fn check_envelope(
    request: &CallbackRequest,
    max_bytes: usize,
    accepted: &[&str],
) -> Result<(), CallbackError> {
    if request.body.len() > max_bytes {
        return Err(CallbackError::TooLarge);
    }
    let declared = request
        .content_type
        .as_deref()
        .or_else(|| request.headers.get("content-type").map(String::as_str));
    let Some(declared) = declared else {
        return Err(CallbackError::UnsupportedContentType("none given".into()));
    };
    let media = declared.split(';').next().unwrap_or_default().trim();
    if accepted.iter().any(|a| a.eq_ignore_ascii_case(media)) {
        Ok(())
    } else {
        Err(CallbackError::UnsupportedContentType(
            media.chars().take(100).collect(),
        ))
    }
}

/// A header's value, or `Unauthenticated` naming it.
pub fn required_header<'a>(
    request: &'a CallbackRequest,
    name: &str,
) -> Result<&'a str, CallbackError> {
    request
        .headers
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| CallbackError::Unauthenticated(format!("missing {name} header")))
}

/// Refuses a timestamp further than `tolerance` from the receipt time, either way (a
/// replayed old callback, or one from a provider whose clock is badly off).
pub fn check_fresh(
    sent_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), CallbackError> {
    let skew = (received_at - sent_at)
        .abs()
        .to_std()
        .unwrap_or(Duration::MAX);
    if skew > tolerance {
        return Err(CallbackError::Unauthenticated(format!(
            "timestamp {sent_at} is {}s from receipt, more than the {}s allowed",
            skew.as_secs(),
            tolerance.as_secs()
        )));
    }
    Ok(())
}

/// HMAC-SHA512 over the concatenated parts.
pub fn hmac_sha512(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(secret) else {
        return Vec::new();
    };
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().to_vec()
}

/// HMAC-SHA256 over the concatenated parts.
pub fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().to_vec()
}

/// Constant-time check of an HMAC-SHA512 tag.
pub fn verify_sha512(secret: &[u8], parts: &[&[u8]], tag: &[u8]) -> Result<(), CallbackError> {
    let Ok(mut mac) = Hmac::<Sha512>::new_from_slice(secret) else {
        return Err(CallbackError::Unauthenticated("unusable secret".into()));
    };
    parts.iter().for_each(|p| mac.update(p));
    mac.verify_slice(tag)
        .map_err(|_| CallbackError::Unauthenticated("signature mismatch".into()))
}

/// Constant-time check of an HMAC-SHA256 tag.
pub fn verify_sha256(secret: &[u8], parts: &[&[u8]], tag: &[u8]) -> Result<(), CallbackError> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Err(CallbackError::Unauthenticated("unusable secret".into()));
    };
    parts.iter().for_each(|p| mac.update(p));
    mac.verify_slice(tag)
        .map_err(|_| CallbackError::Unauthenticated("signature mismatch".into()))
}

/// The secret path token of an unsigned provider's callback URL for one reference
/// ([`crate::CallbackAuth::PathToken`]): hex HMAC-SHA256 of `"callback-path:{reference}"`
/// keyed with the gateway's webhook secret, truncated to 32 hex digits (128 bits). One
/// token per payment, so a URL seen in a log opens no other payment's door.
pub fn path_token(secret: &[u8], reference: &str) -> String {
    let tag = hmac_sha256(secret, &[b"callback-path:", reference.as_bytes()]);
    hex::encode(tag.get(..16).unwrap_or_default())
}

/// Checks a callback path's token in constant time.
pub fn verify_path_token(secret: &[u8], reference: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let expected = path_token(secret, reference);
    expected.len() == token.len() && bool::from(expected.as_bytes().ct_eq(token.as_bytes()))
}

/// Decodes a hex signature; anything else is `Unauthenticated`.
pub fn decode_hex_signature(text: &str) -> Result<Vec<u8>, CallbackError> {
    hex::decode(text.trim())
        .map_err(|_| CallbackError::Unauthenticated("signature is not hex".into()))
}

/// `Malformed` with a bounded message (never echoing a whole hostile body).
pub fn malformed(what: impl std::fmt::Display) -> CallbackError {
    let text = what.to_string();
    CallbackError::Malformed(text.chars().take(300).collect())
}

/// Parses our transaction id out of a provider's reference field.
pub fn parse_reference(reference: &str) -> Result<TransactionId, CallbackError> {
    TransactionId::parse(reference).map_err(malformed)
}

/// Builds the reported money, refusing what our domain cannot hold.
pub fn parse_money(minor_units: i64, currency: &str) -> Result<Money, CallbackError> {
    Money::from_parts(minor_units, currency).map_err(malformed)
}

/// A provider id field must be present and sane.
pub fn non_empty(field: &str, value: &str) -> Result<String, CallbackError> {
    if value.trim().is_empty() || value.len() > 256 {
        return Err(malformed(format!("{field} must be 1-256 characters")));
    }
    Ok(value.to_owned())
}

/// The failure code used when a provider gives none.
pub const DEFAULT_FAILURE_CODE: &str = "declined";

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_type: Option<&str>, body: &'static [u8]) -> CallbackRequest {
        CallbackRequest {
            body: Bytes::from_static(body),
            content_type: content_type.map(str::to_owned),
            headers: BTreeMap::new(),
            received_at: Utc::now(),
            path: None,
        }
    }

    #[test]
    fn envelope_checks_size_then_media_type() {
        assert_eq!(
            check_envelope(
                &request(Some("application/json"), b"{}"),
                1,
                &["application/json"]
            ),
            Err(CallbackError::TooLarge)
        );
        assert_eq!(
            check_envelope(
                &request(Some("Application/JSON; charset=utf-8"), b"{}"),
                10,
                &["application/json"]
            ),
            Ok(())
        );
        assert!(matches!(
            check_envelope(&request(Some("text/plain"), b"{}"), 10, &["application/json"]),
            Err(CallbackError::UnsupportedContentType(t)) if t == "text/plain"
        ));
        assert!(matches!(
            check_envelope(&request(None, b"{}"), 10, &["application/json"]),
            Err(CallbackError::UnsupportedContentType(_))
        ));
    }

    #[test]
    fn freshness_is_judged_against_receipt_both_ways() {
        let now = Utc::now();
        let tolerance = Duration::from_secs(300);
        assert_eq!(
            check_fresh(now - chrono::Duration::seconds(299), now, tolerance),
            Ok(())
        );
        assert!(check_fresh(now - chrono::Duration::seconds(301), now, tolerance).is_err());
        assert!(check_fresh(now + chrono::Duration::seconds(301), now, tolerance).is_err());
    }

    #[test]
    fn path_tokens_are_per_reference_and_per_secret() {
        let token = path_token(b"whsec", "txn_a");
        assert_eq!(token.len(), 32);
        assert!(verify_path_token(b"whsec", "txn_a", &token));
        assert!(!verify_path_token(b"whsec", "txn_b", &token));
        assert!(!verify_path_token(b"other", "txn_a", &token));
        assert!(!verify_path_token(b"whsec", "txn_a", &token[..31]));
        assert!(!verify_path_token(b"whsec", "txn_a", ""));
    }

    #[test]
    fn hmac_verification_accepts_only_the_exact_tag() {
        let tag = hmac_sha256(b"k", &[b"a", b"b"]);
        assert_eq!(verify_sha256(b"k", &[b"ab"], &tag), Ok(()));
        assert!(verify_sha256(b"k2", &[b"ab"], &tag).is_err());
        assert!(verify_sha256(b"k", &[b"ab"], &tag[..31]).is_err());
        let tag = hmac_sha512(b"k", &[b"body"]);
        assert_eq!(verify_sha512(b"k", &[b"body"], &tag), Ok(()));
        assert!(verify_sha512(b"k", &[b"bodY"], &tag).is_err());
    }
}
