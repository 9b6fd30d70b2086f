//! Console sessions: a signed JWT (HS256) in an HttpOnly, SameSite=Strict cookie.
//!
//! The token names the user and its role; it is short-lived (`console.session_mins`) and
//! renewed by a page viewed past half its life, so an idle session ends on its own. The
//! signing key is derived from `[secrets]`'s current key ([`paygate_core::keyring::Keyring::derive_key`]),
//! the same in every API instance. A token is only a claim: every request also checks that
//! the user still exists, is enabled and has the same role ([`crate::viewer`]).

use std::time::Duration;

use axum_extra::extract::cookie::{Cookie, SameSite};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use paygate_core::db::console_users::{ConsoleUser, Role};
use paygate_core::domain::{ConsoleUserId, MerchantId};
use serde::{Deserialize, Serialize};

/// The session cookie's name.
pub const COOKIE: &str = "paygate_session";
/// Where console cookies are sent: the console only, never the JSON API.
pub const COOKIE_PATH: &str = "/console";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user (`usr_…`).
    pub sub: String,
    /// `merchant` or `operator`.
    pub role: String,
    /// The merchant of a merchant user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mer: Option<String>,
    pub iat: i64,
    pub exp: i64,
}

impl Claims {
    /// The user and role this token claims, if it is well formed.
    pub fn subject(&self) -> Option<(ConsoleUserId, Role)> {
        let user = self.sub.parse().ok()?;
        let role = match (self.role.as_str(), &self.mer) {
            ("operator", None) => Role::Operator,
            ("merchant", Some(merchant)) => Role::Merchant(merchant.parse::<MerchantId>().ok()?),
            _ => return None,
        };
        Some((user, role))
    }

    /// Whether the token is past half its life (then the next page renews it).
    pub fn is_due_for_renewal(&self, now: DateTime<Utc>) -> bool {
        let half = self.exp.saturating_sub(self.iat) / 2;
        now.timestamp() >= self.iat.saturating_add(half)
    }
}

/// The keys sessions are signed and checked with, and their lifetime.
pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid session: {0}")]
pub struct InvalidSession(String);

impl SessionKeys {
    pub fn new(key: &[u8; 32], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new token for `user`, valid from `now` for the session lifetime.
    pub fn issue(&self, user: &ConsoleUser, now: DateTime<Utc>) -> Result<String, InvalidSession> {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: user.id.to_string(),
            role: user.role.as_str().to_owned(),
            mer: user.role.merchant().map(|m| m.to_string()),
            iat: now.timestamp(),
            exp: now.timestamp().saturating_add(ttl),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| InvalidSession(e.to_string()))
    }

    /// The claims of a token this process's key signed and that has not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, InvalidSession> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| InvalidSession(e.to_string()))
    }

    /// The cookie carrying `token`.
    pub fn cookie(&self, token: String, secure: bool) -> Cookie<'static> {
        let max_age = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        Cookie::build((COOKIE, token))
            .path(COOKIE_PATH)
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .max_age(cookie_duration(max_age))
            .build()
    }
}

/// The cookie that ends a session (expired at once).
pub fn removal(secure: bool) -> Cookie<'static> {
    Cookie::build((COOKIE, ""))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(cookie_duration(0))
        .build()
}

fn cookie_duration(secs: i64) -> time::Duration {
    time::Duration::seconds(secs)
}
