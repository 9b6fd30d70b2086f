//! Merchant webhook endpoints (where the dispatcher sends signed events) and the log of
//! delivery attempts made to them.
//!
//! An endpoint's signing secret is stored sealed ([`crate::keyring`]: AES-256-GCM, bound to
//! the endpoint's row): the dispatcher needs the secret itself to compute each delivery's
//! HMAC, and a copy of the database must not give it away. It is shown to the merchant once,
//! at creation, and its `Debug` form never prints it.

use std::fmt;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sqlx::PgExecutor;

use super::transactions::Bindable;
use super::DbError;
use crate::domain::{DeliveryAttemptId, EventId, MerchantId, TransactionId, WebhookEndpointId};
use crate::keyring::{Keyring, SecretColumn, Slot};

const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new secret (Svix/Standard Webhooks use 24 to 64).
const SECRET_BYTES: usize = 32;

/// An endpoint's signing secret: `whsec_` then the standard base64 of 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn generate() -> Self {
        let mut bytes = [0_u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    /// The whole secret, `whsec_…`: for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key bytes to sign with (the base64 part decoded), as Standard Webhooks defines.
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        let encoded = self.0.strip_prefix(SECRET_PREFIX)?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
    }

    /// Seals this secret for `slot` (what is stored).
    pub(crate) fn seal(&self, keyring: &Keyring, slot: Slot) -> Result<String, DbError> {
        keyring
            .seal(slot, &self.0)
            .map_err(|source| DbError::Secret {
                table: slot.column.table(),
                row: slot.row,
                source,
            })
    }

    /// Opens a stored (sealed) secret of `slot`. Anything but a sealed `whsec_…` for this
    /// very slot is an error: a clear value is never taken for a secret.
    pub(crate) fn open(keyring: &Keyring, slot: Slot, stored: &str) -> Result<Self, DbError> {
        let opened = keyring
            .open(slot, stored)
            .map_err(|source| DbError::Secret {
                table: slot.column.table(),
                row: slot.row,
                source,
            })?;
        if !opened.starts_with(SECRET_PREFIX) {
            return Err(DbError::Corrupt {
                table: slot.column.table(),
                detail: "signing secret without the whsec_ prefix".to_owned(),
            });
        }
        Ok(Self(opened))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_…)")
    }
}

/// A merchant's registered endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub id: WebhookEndpointId,
    pub merchant_id: MerchantId,
    pub url: String,
    pub description: Option<String>,
    pub secret: WebhookSecret,
    pub created_at: DateTime<Utc>,
    /// Set once deleted or disabled; a disabled endpoint receives nothing.
    pub disabled_at: Option<DateTime<Utc>>,
}

impl WebhookEndpoint {
    pub fn enabled(&self) -> bool {
        self.disabled_at.is_none()
    }
}

/// A `webhook_endpoints` row as selected by [`ENDPOINT_COLUMNS`].
#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: uuid::Uuid,
    merchant_id: uuid::Uuid,
    url: String,
    description: Option<String>,
    secret: String,
    created_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
}

const ENDPOINT_COLUMNS: &str = "id, merchant_id, url, description, secret, created_at, disabled_at";

fn endpoint_from_row(keyring: &Keyring, row: EndpointRow) -> Result<WebhookEndpoint, DbError> {
    let slot = Slot::new(SecretColumn::EndpointSecret, row.id);
    Ok(WebhookEndpoint {
        id: WebhookEndpointId::from_uuid(row.id),
        merchant_id: MerchantId::from_uuid(row.merchant_id),
        url: row.url,
        description: row.description,
        secret: WebhookSecret::open(keyring, slot, &row.secret)?,
        created_at: row.created_at,
        disabled_at: row.disabled_at,
    })
}

/// Registers an endpoint with a new secret, stored sealed. The caller has validated `url`.
pub async fn create<'e>(
    exec: impl PgExecutor<'e>,
    keyring: &Keyring,
    merchant: MerchantId,
    url: &str,
    description: Option<&str>,
) -> Result<WebhookEndpoint, DbError> {
    let id = WebhookEndpointId::new();
    let secret = WebhookSecret::generate();
    let sealed = secret.seal(
        keyring,
        Slot::new(SecretColumn::EndpointSecret, id.as_uuid()),
    )?;
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, description, secret) VALUES ($1, $2, $3, $4, $5)
         RETURNING created_at",
    )
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .bind(url)
    .bind(description)
    .bind(sealed)
    .fetch_one(exec)
    .await?;
    Ok(WebhookEndpoint {
        id,
        merchant_id: merchant,
        url: url.to_owned(),
        description: description.map(str::to_owned),
        secret,
        created_at,
        disabled_at: None,
    })
}

