//! Signing secrets as the dispatcher reads them back: endpoint secrets (stored with the
//! endpoint, see [`WebhookSecret`]) and each merchant's default secret for deliveries to a
//! transaction's `callback_url`. All of them are stored sealed ([`crate::keyring`]) and
//! opened here, for their own row and column only. A rotation keeps the previous secret signing (a second
//! signature) until its overlap expires, so merchants can switch verifiers without a gap.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use sqlx::{PgExecutor, PgPool};

use crate::db::webhook_endpoints::WebhookSecret;
use crate::db::DbError;
use crate::domain::{MerchantId, WebhookEndpointId};
use crate::keyring::{Keyring, SealError, SecretColumn, Slot};

/// After a rotation the previous secret keeps signing (a second signature) this long, so
/// receivers can switch without missing a delivery (the API and the console rotate alike).
pub const ROTATION_OVERLAP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

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

    /// A sealed secret of `slot`, opened: an error unless it opens there to a `whsec_…`.
    pub(super) fn open(keyring: &Keyring, slot: Slot, stored: &str) -> Result<Self, SealError> {
        let opened = keyring.open(slot, stored)?;
        Self::parse(&opened).ok_or(SealError::Malformed)
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

/// The merchant's slot for its default secret (`previous`: the one a rotation keeps).
fn merchant_slot(merchant: MerchantId, previous: bool) -> Slot {
    let column = if previous {
        SecretColumn::MerchantPreviousSecret
    } else {
        SecretColumn::MerchantSecret
    };
    Slot::new(column, merchant.as_uuid())
}

/// An endpoint's slot (`previous`: the one a rotation keeps).
fn endpoint_slot(endpoint: WebhookEndpointId, previous: bool) -> Slot {
    let column = if previous {
        SecretColumn::EndpointPreviousSecret
    } else {
        SecretColumn::EndpointSecret
    };
    Slot::new(column, endpoint.as_uuid())
}

fn unreadable(slot: Slot) -> impl FnOnce(SealError) -> DbError {
    move |source| DbError::Secret {
        table: slot.column.table(),
        row: slot.row,
        source,
    }
}

/// The merchant's default signing secret (for `callback_url` deliveries), created on first
/// use. Show it to the merchant so it can verify those deliveries.
pub async fn merchant_default_secret<'e>(
    exec: impl PgExecutor<'e>,
    keyring: &Keyring,
    merchant: MerchantId,
) -> Result<SigningSecret, DbError> {
    let slot = merchant_slot(merchant, false);
    let candidate = WebhookSecret::generate().seal(keyring, slot)?;
    // Insert-or-read in one statement: a no-op update returns the existing row.
    let secret: String = sqlx::query_scalar(
        "INSERT INTO merchant_webhook_secrets (merchant_id, secret) VALUES ($1, $2)
         ON CONFLICT (merchant_id) DO UPDATE SET merchant_id = EXCLUDED.merchant_id
         RETURNING secret",
    )
    .bind(merchant.as_uuid())
    .bind(candidate)
    .fetch_one(exec)
    .await?;
    SigningSecret::open(keyring, slot, &secret).map_err(unreadable(slot))
}

/// Re-seals an opened secret for the `previous_secret` column (the associated data names
/// the column, so the stored value cannot simply be copied across).
fn reseal_as_previous(
    keyring: &Keyring,
    from: Slot,
    to: Slot,
    stored: &str,
) -> Result<String, DbError> {
    let current = SigningSecret::open(keyring, from, stored).map_err(unreadable(from))?;
    keyring.seal(to, current.expose()).map_err(unreadable(to))
}

