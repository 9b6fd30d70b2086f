//! Secrets at rest: the one place that knows how a secret is sealed in Postgres.
//!
//! Webhook signing secrets must be stored recoverably (the dispatcher needs the secret itself
//! to compute each delivery's HMAC, unlike an API key, which is only compared and so stored as
//! a hash). A copy of the database (a backup, a replica, a leaked dump) must not give them
//! away, so every such column holds an AES-256-GCM envelope:
//!
//! ```text
//! v1:<key id>:<standard base64 of nonce (12 bytes) || ciphertext || tag (16 bytes)>
//! ```
//!
//! - a fresh random 96-bit nonce per write (the `aes-gcm` crate's `generate_nonce` from the
//!   operating system's generator), so two rows holding the same secret look unrelated;
//! - the value's place is bound as associated data ([`Slot`]: table, column, row id, and
//!   the key id), so a ciphertext copied to another row, another merchant or the other
//!   column does not open: the tag check fails;
//! - keys come from `[secrets]` ([`crate::config::SecretsConfig`]): one *current* key seals
//!   every write, older keys still open what they sealed, so the key can be rotated
//!   (`paygate secrets rotate-key` re-seals every row under the current key).
//!
//! Nothing outside this module reads or writes the envelope format. Key material is never
//! printed: [`Keyring`]'s `Debug` shows key ids only, and no [`SealError`] carries a key, a
//! plaintext or a ciphertext.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use uuid::Uuid;

/// The envelope's version tag: the first field of every sealed value.
const VERSION: &str = "v1";
/// AES-GCM's standard nonce: 96 bits.
const NONCE_BYTES: usize = 12;
/// Length of every key: AES-256.
pub const KEY_BYTES: usize = 32;
/// Longest key id accepted (ids are labels such as `2026-12` or `dev`).
const MAX_KEY_ID: usize = 32;

/// Why a secret could not be sealed or opened. Never carries key material or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A value that is not an envelope at all: a secret written in clear before secrets
    /// were sealed. Never accepted as a secret; `paygate migrate` seals such rows.
    #[error("secret stored in clear (not sealed): run `paygate migrate` to seal it")]
    Clear,
    /// An envelope that does not parse (version, key id, base64, length).
    #[error("sealed secret is malformed")]
    Malformed,
    /// Sealed under a key the keyring does not hold.
    #[error("sealed under key id {0:?}, which is not in the keyring (secrets.keys)")]
    UnknownKey(String),
    /// The tag does not verify: the value was altered, or copied from another row or column.
    #[error("sealed secret does not authenticate (altered, or copied from another row)")]
    Unauthentic,
    /// The opened value is not UTF-8 text.
    #[error("sealed secret is not text")]
    NotText,
    /// Encryption itself failed (the `aead` crate's opaque error).
    #[error("could not seal the secret")]
    Seal,
}

/// A key's label, as stored in each envelope: 1 to 32 of `a-z`, `0-9`, `-`, `_`. Lower
/// case only, because `PAYGATE_SECRETS_KEYS__<ID>` reaches the configuration lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_KEY_ID
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        ok.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A column that holds sealed secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretColumn {
    /// `webhook_endpoints.secret` (row: the endpoint id).
    EndpointSecret,
    /// `webhook_endpoints.previous_secret` (row: the endpoint id).
    EndpointPreviousSecret,
    /// `merchant_webhook_secrets.secret` (row: the merchant id).
    MerchantSecret,
    /// `merchant_webhook_secrets.previous_secret` (row: the merchant id).
    MerchantPreviousSecret,
}

impl SecretColumn {
    pub fn table(self) -> &'static str {
        match self {
            Self::EndpointSecret | Self::EndpointPreviousSecret => "webhook_endpoints",
            Self::MerchantSecret | Self::MerchantPreviousSecret => "merchant_webhook_secrets",
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            Self::EndpointSecret | Self::MerchantSecret => "secret",
            Self::EndpointPreviousSecret | Self::MerchantPreviousSecret => "previous_secret",
        }
    }
}

/// Where a sealed value lives: its column and its row's id. Bound into the envelope as
/// associated data, so the value opens only there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub column: SecretColumn,
    pub row: Uuid,
}

impl Slot {
    pub fn new(column: SecretColumn, row: Uuid) -> Self {
        Self { column, row }
    }

    /// The associated data: version, key id, table, column and row, `|`-separated (none of
    /// them can contain `|`).
    fn associated_data(&self, key: &KeyId) -> Vec<u8> {
        format!(
            "paygate|{VERSION}|{key}|{}|{}|{}",
            self.column.table(),
            self.column.column(),
            self.row.as_hyphenated()
        )
        .into_bytes()
    }
}

