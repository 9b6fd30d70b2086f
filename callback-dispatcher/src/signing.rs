//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), the one place paygate
//! signs (and, for tests and merchants' reference, verifies) a webhook.
//!
//! - headers `webhook-id` (the event id, what a receiver dedupes by), `webhook-timestamp`
//!   (Unix seconds of this attempt) and `webhook-signature`;
//! - signature `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, the key being the
//!   base64-decoded part of the `whsec_…` secret;
//! - during a secret rotation's overlap, one signature per secret, space-separated, the
//!   current secret's first.
//!
//! Signatures and secrets are never logged.

use base64::Engine;
use hmac::{Hmac, Mac};
use paygate_core::db::webhooks::SigningSecret;
use sha2::Sha256;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// Why a delivery could not be signed or a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signing secret is not whsec_ followed by base64")]
    BadSecret,
    #[error("no signing secret")]
    NoSecret,
    #[error("webhook-timestamp is not a Unix time")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance")]
    Stale,
    #[error("no v1 signature matches")]
    Mismatch,
}

/// The three headers of one signed attempt.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
}

impl std::fmt::Debug for SignedHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedHeaders")
            .field("id", &self.id)
            .field("timestamp", &self.timestamp)
            .field("signature", &"v1,…")
            .finish()
    }
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Result<Hmac<Sha256>, SignatureError> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| SignatureError::BadSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(mac)
}

/// `v1,<base64 signature>` of one message under one key.
pub fn sign_with_key(
    key: &[u8],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SignatureError> {
    let tag = mac(key, id, &timestamp.to_string(), body)?
        .finalize()
        .into_bytes();
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    ))
}

/// Signs one attempt with every given secret (current first, then a rotated-out one).
pub fn sign(
    secrets: &[SigningSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<SignedHeaders, SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let mut signatures = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let key = secret.key_bytes().ok_or(SignatureError::BadSecret)?;
        signatures.push(sign_with_key(&key, id, timestamp, body)?);
    }
    Ok(SignedHeaders {
        id: id.to_owned(),
        timestamp: timestamp.to_string(),
        signature: signatures.join(" "),
    })
}

/// Verifies as a receiver would: some `v1,` signature in `signature_header` matches (in
/// constant time), and the timestamp is within `tolerance_secs` of `now`.
pub fn verify(
    secret: &SigningSecret,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now_unix - ts).abs() > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let key = secret.key_bytes().ok_or(SignatureError::BadSecret)?;
    for candidate in signature_header.split(' ') {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        if mac(&key, id, timestamp, body)?.verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(raw: &str) -> SigningSecret {
        SigningSecret::parse(raw).unwrap_or_else(|| panic!("bad secret {raw}"))
    }

    /// The Standard Webhooks reference implementations' test vector.
    #[test]
    fn matches_the_reference_vector() {
        let s = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        let signed = sign(
            std::slice::from_ref(&s),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            signed.signature,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            verify(
                &s,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &signed.signature,
                body,
                1614265330,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &s,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &signed.signature,
                br#"{"test": 2432232315}"#,
                1614265330,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                &s,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &signed.signature,
                body,
                1614265330 + 301,
                300
            ),
            Err(SignatureError::Stale)
        );
        assert!(!format!("{signed:?}").contains("g0hM9"));
    }

    #[test]
    fn rotation_sends_both_signatures() {
        let new = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let old = secret("whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRl");
        let signed =
            sign(&[new.clone(), old.clone()], "evt_1", 10, b"{}").unwrap_or_else(|e| panic!("{e}"));
        let parts: Vec<&str> = signed.signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        for s in [&new, &old] {
            assert_eq!(
                verify(s, "evt_1", "10", &signed.signature, b"{}", 10, 5),
                Ok(())
            );
        }
        let other = secret("whsec_b3RoZXJvdGhlcm90aGVyb3RoZXJvdGhlcm90aGVy");
        assert!(verify(&other, "evt_1", "10", &signed.signature, b"{}", 10, 5).is_err());
        assert_eq!(sign(&[], "x", 1, b""), Err(SignatureError::NoSecret));
        assert_eq!(
            sign(&[secret("whsec_!!!")], "x", 1, b""),
            Err(SignatureError::BadSecret)
        );
    }
}
