//! `Authorization: Bearer sk_…`. The presented key is checked for form, then looked up by
//! its SHA-256 (the only thing stored). Every failure is the same 401 to the client (which
//! of missing, malformed, unknown or revoked is logged, the key never). An authenticated
//! request then passes the per-key rate limit; each route then asks [`Merchant::require`]
//! for the scope it needs (403 without it).

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use paygate_core::db;
use paygate_core::domain::{ApiKeyId, GatewayName, MerchantId, Scope};
use paygate_core::secret::ApiKey;

use crate::error::HttpError;
use crate::AppState;

/// The merchant a request is made for, and what its key may do.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: MerchantId,
    pub key_id: ApiKeyId,
    pub scopes: Vec<Scope>,
    /// The gateways this merchant may name (`None`: all).
    pub enabled_gateways: Option<Vec<GatewayName>>,
}

impl Merchant {
    /// Ok when the key holds `scope`; otherwise the 403 to answer.
    pub fn require(&self, scope: Scope) -> Result<(), HttpError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(HttpError::scope_missing(scope))
        }
    }

    /// Whether this merchant may use `gateway`.
    pub fn may_use(&self, gateway: &GatewayName) -> bool {
        self.enabled_gateways
            .as_ref()
            .is_none_or(|enabled| enabled.contains(gateway))
    }
}

impl FromRequestParts<AppState> for Merchant {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Err(HttpError::unauthenticated(
                "no API key provided: send it as `Authorization: Bearer sk_…`",
            ));
        };
        let malformed =
            || HttpError::unauthenticated("malformed Authorization header: expected `Bearer sk_…`");
        let value = header.to_str().map_err(|_| malformed())?;
        let (scheme, token) = value.trim().split_once(' ').ok_or_else(malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(malformed());
        }
        let key = ApiKey::parse(token.trim()).map_err(|_| malformed())?;
        let found = db::merchants::authenticate(&state.pool, &key)
            .await
            .map_err(HttpError::internal)?;
        let Some(auth) = found else {
            tracing::info!(key = ?key, "unknown or revoked API key");
            return Err(HttpError::unauthenticated("invalid API key"));
        };
        state
            .rate_limiter
            .check(auth.key_id)
            .map_err(HttpError::rate_limited)?;
        Ok(Merchant {
            id: auth.merchant_id,
            key_id: auth.key_id,
            scopes: auth.scopes,
            enabled_gateways: auth.enabled_gateways,
        })
    }
}
