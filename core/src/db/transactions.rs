//! The transactions table: insert (with idempotency key and outbox row, one commit),
//! version-checked updates, fetch, and keyset listing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use super::outbox::{self, OutboxMessage};
use super::DbError;
use crate::domain::{
    CustomerReference, Failure, GatewayName, MerchantId, Money, Transaction, TransactionId,
    TransactionStatus, TransactionUpdate,
};

/// How long an idempotency key is remembered; Stripe keeps keys 24 hours, so do we (at least).
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The idempotency part of a create request: the merchant's key, a hash of the request as
/// received, and the response to replay for a repeat.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    pub key: String,
    pub request_hash: [u8; 32],
    pub response_status: u16,
    pub response_body: serde_json::Value,
    /// Keys older than this are forgotten and may be reused for a new request.
    pub retention: Duration,
}

/// What happened to an insert.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// Committed: the transaction, its key and its outbox row.
    Created,
    /// The key was used before with the same request: here is the first response.
    Replayed {
        status: u16,
        body: serde_json::Value,
    },
    /// The key was used before with a different request (Stripe answers 422).
    KeyReusedWithDifferentRequest,
    /// Another request with this key is being handled right now (Stripe answers 409).
    InFlight,
}

/// Inserts a new transaction, its idempotency key (if any) and the outbox message that
/// announces it, all in one Postgres transaction. Nothing is written unless all of it is.
///
/// A transaction-scoped advisory lock on (merchant, key) tells a concurrent duplicate apart
/// from a sequential one without blocking: the second of two simultaneous requests gets
/// [`InsertOutcome::InFlight`] at once instead of waiting for the first.
pub async fn insert(
    pool: &PgPool,
    transaction: &Transaction,
    idempotency: Option<&IdempotentRequest>,
    announcement: &OutboxMessage,
) -> Result<InsertOutcome, DbError> {
    let mut db = pool.begin().await?;
    if let Some(request) = idempotency {
        let merchant = transaction.merchant_id.as_uuid();
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1::text || ':' || $2, 0))",
        )
        .bind(merchant)
        .bind(&request.key)
        .fetch_one(&mut *db)
        .await?;
        if !locked {
            // Roll back now rather than on drop: sqlx rolls back dropped transactions lazily.
            db.rollback().await?;
            return Ok(InsertOutcome::InFlight);
        }
        let merchant_id = transaction.merchant_id;
        if let Some(outcome) = stored_outcome(
            &mut *db,
            merchant_id,
            &request.key,
            &request.request_hash,
            request.retention,
        )
        .await?
        {
            // Release the advisory lock now: a dropped transaction is only rolled back
            // lazily, and until then a sequential retry with this key would see "in flight".
            db.rollback().await?;
            return Ok(outcome);
        }
        // Unused, or expired: an expired row is forgotten so the key can serve anew.
        sqlx::query("DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2")
            .bind(merchant)
            .bind(&request.key)
            .execute(&mut *db)
            .await?;
    }

    insert_row(&mut *db, transaction).await?;
    if let Some(request) = idempotency {
        sqlx::query(
            "INSERT INTO idempotency_keys (merchant_id, key, request_hash, response_status, response_body, transaction_id)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(transaction.merchant_id.as_uuid())
        .bind(&request.key)
        .bind(&request.request_hash[..])
        .bind(i16::try_from(request.response_status).unwrap_or(500))
        .bind(&request.response_body)
        .bind(transaction.id.as_uuid())
        .execute(&mut *db)
        .await?;
    }
    outbox::enqueue(&mut *db, announcement).await?;
    db.commit().await?;
    Ok(InsertOutcome::Created)
}

/// What a live stored key says about a request: replay the first response (same request)
/// or refuse it (a different request under the same key). `None`: the key is unused or has
/// expired. The API asks this before validating, so a retry is answered with the first
/// response even when something validation depends on (a DNS lookup) fails this time.
pub async fn stored_outcome<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    key: &str,
    request_hash: &[u8; 32],
    retention: Duration,
) -> Result<Option<InsertOutcome>, DbError> {
    let previous: Option<(Vec<u8>, i16, serde_json::Value)> = sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys
         WHERE merchant_id = $1 AND key = $2 AND created_at > now() - make_interval(secs => $3)",
    )
    .bind(merchant.as_uuid())
    .bind(key)
    .bind(retention.as_secs_f64())
    .fetch_optional(exec)
    .await?;
    Ok(previous.map(|(hash, status, body)| {
        if hash.as_slice() == request_hash.as_slice() {
            InsertOutcome::Replayed {
                status: u16::try_from(status).unwrap_or(500),
                body,
            }
        } else {
            InsertOutcome::KeyReusedWithDifferentRequest
        }
    }))
}

