//! Merchants and their API keys. A key's secret is shown once, at creation; only its
//! SHA-256 hash is stored, so a database leak does not leak working keys.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::DbError;
use crate::domain::{ApiKeyId, Currency, GatewayName, MerchantId, Scope};
use crate::secret::ApiKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    pub id: MerchantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// Who an API key belongs to, what it may do, and where its merchant may send payments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub merchant_id: MerchantId,
    pub key_id: ApiKeyId,
    pub scopes: Vec<Scope>,
    /// `None`: every configured gateway.
    pub enabled_gateways: Option<Vec<GatewayName>>,
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

/// Issues a new key for `merchant` with every scope. The returned secret is the only copy
/// that will exist.
pub async fn create_api_key<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
) -> Result<(ApiKeyId, ApiKey), DbError> {
    create_scoped_api_key(exec, merchant, &Scope::ALL).await
}

/// Issues a new key for `merchant` holding `scopes` (every scope when empty).
pub async fn create_scoped_api_key<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    scopes: &[Scope],
) -> Result<(ApiKeyId, ApiKey), DbError> {
    let (id, key) = (ApiKeyId::new(), ApiKey::generate());
    // Without a form id nothing can conflict: the row is always inserted.
    insert_api_key(exec, merchant, (id, &key), scopes, None).await?;
    Ok((id, key))
}

/// [`create_scoped_api_key`] once per `form` (the console's one-time form id): `None` when
/// that form already made its key, so a re-posted form makes no second one.
pub async fn create_api_key_once<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    scopes: &[Scope],
    form: uuid::Uuid,
) -> Result<Option<(ApiKeyId, ApiKey)>, DbError> {
    let (id, key) = (ApiKeyId::new(), ApiKey::generate());
    let inserted = insert_api_key(exec, merchant, (id, &key), scopes, Some(form)).await?;
    Ok(inserted.then_some((id, key)))
}

/// Stores the key's hash; false when `form` already made a key.
async fn insert_api_key<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    (id, key): (ApiKeyId, &ApiKey),
    scopes: &[Scope],
    form: Option<uuid::Uuid>,
) -> Result<bool, DbError> {
    let scopes = if scopes.is_empty() {
        &Scope::ALL[..]
    } else {
        scopes
    };
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let inserted = sqlx::query(
        "INSERT INTO api_keys (id, merchant_id, key_hash, prefix, scopes, created_by_form)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (created_by_form) DO NOTHING",
    )
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .bind(&key.hash()[..])
    .bind(key.display_prefix())
    .bind(names)
    .bind(form)
    .execute(exec)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A live key as `authenticate` reads it.
#[derive(sqlx::FromRow)]
struct KeyRow {
    id: uuid::Uuid,
    merchant_id: uuid::Uuid,
    scopes: Vec<String>,
    enabled_gateways: Option<Vec<String>>,
}

/// Finds the live (not revoked) key with this secret. Looks up by hash, so the comparison
/// is an index probe on a digest, not a string compare of secrets.
pub async fn authenticate<'e>(
    exec: impl PgExecutor<'e>,
    presented: &ApiKey,
) -> Result<Option<Authenticated>, DbError> {
    authenticate_hash(exec, &presented.hash()).await
}

