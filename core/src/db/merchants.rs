//! Merchants and their API keys. A key's secret is shown once, at creation; only its
//! SHA-256 hash is stored, so a database leak does not leak working keys.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::DbError;
use crate::domain::{ApiKeyId, MerchantId};
use crate::secret::ApiKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    pub id: MerchantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Who an API key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub merchant_id: MerchantId,
    pub key_id: ApiKeyId,
}

pub async fn create<'e>(exec: impl PgExecutor<'e>, name: &str) -> Result<Merchant, DbError> {
    let id = MerchantId::new();
    let created_at: DateTime<Utc> =
        sqlx::query_scalar("INSERT INTO merchants (id, name) VALUES ($1, $2) RETURNING created_at")
            .bind(id.as_uuid())
            .bind(name)
            .fetch_one(exec)
            .await?;
    Ok(Merchant {
        id,
        name: name.to_owned(),
        created_at,
    })
}

pub async fn get<'e>(
    exec: impl PgExecutor<'e>,
    id: MerchantId,
) -> Result<Option<Merchant>, DbError> {
    let row: Option<(String, DateTime<Utc>)> =
        sqlx::query_as("SELECT name, created_at FROM merchants WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(exec)
            .await?;
    Ok(row.map(|(name, created_at)| Merchant {
        id,
        name,
        created_at,
    }))
}

/// Issues a new key for `merchant`. The returned secret is the only copy that will exist.
pub async fn create_api_key<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
) -> Result<(ApiKeyId, ApiKey), DbError> {
    let key = ApiKey::generate();
    let id = ApiKeyId::new();
    sqlx::query("INSERT INTO api_keys (id, merchant_id, key_hash, prefix) VALUES ($1, $2, $3, $4)")
        .bind(id.as_uuid())
        .bind(merchant.as_uuid())
        .bind(&key.hash()[..])
        .bind(key.display_prefix())
        .execute(exec)
        .await?;
    Ok((id, key))
}

/// Finds the live (not revoked) key with this secret. Looks up by hash, so the comparison
/// is an index probe on a digest, not a string compare of secrets.
pub async fn authenticate<'e>(
    exec: impl PgExecutor<'e>,
    presented: &ApiKey,
) -> Result<Option<Authenticated>, DbError> {
    let row: Option<(uuid::Uuid, uuid::Uuid)> = sqlx::query_as(
        "SELECT id, merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(&presented.hash()[..])
    .fetch_optional(exec)
    .await?;
    Ok(row.map(|(key, merchant)| Authenticated {
        merchant_id: MerchantId::from_uuid(merchant),
        key_id: ApiKeyId::from_uuid(key),
    }))
}

/// Revokes a key; returns whether a live key was revoked.
pub async fn revoke_api_key<'e>(exec: impl PgExecutor<'e>, key: ApiKeyId) -> Result<bool, DbError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(key.as_uuid())
            .execute(exec)
            .await?;
    Ok(done.rows_affected() == 1)
}