async fn insert_row<'e>(exec: impl PgExecutor<'e>, t: &Transaction) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO transactions (id, merchant_id, kind, amount, currency, customer_reference, gateway, status,
             version, attempts, next_attempt_at, provider_reference, failure_code, failure_message, callback_url,
             metadata, created_at, updated_at, routed_gateway)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
    )
    .bind(t.id.as_uuid())
    .bind(t.merchant_id.as_uuid())
    .bind(t.kind.as_str())
    .bind(t.money.amount.minor_units())
    .bind(t.money.currency.code())
    .bind(t.customer.as_str())
    .bind(t.gateway.as_ref().map(GatewayName::as_str))
    .bind(t.status.as_str())
    .bind(t.version)
    .bind(t.attempts)
    .bind(t.next_attempt_at)
    .bind(t.provider_reference.as_deref())
    .bind(t.failure.as_ref().map(|f| f.code.as_str()))
    .bind(t.failure.as_ref().map(|f| f.message.as_str()))
    .bind(t.callback_url.as_deref())
    .bind(&t.metadata)
    .bind(t.created_at)
    .bind(t.updated_at)
    .bind(t.routed_gateway.as_ref().map(GatewayName::as_str))
    .execute(exec)
    .await?;
    Ok(())
}

/// Writes `update` only if the row still has `update.expected_version`. Returns the new
/// transaction when it applied and `None` when another writer got there first (the caller
/// reloads and decides again). This conditional write is what makes the Redis lock an
/// optimisation rather than the guarantee.
pub async fn apply<'e>(
    exec: impl PgExecutor<'e>,
    update: &TransactionUpdate,
) -> Result<Option<Transaction>, DbError> {
    let t = &update.next;
    let result = sqlx::query(
        "UPDATE transactions SET status = $3, version = $4, attempts = $5, next_attempt_at = $6, routed_gateway = $7,
             provider_reference = $8, failure_code = $9, failure_message = $10, updated_at = $11
         WHERE id = $1 AND version = $2",
    )
    .bind(t.id.as_uuid())
    .bind(update.expected_version)
    .bind(t.status.as_str())
    .bind(t.version)
    .bind(t.attempts)
    .bind(t.next_attempt_at)
    .bind(t.routed_gateway.as_ref().map(GatewayName::as_str))
    .bind(t.provider_reference.as_deref())
    .bind(t.failure.as_ref().map(|f| f.code.as_str()))
    .bind(t.failure.as_ref().map(|f| f.message.as_str()))
    .bind(t.updated_at)
    .execute(exec)
    .await?;
    Ok((result.rows_affected() == 1).then(|| t.clone()))
}

/// Applies `update` and, only if it applied, enqueues `announcement` in the same commit:
/// the state change and the event that announces it are written together or not at all.
pub async fn apply_and_announce(
    pool: &PgPool,
    update: &TransactionUpdate,
    announcement: Option<&OutboxMessage>,
) -> Result<Option<Transaction>, DbError> {
    let mut db = pool.begin().await?;
    let Some(applied) = apply(&mut *db, update).await? else {
        return Ok(None);
    };
    if let Some(message) = announcement {
        outbox::enqueue(&mut *db, message).await?;
    }
    db.commit().await?;
    Ok(Some(applied))
}

/// Retries that are due: locks up to `limit` `retry_scheduled` rows whose time has come and
/// pushes their `next_attempt_at` forward by `requeue_after` (without a version bump: it is
/// scheduling, not state), so the next scan does not enqueue them again while their message
/// is on its way. If the message is lost, they come due again after `requeue_after`.
pub async fn take_due_retries(
    pool: &PgPool,
    limit: i64,
    requeue_after: Duration,
) -> Result<Vec<Transaction>, DbError> {
    let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
        "UPDATE transactions SET next_attempt_at = now() + make_interval(secs => $2)
         WHERE id IN (
             SELECT id FROM transactions
             WHERE status = 'retry_scheduled' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    ))
    .bind(limit)
    .bind(requeue_after.as_secs_f64())
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Transaction::try_from).collect()
}

/// Transactions in `submitting`/`submitted` not updated for `older_than`: candidates for
/// reconciliation (a crashed processor, a callback that never came).
pub async fn stuck_in_flight(
    pool: &PgPool,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Transaction>, DbError> {
    let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transactions
         WHERE status IN ('submitting', 'submitted') AND updated_at < now() - make_interval(secs => $1)
         ORDER BY updated_at LIMIT $2"
    ))
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Transaction::try_from).collect()
}