/// The keys secrets are sealed with: one current key for writes, every key for reads.
#[derive(Clone)]
pub struct Keyring {
    current: KeyId,
    keys: BTreeMap<KeyId, Aes256Gcm>,
    /// HMAC key for [`Keyring::derive_key`]: the current key itself never leaves `keys`.
    derivation: [u8; KEY_BYTES],
}

/// A keyring that cannot be built; [`crate::config::SecretsConfig::keyring`] words it as a
/// configuration problem naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("the current key {0:?} is not one of the keys")]
    NoCurrentKey(String),
}

impl Keyring {
    /// A keyring sealing with `current` (which must be among `keys`).
    pub fn new(
        current: KeyId,
        keys: impl IntoIterator<Item = (KeyId, [u8; KEY_BYTES])>,
    ) -> Result<Self, KeyringError> {
        let keys: Vec<(KeyId, [u8; KEY_BYTES])> = keys.into_iter().collect();
        let derivation = keys
            .iter()
            .find(|(id, _)| *id == current)
            .map(|(_, key)| *key)
            .ok_or_else(|| KeyringError::NoCurrentKey(current.0.clone()))?;
        let keys = keys
            .into_iter()
            .map(|(id, key)| (id, Aes256Gcm::new(&key.into())))
            .collect();
        Ok(Self {
            current,
            keys,
            derivation,
        })
    }

    /// A 32-byte key for another `purpose` (the console's session signatures), derived from
    /// the current key with HMAC-SHA256 so one configured secret serves both without either
    /// use revealing the other. Rotating the current key changes every derived key (console
    /// sessions end: they are short-lived anyway).
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.derivation) else {
            // HMAC takes keys of any length, so this is unreachable; a hash of the same
            // inputs still never hands out the current key itself.
            use sha2::Digest;
            return sha2::Sha256::new()
                .chain_update(b"paygate/derive/")
                .chain_update(purpose.as_bytes())
                .chain_update(self.derivation)
                .finalize()
                .into();
        };
        mac.update(b"paygate/derive/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The key new values are sealed under.
    pub fn current_key(&self) -> &KeyId {
        &self.current
    }

    /// Every key id this keyring opens.
    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    /// What every value sealed under the current key starts with (for queries that find
    /// the rows a key rotation still has to re-seal).
    pub fn current_prefix(&self) -> String {
        format!("{VERSION}:{}:", self.current)
    }

    /// Seals `secret` for `slot` under the current key, with a fresh nonce.
    pub fn seal(&self, slot: Slot, secret: &str) -> Result<String, SealError> {
        let cipher = self.keys.get(&self.current).ok_or(SealError::Seal)?;
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = slot.associated_data(&self.current);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut envelope = Vec::with_capacity(NONCE_BYTES.saturating_add(sealed.len()));
        envelope.extend_from_slice(&nonce);
        envelope.extend_from_slice(&sealed);
        Ok(format!(
            "{VERSION}:{}:{}",
            self.current,
            base64::engine::general_purpose::STANDARD.encode(envelope)
        ))
    }

    /// Opens a value sealed for `slot` (under any key of the keyring). A clear value, one
    /// sealed for another slot, under an unknown key, or altered, is an error.
    pub fn open(&self, slot: Slot, stored: &str) -> Result<String, SealError> {
        let envelope = Envelope::parse(stored)?;
        let cipher = self
            .keys
            .get(&envelope.key)
            .ok_or_else(|| SealError::UnknownKey(envelope.key.0.clone()))?;
        let (nonce, sealed) = envelope
            .bytes
            .split_at_checked(NONCE_BYTES)
            .ok_or(SealError::Malformed)?;
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| SealError::Malformed)?;
        let aad = slot.associated_data(&envelope.key);
        let opened = cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Unauthentic)?;
        String::from_utf8(opened).map_err(|_| SealError::NotText)
    }

    /// The key id a stored value is sealed under (`None`: not an envelope).
    pub fn sealed_under(stored: &str) -> Option<KeyId> {
        Envelope::parse(stored).ok().map(|e| e.key)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.0)
            .field("keys", &self.keys.keys().map(|k| &k.0).collect::<Vec<_>>())
            .finish()
    }
}

/// A stored value taken apart (not yet opened).
struct Envelope {
    key: KeyId,
    bytes: Vec<u8>,
}

