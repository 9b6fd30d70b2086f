//! `[secrets]`: the keys that seal webhook signing secrets at rest ([`crate::keyring`]).
//!
//! ```toml
//! [secrets]
//! current_key = "2026-12"                 # seals every write
//! [secrets.keys]                          # key id -> standard base64 of 32 random bytes
//! "2026-12" = "…"                         # openssl rand -base64 32
//! "2026-06" = "…"                         # an older key: still opens what it sealed
//! ```
//!
//! or `PAYGATE_SECRETS_CURRENT_KEY=2026-12` and `PAYGATE_SECRETS_KEYS__2026-12=…` (figment
//! lower-cases the id, so ids are lower case). Rotation: add a new key, make it current,
//! run `paygate secrets rotate-key`, then drop the old key.
//!
//! Loading a configuration checks the keyring's shape when one is given; a service that
//! needs it and finds none stops at start-up with [`SecretsConfig::keyring`]'s error, naming
//! the settings. There is no default key: `paygate dev` and the tests use
//! [`SecretsConfig::insecure_dev`], whose key is public.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{env, ConfigError, Problem};
use crate::keyring::{KeyId, Keyring, KEY_BYTES};
use crate::secret::Secret;

/// The key id of [`SecretsConfig::insecure_dev`]: says what it is wherever it shows.
pub const INSECURE_DEV_KEY_ID: &str = "insecure-dev-key";
/// The public key of `paygate dev`, the tests and the local topology (32 bytes of `0x5a`,
/// `Wlpa…`): it protects nothing and must never be used where a secret matters.
pub const INSECURE_DEV_KEY: &str = "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=";

/// `[secrets]`. `Debug` prints key ids only (the keys are [`Secret`]s).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The id of the key that seals new values; one of `keys`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_key: Option<String>,
    /// Key id → the standard base64 of a 32-byte AES-256 key.
    pub keys: BTreeMap<String, Secret>,
}

impl SecretsConfig {
    /// The public development key, current: for `paygate dev`, tests and the local
    /// topology only (see [`INSECURE_DEV_KEY`]).
    pub fn insecure_dev() -> Self {
        Self {
            current_key: Some(INSECURE_DEV_KEY_ID.to_owned()),
            keys: BTreeMap::from([(
                INSECURE_DEV_KEY_ID.to_owned(),
                Secret::new(INSECURE_DEV_KEY),
            )]),
        }
    }

    /// Whether no keyring is configured at all.
    pub fn is_empty(&self) -> bool {
        self.current_key.is_none() && self.keys.is_empty()
    }

    /// The keyring, or the problems (each naming its setting; none contains a key).
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        let mut problems = Vec::new();
        let current = self.checked(&mut problems);
        match current {
            Some(current) if problems.is_empty() => {
                let keys = self
                    .keys
                    .iter()
                    .filter_map(|(id, key)| Some((KeyId::parse(id)?, decode(key)?)));
                Keyring::new(current, keys).map_err(|e| {
                    ConfigError(vec![Problem::new("secrets.current_key", e.to_string())])
                })
            }
            _ => Err(ConfigError(problems)),
        }
    }

    /// The rules of a configured keyring (nothing is wrong with none at load: the services
    /// that need one ask [`Self::keyring`]).
    pub(super) fn problems(&self, problems: &mut Vec<Problem>) {
        if !self.is_empty() {
            self.checked(problems);
        }
    }

    /// Checks every rule, pushing problems; the current key id when it is usable.
    fn checked(&self, problems: &mut Vec<Problem>) -> Option<KeyId> {
        if self.is_empty() {
            problems.push(Problem::new(
                "secrets.keys",
                format!(
                    "no keyring to seal webhook secrets with: set {} and {} (32 random bytes, \
                     standard base64)",
                    env::var_for("secrets.current_key"),
                    env::var_for("secrets.keys.<id>"),
                ),
            ));
            return None;
        }
        for (id, key) in &self.keys {
            let at = format!("secrets.keys.{id}");
            if KeyId::parse(id).is_none() {
                problems.push(Problem::new(
                    &at,
                    "key ids are 1 to 32 of a-z, 0-9, '-' and '_'",
                ));
            }
            if decode(key).is_none() {
                problems.push(Problem::new(
                    &at,
                    format!("must be the standard base64 of exactly {KEY_BYTES} bytes"),
                ));
            }
        }
        let Some(current) = &self.current_key else {
            problems.push(Problem::new(
                "secrets.current_key",
                "must name the key (of secrets.keys) that seals new values",
            ));
            return None;
        };
        if !self.keys.contains_key(current) {
            problems.push(Problem::new(
                "secrets.current_key",
                format!("{current:?} is not one of secrets.keys"),
            ));
            return None;
        }
        KeyId::parse(current)
    }
}

/// A configured key's bytes (`None` unless exactly [`KEY_BYTES`] of standard base64).
fn decode(key: &Secret) -> Option<[u8; KEY_BYTES]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.expose().trim())
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_keyring_builds_and_bad_ones_name_their_setting_without_the_key() {
        assert!(SecretsConfig::insecure_dev().keyring().is_ok());
        let none = SecretsConfig::default().keyring().map(|_| ()).unwrap_err();
        let shown = none.to_string();
        assert!(shown.contains("PAYGATE_SECRETS_CURRENT_KEY"), "{shown}");
        assert!(shown.contains("PAYGATE_SECRETS_KEYS__<ID>"), "{shown}");

        let mut bad = SecretsConfig::insecure_dev();
        bad.keys
            .insert("short".into(), Secret::new("c2hvcnQtYnV0LXNlY3JldA=="));
        bad.current_key = Some("missing".into());
        let shown = bad.keyring().map(|_| ()).unwrap_err().to_string();
        assert!(shown.contains("secrets.keys.short"), "{shown}");
        assert!(shown.contains("secrets.current_key"), "{shown}");
        assert!(!shown.contains("c2hvcnQtYnV0LXNlY3JldA"), "{shown}");
        let debug = format!("{bad:?}");
        assert!(!debug.contains(INSECURE_DEV_KEY), "{debug}");
    }
}