/// [`create`], unless the merchant already has `max` enabled endpoints (`None` then). The
/// count and the insert run under a per-merchant advisory lock in one transaction, so
/// concurrent creates cannot all pass the check and overshoot the cap.
pub async fn create_capped(
    pool: &sqlx::PgPool,
    keyring: &Keyring,
    merchant: MerchantId,
    url: &str,
    description: Option<&str>,
    max: i64,
) -> Result<Option<WebhookEndpoint>, DbError> {
    let mut db = pool.begin().await?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('paygate.webhook_endpoints:' || $1::text, 0))",
    )
    .bind(merchant.as_uuid())
    .execute(&mut *db)
    .await?;
    if count_enabled(&mut *db, merchant).await? >= max {
        return Ok(None);
    }
    let endpoint = create(&mut *db, keyring, merchant, url, description).await?;
    db.commit().await?;
    Ok(Some(endpoint))
}

/// How many enabled endpoints a merchant has (the API caps it).
pub async fn count_enabled<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
) -> Result<i64, DbError> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_endpoints WHERE merchant_id = $1 AND disabled_at IS NULL",
    )
    .bind(merchant.as_uuid())
    .fetch_one(exec)
    .await?;
    Ok(count)
}

/// A merchant's enabled endpoints, oldest first: what the dispatcher delivers to.
pub async fn list_enabled<'e>(
    exec: impl PgExecutor<'e>,
    keyring: &Keyring,
    merchant: MerchantId,
) -> Result<Vec<WebhookEndpoint>, DbError> {
    let rows: Vec<EndpointRow> = sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE merchant_id = $1 AND disabled_at IS NULL ORDER BY id"
    ))
    .bind(merchant.as_uuid())
    .fetch_all(exec)
    .await?;
    rows.into_iter()
        .map(|row| endpoint_from_row(keyring, row))
        .collect()
}

/// One endpoint of this merchant (enabled or not); another merchant's is not found.
pub async fn get_for_merchant<'e>(
    exec: impl PgExecutor<'e>,
    keyring: &Keyring,
    merchant: MerchantId,
    id: WebhookEndpointId,
) -> Result<Option<WebhookEndpoint>, DbError> {
    let row: Option<EndpointRow> = sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(exec)
    .await?;
    row.map(|row| endpoint_from_row(keyring, row)).transpose()
}

/// Disables (deletes, for the merchant) an enabled endpoint; returns whether one was.
pub async fn disable<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    id: WebhookEndpointId,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = now() WHERE id = $1 AND merchant_id = $2 AND disabled_at IS NULL",
    )
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One HTTP attempt to deliver an event, as the dispatcher records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeliveryAttempt {
    pub event_id: EventId,
    pub transaction_id: TransactionId,
    /// `None` for a delivery to the transaction's own `callback_url`.
    pub endpoint_id: Option<WebhookEndpointId>,
    pub url: String,
    /// 1 for the first attempt of this event to this destination.
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub latency_ms: Option<i32>,
    /// The start of the response body (the dispatcher bounds it).
    pub response_excerpt: Option<String>,
    /// Why no response was had (timeout, connection refused…).
    pub error: Option<String>,
}

/// A recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    pub id: DeliveryAttemptId,
    pub attempt: NewDeliveryAttempt,
    pub created_at: DateTime<Utc>,
}

pub async fn record_attempt<'e>(
    exec: impl PgExecutor<'e>,
    attempt: &NewDeliveryAttempt,
) -> Result<DeliveryAttempt, DbError> {
    let id = DeliveryAttemptId::new();
    let sql = format!(
        "INSERT INTO delivery_attempts ({ATTEMPT_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING created_at"
    );
    let created_at: DateTime<Utc> = bind_attempt(sqlx::query_scalar(&sql), id, attempt)
        .fetch_one(exec)
        .await?;
    Ok(DeliveryAttempt {
        id,
        attempt: attempt.clone(),
        created_at,
    })
}

