//! Secrets that must never reach a log: merchant API keys (`Debug` shows only a prefix) and
//! provider secrets (`Debug` shows nothing).

use std::fmt;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

const API_KEY_PREFIX: &str = "sk_";

/// A merchant API key: `sk_` followed by 43 base64url characters (256 random bits).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

/// A presented key that is not of the API key form (so it cannot be any key of ours).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed API key (expected sk_ followed by 43 characters)")]
pub struct MalformedApiKey;

impl ApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0_u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!(
            "{API_KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Checks the form of a presented key before anything is looked up.
    pub fn parse(presented: &str) -> Result<Self, MalformedApiKey> {
        let body = presented
            .strip_prefix(API_KEY_PREFIX)
            .ok_or(MalformedApiKey)?;
        let ok = body.len() == 43
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(presented.to_owned()))
        } else {
            Err(MalformedApiKey)
        }
    }

    /// SHA-256 of the whole key: what is stored and looked up. A fast hash is right here
    /// because the key has 256 bits of entropy (nothing to brute-force, unlike a password).
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// `sk_AbCd…`: enough to tell keys apart in a listing, useless to an attacker.
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(API_KEY_PREFIX.len() + 4).collect()
    }

    /// The secret itself, for the one time it is shown to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.display_prefix())
    }
}

/// A provider secret (API key, webhook signing secret) as configured: the only way to read
/// one is [`Secret::expose`], and `Debug` prints a fixed placeholder. It (de)serializes as
/// the plain string, for the configuration.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that signs or authenticates with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_provider_secret() {
        let secret = Secret::new("sk_live_very_secret");
        let shown = format!("{secret:?} {:?}", Some(&secret));
        assert!(!shown.contains("very_secret"), "{shown}");
        assert_eq!(secret.expose(), "sk_live_very_secret");
    }

    #[test]
    fn generated_keys_parse_and_never_debug_print_the_secret() {
        let key = ApiKey::generate();
        assert_eq!(ApiKey::parse(key.expose()).as_ref(), Ok(&key));
        let debug = format!("{key:?}");
        assert!(!debug.contains(&key.expose()[8..]), "{debug}");
        assert_ne!(ApiKey::generate(), key);
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "sk_",
            "pk_abc",
            "sk_short",
            &format!("sk_{}", "a".repeat(44)),
            &format!("sk_{}!", "a".repeat(42)),
        ] {
            assert_eq!(ApiKey::parse(bad), Err(MalformedApiKey), "{bad}");
        }
    }
}
