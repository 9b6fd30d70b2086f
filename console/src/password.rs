//! Console passwords: argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's
//! recommended minimum), stored as PHC strings that carry their own parameters and salt.
//! Hashing and checking take tens of milliseconds of CPU: callers run them on the blocking
//! pool, never on the async workers.

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use rand::RngCore;

/// Shortest password accepted (NIST SP 800-63B asks at least 8; a console moves money).
pub const MIN_CHARS: usize = 12;
/// Longest accepted: bounds the work an attacker's input can cause.
pub const MAX_CHARS: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the password must be {MIN_CHARS} to {MAX_CHARS} characters")]
    Length,
    #[error("the password could not be hashed: {0}")]
    Hash(String),
}

/// Refuses a password outside the bounds.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    let chars = password.chars().count();
    if (MIN_CHARS..=MAX_CHARS).contains(&chars) {
        Ok(())
    } else {
        Err(PasswordError::Length)
    }
}

/// The PHC string of `password` with a fresh salt.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    check_policy(password)?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches `stored`. A stored value that does not parse matches nothing.
pub fn verify(stored: &str, password: &str) -> bool {
    if password.chars().count() > MAX_CHARS {
        return false;
    }
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Does the work of a check for an email that has no user, so the time a refusal takes
/// does not tell which emails have accounts. Always false.
pub fn verify_nobody(password: &str) -> bool {
    static NOBODY: OnceLock<Option<String>> = OnceLock::new();
    let stored = NOBODY.get_or_init(|| hash("no one has this password").ok());
    if let Some(stored) = stored {
        let _ = verify(stored, password);
    }
    false
}

/// A random password for a demo user or `paygate users create` without one: 24 characters
/// of URL-safe base64 (144 bits).
pub fn generate() -> String {
    let mut bytes = [0_u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let stored = hash("correct horse battery").unwrap_or_default();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(verify(&stored, "correct horse battery"));
        assert!(!verify(&stored, "correct horse batterz"));
        assert!(!verify("not a phc string", "correct horse battery"));
        assert_ne!(hash("correct horse battery").unwrap_or_default(), stored);
    }

    #[test]
    fn the_policy_bounds_the_length() {
        assert_eq!(check_policy("short"), Err(PasswordError::Length));
        assert_eq!(hash(&"x".repeat(MAX_CHARS + 1)), Err(PasswordError::Length));
        assert!(check_policy(&generate()).is_ok());
        assert!(!verify_nobody("anything at all"));
    }
}
