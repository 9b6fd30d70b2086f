//! Signing secrets as the dispatcher reads them back: endpoint secrets (stored with the
//! endpoint, see [`WebhookSecret`]) and each merchant's default secret for deliveries to a
//! transaction's `callback_url`. A rotation keeps the previous secret signing (a second
//! signature) until its overlap expires, so merchants can switch verifiers without a gap.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use sqlx::{PgExecutor, PgPool};

use crate::db::webhook_endpoints::WebhookSecret;
use crate::db::DbError;
use crate::domain::{MerchantId, WebhookEndpointId};

/// A `whsec_…` signing secret as read back for signing. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl SigningSecret {
    /// Wraps a `whsec_…` string (None for anything else).
    pub fn parse(raw: &str) -> Option<Self> {
        raw.starts_with("whsec_").then(|| Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The HMAC key: the base64 after `whsec_`, decoded (Standard Webhooks).
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        let encoded = self.0.strip_prefix("whsec_")?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
    }

    /// A secret read from `table`: one without the `whsec_` prefix is a corrupt row.
    pub(super) fn stored(raw: &str, table: &'static str) -> Result<Self, DbError> {
        Self::parse(raw).ok_or_else(|| DbError::Corrupt {
            table,
            detail: "signing secret without the whsec_ prefix".to_owned(),
        })
    }
}

impl From<&WebhookSecret> for SigningSecret {
    fn from(secret: &WebhookSecret) -> Self {
        Self(secret.expose().to_owned())
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_…)")
    }
}

/// The merchant's default signing secret (for `callback_url` deliveries), created on first
/// use. Show it to the merchant so it can verify those deliveries.
pub async fn merchant_default_secret<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
) -> Result<SigningSecret, DbError> {
    let candidate = WebhookSecret::generate();
    // Insert-or-read in one statement: a no-op update returns the existing row.
    let secret: String = sqlx::query_scalar(
        "INSERT INTO merchant_webhook_secrets (merchant_id, secret) VALUES ($1, $2)
         ON CONFLICT (merchant_id) DO UPDATE SET merchant_id = EXCLUDED.merchant_id
         RETURNING secret",
    )
    .bind(merchant.as_uuid())
    .bind(candidate.expose())
    .fetch_one(exec)
    .await?;
    SigningSecret::stored(&secret, "merchant_webhook_secrets")
}

/// Rotates the merchant's default secret; the old one keeps signing for `overlap`.
pub async fn rotate_merchant_default_secret(
    pool: &PgPool,
    merchant: MerchantId,
    overlap: Duration,
) -> Result<SigningSecret, DbError> {
    let mut db = pool.begin().await?;
    merchant_default_secret(&mut *db, merchant).await?;
    let fresh = WebhookSecret::generate();
    sqlx::query(
        "UPDATE merchant_webhook_secrets
         SET previous_secret = secret, previous_secret_expires_at = now() + make_interval(secs => $3),
             secret = $2, rotated_at = now()
         WHERE merchant_id = $1",
    )
    .bind(merchant.as_uuid())
    .bind(fresh.expose())
    .bind(overlap.as_secs_f64())
    .execute(&mut *db)
    .await?;
    db.commit().await?;
    Ok(SigningSecret::from(&fresh))
}

/// Rotates an endpoint's secret; the old one keeps signing (a second signature) for
/// `overlap`. `None` when the merchant has no such enabled endpoint.
pub async fn rotate_endpoint_secret<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    endpoint: WebhookEndpointId,
    overlap: Duration,
) -> Result<Option<SigningSecret>, DbError> {
    let fresh = WebhookSecret::generate();
    let done = sqlx::query(
        "UPDATE webhook_endpoints
         SET previous_secret = secret, previous_secret_expires_at = now() + make_interval(secs => $4), secret = $3
         WHERE id = $1 AND merchant_id = $2 AND disabled_at IS NULL",
    )
    .bind(endpoint.as_uuid())
    .bind(merchant.as_uuid())
    .bind(fresh.expose())
    .bind(overlap.as_secs_f64())
    .execute(exec)
    .await?;
    Ok((done.rows_affected() == 1).then(|| SigningSecret::from(&fresh)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_secrets_never_debug_print() {
        let secret = SigningSecret::from(&WebhookSecret::generate());
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
        assert_eq!(secret.key_bytes().map(|k| k.len()), Some(32));
        assert!(SigningSecret::parse("nope").is_none());
        assert!(SigningSecret::stored("nope", "t").is_err());
    }
}
