//! CSRF protection for every console form: a signed double submit.
//!
//! Each browser gets a random nonce in an HttpOnly, SameSite=Strict cookie; every form
//! carries `csrf` = HMAC-SHA256(key, nonce). A POST is accepted only when the form's token
//! is the signature of the cookie's nonce. Another site can neither read the page (same
//! origin) nor forge the signature for a nonce it planted (it lacks the key), and with
//! SameSite=Strict the browser does not send the cookie from another site at all.

use axum_extra::extract::cookie::{Cookie, SameSite};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::session::COOKIE_PATH;

/// The nonce cookie's name.
pub const COOKIE: &str = "paygate_csrf";
/// The form field's name.
pub const FIELD: &str = "csrf";

pub struct Csrf {
    key: [u8; 32],
}

/// A browser's nonce (from its cookie, or new for this response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce(pub String);

impl Nonce {
    pub fn generate() -> Self {
        let mut bytes = [0_u8; 24];
        rand::rng().fill_bytes(&mut bytes);
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A cookie value that can be a nonce of ours (32 URL-safe characters); anything else is
    /// replaced.
    pub fn from_cookie(value: &str) -> Option<Self> {
        (value.len() == 32
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(value.to_owned()))
    }

    pub fn cookie(&self, secure: bool) -> Cookie<'static> {
        Cookie::build((COOKIE, self.0.clone()))
            .path(COOKIE_PATH)
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .build()
    }
}

impl Csrf {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The token forms carry for `nonce`.
    pub fn token(&self, nonce: &Nonce) -> String {
        self.mac(nonce).map(hex::encode).unwrap_or_default()
    }

    /// Whether `presented` is the token of `nonce` (constant time).
    pub fn accepts(&self, nonce: &Nonce, presented: &str) -> bool {
        match (self.mac(nonce), hex::decode(presented)) {
            (Some(expected), Ok(presented)) => expected.as_slice().ct_eq(&presented).into(),
            _ => false,
        }
    }

    /// `None` only if HMAC refused the key, which it never does (any length is a key): then
    /// no token is accepted.
    fn mac(&self, nonce: &Nonce) -> Option<[u8; 32]> {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.key).ok()?;
        mac.update(nonce.0.as_bytes());
        Some(mac.finalize().into_bytes().into())
    }
}

/// Whether a presented token is the expected one (constant time; empty never matches).
pub fn same_token(expected: &str, presented: &str) -> bool {
    !expected.is_empty() && expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_accepted_for_its_nonce_only() {
        let csrf = Csrf::new([7; 32]);
        let nonce = Nonce::generate();
        let token = csrf.token(&nonce);
        assert!(csrf.accepts(&nonce, &token));
        assert!(!csrf.accepts(&Nonce::generate(), &token));
        assert!(!csrf.accepts(&nonce, ""));
        assert!(!csrf.accepts(&nonce, "zz"));
        assert!(!Csrf::new([8; 32]).accepts(&nonce, &token));
        assert_eq!(Nonce::from_cookie(&nonce.0), Some(nonce));
        assert_eq!(Nonce::from_cookie("short"), None);
    }
}