/// Notes that a stuck transaction was looked at (the provider says it is still executing),
/// so reconciliation does not ask again at every scan. Not a state change: no version bump.
pub async fn touch(pool: &PgPool, id: TransactionId, version: i64) -> Result<bool, DbError> {
    let done =
        sqlx::query("UPDATE transactions SET updated_at = now() WHERE id = $1 AND version = $2")
            .bind(id.as_uuid())
            .bind(version)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// How many transactions wait for a retry (a gauge for metrics).
pub async fn retry_queue_depth<'e>(exec: impl PgExecutor<'e>) -> Result<i64, DbError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM transactions WHERE status = 'retry_scheduled'")
            .fetch_one(exec)
            .await?,
    )
}

const COLUMNS: &str = "id, merchant_id, kind, amount, currency, customer_reference, gateway, status, version, attempts,
    next_attempt_at, provider_reference, failure_code, failure_message, callback_url, metadata, created_at, updated_at,
    routed_gateway";

/// Any merchant's transaction, for the services (never for a merchant-facing read).
pub async fn get<'e>(
    exec: impl PgExecutor<'e>,
    id: TransactionId,
) -> Result<Option<Transaction>, DbError> {
    let row: Option<TransactionRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM transactions WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(exec)
            .await?;
    row.map(Transaction::try_from).transpose()
}

/// A transaction as its merchant may see it: another merchant's id is simply not found.
pub async fn get_for_merchant<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    id: TransactionId,
) -> Result<Option<Transaction>, DbError> {
    let row: Option<TransactionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transactions WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(exec)
    .await?;
    row.map(Transaction::try_from).transpose()
}

/// One page of a merchant's transactions, newest first.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery {
    pub status: Option<TransactionStatus>,
    /// Page size; callers clamp it (the API allows 1..=100).
    pub limit: i64,
    /// Keyset cursor: return transactions older than this one (Stripe's `starting_after`).
    pub starting_after: Option<TransactionId>,
}

pub async fn list<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    query: ListQuery,
) -> Result<Vec<Transaction>, DbError> {
    let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transactions
         WHERE merchant_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(merchant.as_uuid())
    .bind(query.status.map(TransactionStatus::as_str))
    .bind(query.starting_after.map(|id| id.as_uuid()))
    .bind(query.limit)
    .fetch_all(exec)
    .await?;
    rows.into_iter().map(Transaction::try_from).collect()
}

/// Forgets idempotency keys past their retention. Returns how many were removed.
pub async fn purge_idempotency_keys(pool: &PgPool, retention: Duration) -> Result<u64, DbError> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[derive(sqlx::FromRow)]
struct TransactionRow {
    id: uuid::Uuid,
    merchant_id: uuid::Uuid,
    kind: String,
    amount: i64,
    currency: String,
    customer_reference: String,
    gateway: Option<String>,
    status: String,
    version: i64,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    provider_reference: Option<String>,
    failure_code: Option<String>,
    failure_message: Option<String>,
    callback_url: Option<String>,
    metadata: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    routed_gateway: Option<String>,
}

impl TryFrom<TransactionRow> for Transaction {
    type Error = DbError;
    fn try_from(row: TransactionRow) -> Result<Self, DbError> {
        let corrupt = |detail: String| DbError::Corrupt {
            table: "transactions",
            detail,
        };
        Ok(Transaction {
            id: TransactionId::from_uuid(row.id),
            merchant_id: MerchantId::from_uuid(row.merchant_id),
            kind: row.kind.parse().map_err(|e| corrupt(format!("{e}")))?,
            money: Money::from_parts(row.amount, &row.currency)
                .map_err(|e| corrupt(format!("{e}")))?,
            customer: CustomerReference::parse(&row.customer_reference)
                .map_err(|e| corrupt(format!("{e}")))?,
            gateway: row
                .gateway
                .as_deref()
                .map(GatewayName::parse)
                .transpose()
                .map_err(|e| corrupt(format!("{e}")))?,
            routed_gateway: row
                .routed_gateway
                .as_deref()
                .map(GatewayName::parse)
                .transpose()
                .map_err(|e| corrupt(format!("{e}")))?,
            status: row.status.parse().map_err(|e| corrupt(format!("{e}")))?,
            version: row.version,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            provider_reference: row.provider_reference,
            failure: row.failure_code.map(|code| Failure {
                code,
                message: row.failure_message.unwrap_or_default(),
            }),
            callback_url: row.callback_url,
            metadata: row.metadata,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}