/// Rotates the merchant's default secret; the old one keeps signing for `overlap`.
pub async fn rotate_merchant_default_secret(
    pool: &PgPool,
    keyring: &Keyring,
    merchant: MerchantId,
    overlap: Duration,
) -> Result<SigningSecret, DbError> {
    let mut db = pool.begin().await?;
    merchant_default_secret(&mut *db, keyring, merchant).await?;
    let stored: String = sqlx::query_scalar(
        "SELECT secret FROM merchant_webhook_secrets WHERE merchant_id = $1 FOR UPDATE",
    )
    .bind(merchant.as_uuid())
    .fetch_one(&mut *db)
    .await?;
    let previous = reseal_as_previous(
        keyring,
        merchant_slot(merchant, false),
        merchant_slot(merchant, true),
        &stored,
    )?;
    let fresh = WebhookSecret::generate();
    let sealed = fresh.seal(keyring, merchant_slot(merchant, false))?;
    sqlx::query(
        "UPDATE merchant_webhook_secrets
         SET previous_secret = $3, previous_secret_expires_at = now() + make_interval(secs => $4),
             secret = $2, rotated_at = now()
         WHERE merchant_id = $1",
    )
    .bind(merchant.as_uuid())
    .bind(sealed)
    .bind(previous)
    .bind(overlap.as_secs_f64())
    .execute(&mut *db)
    .await?;
    db.commit().await?;
    Ok(SigningSecret::from(&fresh))
}

/// Rotates an endpoint's secret; the old one keeps signing (a second signature) for
/// `overlap`. `None` when the merchant has no such enabled endpoint.
pub async fn rotate_endpoint_secret(
    pool: &PgPool,
    keyring: &Keyring,
    merchant: MerchantId,
    endpoint: WebhookEndpointId,
    overlap: Duration,
) -> Result<Option<SigningSecret>, DbError> {
    let mut db = pool.begin().await?;
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT secret FROM webhook_endpoints
         WHERE id = $1 AND merchant_id = $2 AND disabled_at IS NULL FOR UPDATE",
    )
    .bind(endpoint.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(&mut *db)
    .await?;
    let Some(stored) = stored else {
        return Ok(None);
    };
    let previous = reseal_as_previous(
        keyring,
        endpoint_slot(endpoint, false),
        endpoint_slot(endpoint, true),
        &stored,
    )?;
    let fresh = WebhookSecret::generate();
    let sealed = fresh.seal(keyring, endpoint_slot(endpoint, false))?;
    sqlx::query(
        "UPDATE webhook_endpoints
         SET previous_secret = $3, previous_secret_expires_at = now() + make_interval(secs => $4), secret = $2
         WHERE id = $1",
    )
    .bind(endpoint.as_uuid())
    .bind(sealed)
    .bind(previous)
    .bind(overlap.as_secs_f64())
    .execute(&mut *db)
    .await?;
    db.commit().await?;
    Ok(Some(SigningSecret::from(&fresh)))
}

/// The secrets one delivery signs with, opened: the current one first, then the previous
/// one while its overlap lasts. `row` is the endpoint's id, or the merchant's for a
/// `callback_url` delivery (`endpoint == false`).
pub(super) fn open_for_delivery(
    keyring: &Keyring,
    endpoint: bool,
    row: uuid::Uuid,
    current: &str,
    previous: Option<&str>,
) -> Result<Vec<SigningSecret>, SealError> {
    let (now, before) = if endpoint {
        (
            SecretColumn::EndpointSecret,
            SecretColumn::EndpointPreviousSecret,
        )
    } else {
        (
            SecretColumn::MerchantSecret,
            SecretColumn::MerchantPreviousSecret,
        )
    };
    let mut secrets = vec![SigningSecret::open(keyring, Slot::new(now, row), current)?];
    if let Some(previous) = previous {
        secrets.push(SigningSecret::open(
            keyring,
            Slot::new(before, row),
            previous,
        )?);
    }
    Ok(secrets)
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
        let keyring = crate::config::SecretsConfig::insecure_dev()
            .keyring()
            .unwrap_or_else(|e| panic!("{e}"));
        let slot = merchant_slot(MerchantId::new(), false);
        // A clear value in a secret column is never taken for a secret.
        assert_eq!(
            SigningSecret::open(&keyring, slot, secret.expose()),
            Err(SealError::Clear)
        );
    }
}