/// [`authenticate`] by the key's SHA-256 (what the API's caches hold instead of the key).
pub async fn authenticate_hash<'e>(
    exec: impl PgExecutor<'e>,
    hash: &[u8; 32],
) -> Result<Option<Authenticated>, DbError> {
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT k.id, k.merchant_id, k.scopes, m.enabled_gateways
           FROM api_keys k JOIN merchants m ON m.id = k.merchant_id
          WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(&hash[..])
    .fetch_optional(exec)
    .await?;
    let Some(KeyRow {
        id: key,
        merchant_id: merchant,
        scopes,
        enabled_gateways: gateways,
    }) = row
    else {
        return Ok(None);
    };
    let corrupt = |detail: String| DbError::Corrupt {
        table: "api_keys",
        detail,
    };
    let scopes = scopes
        .iter()
        .map(|s| s.parse::<Scope>().map_err(|e| corrupt(e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok(Some(Authenticated {
        merchant_id: MerchantId::from_uuid(merchant),
        key_id: ApiKeyId::from_uuid(key),
        scopes,
        enabled_gateways: parse_gateways(gateways)?,
    }))
}

pub(crate) fn parse_gateways(
    names: Option<Vec<String>>,
) -> Result<Option<Vec<GatewayName>>, DbError> {
    names
        .map(|names| {
            names
                .iter()
                .map(|n| {
                    GatewayName::parse(n).map_err(|e| DbError::Corrupt {
                        table: "merchants",
                        detail: e.to_string(),
                    })
                })
                .collect()
        })
        .transpose()
}

/// Restricts `merchant` to `gateways` (`None`: every gateway). Returns whether it exists.
pub async fn set_enabled_gateways<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    gateways: Option<&[GatewayName]>,
) -> Result<bool, DbError> {
    let names: Option<Vec<&str>> = gateways.map(|g| g.iter().map(GatewayName::as_str).collect());
    let done = sqlx::query("UPDATE merchants SET enabled_gateways = $2 WHERE id = $1")
        .bind(merchant.as_uuid())
        .bind(names)
        .execute(exec)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A merchant's limits in one currency (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// The largest amount of one deposit or withdrawal, in minor units.
    pub max_amount: Option<i64>,
    /// The most that withdrawals accepted in one UTC day may add up to (failed ones give
    /// their amount back).
    pub daily_payout_limit: Option<i64>,
}

/// Sets `merchant`'s limits in `currency`; both `None` removes them.
pub async fn set_limits<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    currency: Currency,
    limits: Limits,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO merchant_limits (merchant_id, currency, max_amount, daily_payout_limit)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (merchant_id, currency) DO UPDATE
           SET max_amount = EXCLUDED.max_amount, daily_payout_limit = EXCLUDED.daily_payout_limit",
    )
    .bind(merchant.as_uuid())
    .bind(currency.code())
    .bind(limits.max_amount)
    .bind(limits.daily_payout_limit)
    .execute(exec)
    .await?;
    Ok(())
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

/// One API key as its merchant's console lists it: never the secret, which is not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySummary {
    pub id: ApiKeyId,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

type KeySummaryRow = (
    uuid::Uuid,
    String,
    Vec<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// A merchant's keys, newest first, revoked ones included (at most `limit`).
pub async fn list_api_keys<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    limit: i64,
) -> Result<Vec<KeySummary>, DbError> {
    let rows: Vec<KeySummaryRow> = sqlx::query_as(
        "SELECT id, prefix, scopes, created_at, revoked_at FROM api_keys
             WHERE merchant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(merchant.as_uuid())
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, prefix, scopes, created_at, revoked_at)| KeySummary {
            id: ApiKeyId::from_uuid(id),
            prefix,
            scopes,
            created_at,
            revoked_at,
        })
        .collect())
}

/// Revokes one of `merchant`'s live keys; another merchant's key id revokes nothing.
pub async fn revoke_merchant_api_key<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    key: ApiKeyId,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
         WHERE id = $1 AND merchant_id = $2 AND revoked_at IS NULL",
    )
    .bind(key.as_uuid())
    .bind(merchant.as_uuid())
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Every merchant, by name (the operator's merchant picker), at most `limit`.
pub async fn list<'e>(exec: impl PgExecutor<'e>, limit: i64) -> Result<Vec<Merchant>, DbError> {
    let rows: Vec<(uuid::Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, name, created_at FROM merchants ORDER BY name, id LIMIT $1")
            .bind(limit)
            .fetch_all(exec)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, created_at)| Merchant {
            id: MerchantId::from_uuid(id),
            name,
            created_at,
        })
        .collect())
}