impl Envelope {
    fn parse(stored: &str) -> Result<Self, SealError> {
        let mut parts = stored.splitn(3, ':');
        let (Some(version), Some(key), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(if stored.starts_with(VERSION) {
                SealError::Malformed
            } else {
                SealError::Clear
            });
        };
        if version != VERSION {
            return Err(SealError::Clear);
        }
        let key = KeyId::parse(key).ok_or(SealError::Malformed)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| SealError::Malformed)?;
        Ok(Self { key, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> KeyId {
        KeyId::parse(s).unwrap_or_else(|| panic!("key id {s}"))
    }

    fn ring(current: &str, keys: &[(&str, u8)]) -> Keyring {
        Keyring::new(id(current), keys.iter().map(|(k, b)| (id(k), [*b; 32])))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_by_current_key_and_are_not_the_key() {
        let a = ring("a", &[("a", 1), ("b", 2)]);
        let same = ring("a", &[("a", 1)]);
        let b = ring("b", &[("a", 1), ("b", 2)]);
        let session = a.derive_key("console-session");
        assert_eq!(session, same.derive_key("console-session"));
        assert_ne!(session, a.derive_key("console-csrf"));
        assert_ne!(session, b.derive_key("console-session"));
        assert_ne!(session, [1; 32]);
    }

    const SECRET: &str = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";

    fn slot(column: SecretColumn, row: u128) -> Slot {
        Slot::new(column, Uuid::from_u128(row))
    }

    #[test]
    fn a_sealed_secret_opens_only_in_its_slot() {
        let keys = ring("a", &[("a", 1)]);
        let here = slot(SecretColumn::EndpointSecret, 1);
        let sealed = keys.seal(here, SECRET).unwrap_or_else(|e| panic!("{e}"));
        assert!(sealed.starts_with("v1:a:"), "{sealed}");
        assert!(!sealed.contains("whsec_"));
        assert_eq!(keys.open(here, &sealed).as_deref(), Ok(SECRET));
        // Another row, another column, another table: the tag does not verify.
        for elsewhere in [
            slot(SecretColumn::EndpointSecret, 2),
            slot(SecretColumn::EndpointPreviousSecret, 1),
            slot(SecretColumn::MerchantSecret, 1),
        ] {
            assert_eq!(keys.open(elsewhere, &sealed), Err(SealError::Unauthentic));
        }
        // A fresh nonce each time: the same secret never seals to the same text.
        assert_ne!(keys.seal(here, SECRET).ok(), Some(sealed));
    }

    #[test]
    fn altered_clear_malformed_and_unknown_values_are_refused() {
        let keys = ring("a", &[("a", 1)]);
        let here = slot(SecretColumn::MerchantSecret, 7);
        let sealed = keys.seal(here, SECRET).unwrap_or_else(|e| panic!("{e}"));
        let body = sealed.trim_start_matches("v1:a:");
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_default();
        if let Some(last) = bytes.last_mut() {
            *last ^= 1;
        }
        let altered = format!(
            "v1:a:{}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        );
        assert_eq!(keys.open(here, &altered), Err(SealError::Unauthentic));
        assert_eq!(keys.open(here, SECRET), Err(SealError::Clear));
        assert_eq!(keys.open(here, ""), Err(SealError::Clear));
        for bad in ["v1:a:!!!", "v1:A:AAAA", "v1:a:AAAA", "v1:", "v1:a"] {
            assert!(
                matches!(
                    keys.open(here, bad),
                    Err(SealError::Malformed | SealError::Unauthentic)
                ),
                "{bad}"
            );
        }
        let other = ring("b", &[("b", 2)]);
        let foreign = other.seal(here, SECRET).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            keys.open(here, &foreign),
            Err(SealError::UnknownKey("b".into()))
        );
    }

    #[test]
    fn older_keys_still_open_and_the_current_one_seals() {
        let old = ring("a", &[("a", 1)]);
        let here = slot(SecretColumn::EndpointSecret, 3);
        let under_a = old.seal(here, SECRET).unwrap_or_else(|e| panic!("{e}"));
        let rotated = ring("b", &[("a", 1), ("b", 2)]);
        assert_eq!(rotated.open(here, &under_a).as_deref(), Ok(SECRET));
        let under_b = rotated.seal(here, SECRET).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Keyring::sealed_under(&under_b), Some(id("b")));
        assert!(under_b.starts_with(&rotated.current_prefix()));
        // The same id with other key bytes is another key: nothing opens.
        let impostor = ring("a", &[("a", 9)]);
        assert_eq!(impostor.open(here, &under_a), Err(SealError::Unauthentic));
    }

    #[test]
    fn key_material_never_prints() {
        let keys = ring("a", &[("a", 0xAB)]);
        let shown = format!("{keys:?}");
        assert!(shown.contains("\"a\""), "{shown}");
        assert!(!shown.to_lowercase().contains("ab, ab") && !shown.contains("171"));
        assert!(Keyring::new(id("x"), [(id("a"), [0; 32])]).is_err());
        assert!(KeyId::parse("Upper").is_none() && KeyId::parse("a:b").is_none());
        assert!(KeyId::parse(&"k".repeat(33)).is_none());
    }
}