/// The columns of a new `delivery_attempts` row, in [`bind_attempt`]'s order.
pub(crate) const ATTEMPT_COLUMNS: &str =
    "id, event_id, transaction_id, endpoint_id, url, attempt, status_code,
    latency_ms, response_excerpt, error";

/// Binds a new attempt row as the next ten parameters ([`ATTEMPT_COLUMNS`]), so the
/// dispatcher's completion statement writes it the way [`record_attempt`] does.
pub(crate) fn bind_attempt<'q, Q: Bindable<'q>>(
    query: Q,
    id: DeliveryAttemptId,
    attempt: &'q NewDeliveryAttempt,
) -> Q {
    query
        .bind_value(id.as_uuid())
        .bind_value(attempt.event_id.as_uuid())
        .bind_value(attempt.transaction_id.as_uuid())
        .bind_value(attempt.endpoint_id.map(|e| e.as_uuid()))
        .bind_value(attempt.url.as_str())
        .bind_value(attempt.attempt)
        .bind_value(attempt.status_code)
        .bind_value(attempt.latency_ms)
        .bind_value(attempt.response_excerpt.as_deref())
        .bind_value(attempt.error.as_deref())
}

/// A `delivery_attempts` row as [`list_attempts`] selects it.
#[derive(sqlx::FromRow)]
struct AttemptRow {
    id: uuid::Uuid,
    event_id: uuid::Uuid,
    transaction_id: uuid::Uuid,
    endpoint_id: Option<uuid::Uuid>,
    url: String,
    attempt: i32,
    status_code: Option<i32>,
    latency_ms: Option<i32>,
    response_excerpt: Option<String>,
    error: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<AttemptRow> for DeliveryAttempt {
    fn from(row: AttemptRow) -> Self {
        Self {
            id: DeliveryAttemptId::from_uuid(row.id),
            attempt: NewDeliveryAttempt {
                event_id: EventId::from_uuid(row.event_id),
                transaction_id: TransactionId::from_uuid(row.transaction_id),
                endpoint_id: row.endpoint_id.map(WebhookEndpointId::from_uuid),
                url: row.url,
                attempt: row.attempt,
                status_code: row.status_code,
                latency_ms: row.latency_ms,
                response_excerpt: row.response_excerpt,
                error: row.error,
            },
            created_at: row.created_at,
        }
    }
}

/// A transaction's delivery attempts, oldest first, at most `limit`. The caller has checked
/// that the transaction belongs to the merchant asking.
pub async fn list_attempts<'e>(
    exec: impl PgExecutor<'e>,
    transaction: TransactionId,
    limit: i64,
) -> Result<Vec<DeliveryAttempt>, DbError> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "SELECT id, event_id, transaction_id, endpoint_id, url, attempt, status_code, latency_ms, response_excerpt,
                error, created_at
         FROM delivery_attempts WHERE transaction_id = $1 ORDER BY created_at, id LIMIT $2",
    )
    .bind(transaction.as_uuid())
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows.into_iter().map(DeliveryAttempt::from).collect())
}

/// How long an endpoint has been failing without a success, both ends by the database's
/// clock (the one that stamped `failing_since`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct FailingStreak {
    pub since: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

impl FailingStreak {
    pub fn length(&self) -> chrono::TimeDelta {
        self.now.signed_duration_since(self.since)
    }
}

/// Disables an endpoint for the dispatcher's `reason` (`gone`, `failing`) and stops its
/// pending deliveries; returns whether it was enabled.
pub async fn disable_for<'e>(
    db: &mut sqlx::Transaction<'e, sqlx::Postgres>,
    endpoint: WebhookEndpointId,
    reason: &str,
) -> Result<bool, DbError> {
    let disabled = sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = $2 WHERE id = $1 AND disabled_at IS NULL",
    )
    .bind(endpoint.as_uuid())
    .bind(reason)
    .execute(&mut **db)
    .await?
    .rows_affected()
        == 1;
    sqlx::query(
        "UPDATE webhook_deliveries
         SET state = 'disabled', last_error = COALESCE(last_error, 'endpoint disabled'), completed_at = now(),
             updated_at = now()
         WHERE endpoint_id = $1 AND state = 'pending'",
    )
    .bind(endpoint.as_uuid())
    .execute(&mut **db)
    .await?;
    Ok(disabled)
}

/// Disables an endpoint for `reason` and stops its pending deliveries, only if its failing
/// streak is still the one that began at `since` (a success meanwhile ended it; a newer
/// streak is judged on its own), in one statement. For a decision taken after the attempt's
/// completion committed. Returns whether it was disabled now.
pub async fn disable_if_failing_since<'e>(
    exec: impl PgExecutor<'e>,
    endpoint: WebhookEndpointId,
    since: DateTime<Utc>,
    reason: &str,
) -> Result<bool, DbError> {
    let disabled: bool = sqlx::query_scalar(
        "WITH disabled AS (
             UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = $2
             WHERE id = $1 AND disabled_at IS NULL AND failing_since = $3
             RETURNING id
         ),
         stopped AS (
             UPDATE webhook_deliveries
             SET state = 'disabled', last_error = COALESCE(last_error, 'endpoint disabled'), completed_at = now(),
                 updated_at = now()
             WHERE endpoint_id = $1 AND state = 'pending' AND EXISTS (SELECT 1 FROM disabled)
         )
         SELECT EXISTS (SELECT 1 FROM disabled)",
    )
    .bind(endpoint.as_uuid())
    .bind(reason)
    .bind(since)
    .fetch_one(exec)
    .await?;
    Ok(disabled)
}

/// Why an endpoint was disabled by the dispatcher (`gone`, `failing`), if it was.
pub async fn endpoint_disabled_reason<'e>(
    exec: impl PgExecutor<'e>,
    endpoint: WebhookEndpointId,
) -> Result<Option<String>, DbError> {
    let reason: Option<Option<String>> =
        sqlx::query_scalar("SELECT disabled_reason FROM webhook_endpoints WHERE id = $1")
            .bind(endpoint.as_uuid())
            .fetch_optional(exec)
            .await?;
    Ok(reason.flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_documented_form_and_never_debug_print() {
        let secret = WebhookSecret::generate();
        assert!(secret.expose().starts_with("whsec_"));
        assert_eq!(secret.key_bytes().map(|b| b.len()), Some(SECRET_BYTES));
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
        assert_ne!(WebhookSecret::generate(), secret);
    }
}

/// An endpoint as the console lists it: no secret (it is shown once, at creation or
/// rotation), with why it is disabled if it is.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EndpointSummary {
    pub id: WebhookEndpointId,
    pub url: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTime<Utc>>,
}

const SUMMARY_COLUMNS: &str =
    "id, url, description, created_at, disabled_at, disabled_reason, failing_since";

/// A merchant's endpoints, enabled or not, newest first (at most `limit`).
pub async fn summaries<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    limit: i64,
) -> Result<Vec<EndpointSummary>, DbError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM webhook_endpoints WHERE merchant_id = $1
         ORDER BY created_at DESC, id DESC LIMIT $2"
    ))
    .bind(merchant.as_uuid())
    .bind(limit)
    .fetch_all(exec)
    .await?)
}

/// One of `merchant`'s endpoints, enabled or not.
pub async fn summary<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    id: WebhookEndpointId,
) -> Result<Option<EndpointSummary>, DbError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(exec)
    .await?)
}

/// Enables a disabled endpoint again (a person decided it is fixed): its failing streak
/// starts afresh. Events from now on reach it; what was skipped while it was disabled is
/// redelivered per event. Returns whether it was disabled.
pub async fn enable<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    id: WebhookEndpointId,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL
         WHERE id = $1 AND merchant_id = $2 AND disabled_at IS NOT NULL",
    )
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An endpoint's delivery attempts, newest first, at most `limit`. The caller has checked
/// that the endpoint belongs to the merchant asking.
pub async fn attempts_for_endpoint<'e>(
    exec: impl PgExecutor<'e>,
    endpoint: WebhookEndpointId,
    limit: i64,
) -> Result<Vec<DeliveryAttempt>, DbError> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        "SELECT id, event_id, transaction_id, endpoint_id, url, attempt, status_code, latency_ms, response_excerpt,
                error, created_at
         FROM delivery_attempts WHERE endpoint_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(endpoint.as_uuid())
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows.into_iter().map(DeliveryAttempt::from).collect())
}
