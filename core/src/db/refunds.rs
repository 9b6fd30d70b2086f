//! The refunds table: the insert (refund, idempotency key and outbox row in one commit),
//! version-checked updates with their announcement, reads.
//!
//! The rules are the database's (migration `20261204000200_refunds.sql`): the insert's
//! trigger locks the payment, refuses what is not refundable or more than is left, fills in
//! a missing amount and holds it on the merchant's balance; a change of status posts or
//! voids that hold in the same commit. Here nothing is checked before writing, so nothing
//! can be raced.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use super::outbox::{self, OutboxMessage};
use super::transactions::{stored_outcome, Bindable, InsertOutcome};
use super::webhooks::{self, NewEvent};
use super::DbError;
use crate::domain::{
    clock, Failure, MerchantId, Money, NewRefund, Refund, RefundId, RefundState, RefundUpdate,
    TransactionId,
};

/// How long a new refund's announcement has before the scheduler's scan announces it again.
pub const ANNOUNCEMENT_GRACE: Duration = Duration::from_secs(60);

/// Why the database refused a refund. Nothing of it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundRefusal {
    /// Not a succeeded deposit of this merchant (`PGL04`).
    NotRefundable,
    /// More than what is left to refund of the payment (`PGL05`); `remaining` may be 0.
    AmountTooLarge { remaining: i64 },
    /// The merchant's available balance is less than the amount (`PGL01`).
    BalanceInsufficient,
}

impl RefundRefusal {
    /// The refusal a database error carries, if it is one.
    pub fn of(error: &sqlx::Error) -> Option<Self> {
        let database = error.as_database_error()?;
        let pg = database.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
        match pg.code() {
            "PGL01" => Some(Self::BalanceInsufficient),
            "PGL04" => Some(Self::NotRefundable),
            "PGL05" => Some(Self::AmountTooLarge {
                remaining: pg.detail().and_then(|d| d.parse().ok()).unwrap_or(0),
            }),
            _ => None,
        }
    }
}

/// The idempotency part of a refund request (the response is computed from the refund the
/// database wrote, since its amount may have been filled in there).
#[derive(Debug, Clone)]
pub struct RefundKey {
    pub key: String,
    pub request_hash: [u8; 32],
    pub retention: Duration,
}

/// What happened to an insert.
#[derive(Debug, Clone, PartialEq)]
pub enum RefundInsert {
    /// Committed: the refund, its hold, its key and its outbox row.
    Created(Refund),
    /// The key decided: a replay of the first response, a key reused with another request,
    /// or one in flight ([`InsertOutcome`] without `Created`/`Refused`).
    Keyed(InsertOutcome),
    /// The database refused it; the caller stores its 4xx under the key
    /// (`transactions::remember_refusal`).
    Refused(RefundRefusal),
}

/// Inserts a refund with its key and announcement in one database transaction:
///
/// 1. a transaction-scoped advisory lock on (merchant, key), the one the payment inserts
///    use, so a concurrent duplicate is told apart at once ([`InsertOutcome::InFlight`]);
/// 2. a live key answers (replay or refusal) and nothing is written;
/// 3. the refund row (its triggers lock the payment, check, hold);
/// 4. the key with `response(refund)` and the outbox row `announce(refund)`; commit.
///
/// Several round trips instead of one statement because the stored response carries the
/// amount the database chose.
pub async fn insert(
    pool: &PgPool,
    new: &NewRefund,
    id: RefundId,
    now: DateTime<Utc>,
    key: Option<&RefundKey>,
    announce: impl FnOnce(&Refund) -> OutboxMessage,
    response: impl FnOnce(&Refund) -> Result<(u16, serde_json::Value), DbError>,
) -> Result<RefundInsert, DbError> {
    // The announcement is the first call's trigger; the scheduler's due scan is only the
    // safety net for a lost one, so it waits this long first.
    let due = clock::after(now, ANNOUNCEMENT_GRACE);
    let mut db = pool.begin().await?;
    if let Some(key) = key {
        let locked: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1::text || ':' || $2, 0))",
        )
        .bind(new.merchant_id.as_uuid())
        .bind(&key.key)
        .fetch_one(&mut *db)
        .await?;
        if !locked {
            return Ok(RefundInsert::Keyed(InsertOutcome::InFlight));
        }
        let stored = stored_outcome(
            &mut *db,
            new.merchant_id,
            &key.key,
            &key.request_hash,
            key.retention,
        )
        .await?;
        if let Some(outcome) = stored {
            return Ok(RefundInsert::Keyed(outcome));
        }
    }
    let inserted: Result<(i64, String), sqlx::Error> = sqlx::query_as(
        "INSERT INTO refunds (id, transaction_id, merchant_id, amount, currency, status, version,
             attempts, next_attempt_at, reason, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'XXX', 'pending', 1, 0, $7, $6, $5, $5)
         RETURNING amount, currency",
    )
    .bind(id.as_uuid())
    .bind(new.transaction_id.as_uuid())
    .bind(new.merchant_id.as_uuid())
    .bind(new.amount)
    .bind(now)
    .bind(new.reason.as_deref())
    .bind(due)
    .fetch_one(&mut *db)
    .await;
    let (amount, currency) = match inserted {
        Ok(row) => row,
        Err(error) => {
            return match RefundRefusal::of(&error) {
                Some(refusal) => Ok(RefundInsert::Refused(refusal)),
                None => Err(error.into()),
            };
        }
    };
    let refund = Refund {
        id,
        transaction_id: new.transaction_id,
        merchant_id: new.merchant_id,
        money: Money::from_parts(amount, currency.trim()).map_err(|e| DbError::Corrupt {
            table: "refunds",
            detail: e.to_string(),
        })?,
        status: RefundState::Pending,
        version: 1,
        attempts: 0,
        next_attempt_at: Some(due),
        provider_reference: None,
        failure: None,
        reason: new.reason.clone(),
        created_at: now,
        updated_at: now,
    };
    if let Some(key) = key {
        let (status, body) = response(&refund)?;
        let stored = sqlx::query(
            "INSERT INTO idempotency_keys (merchant_id, key, request_hash, response_status, response_body, transaction_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (merchant_id, key) DO UPDATE SET
                 request_hash = EXCLUDED.request_hash, response_status = EXCLUDED.response_status,
                 response_body = EXCLUDED.response_body, transaction_id = EXCLUDED.transaction_id,
                 created_at = now()
             WHERE idempotency_keys.created_at <= now() - make_interval(secs => $7)",
        )
        .bind(new.merchant_id.as_uuid())
        .bind(&key.key)
        .bind(&key.request_hash[..])
        .bind(i16::try_from(status).unwrap_or(500))
        .bind(&body)
        .bind(new.transaction_id.as_uuid())
        .bind(key.retention.as_secs_f64())
        .execute(&mut *db)
        .await?;
        if stored.rows_affected() != 1 {
            // Taken by a request outside the advisory lock's reach this instant (retention
            // housekeeping): nothing is committed and the client retries.
            return Ok(RefundInsert::Keyed(InsertOutcome::InFlight));
        }
    }
    outbox::enqueue(&mut *db, &announce(&refund)).await?;
    db.commit().await?;
    outbox::committed();
    Ok(RefundInsert::Created(refund))
}

const COLUMNS: &str = "id, transaction_id, merchant_id, amount, currency, status, version, attempts,
    next_attempt_at, provider_reference, failure_code, failure_message, reason, created_at, updated_at";

/// Any merchant's refund, for the services.
pub async fn get<'e>(exec: impl PgExecutor<'e>, id: RefundId) -> Result<Option<Refund>, DbError> {
    let row: Option<RefundRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM refunds WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(exec)
            .await?;
    row.map(Refund::try_from).transpose()
}

/// A refund as its merchant may see it: another merchant's is not found.
pub async fn get_for_merchant<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    id: RefundId,
) -> Result<Option<Refund>, DbError> {
    let row: Option<RefundRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(exec)
    .await?;
    row.map(Refund::try_from).transpose()
}

/// The refund a provider's reference names (a callback without our refund id).
pub async fn get_by_provider_reference<'e>(
    exec: impl PgExecutor<'e>,
    reference: &str,
) -> Result<Option<Refund>, DbError> {
    let row: Option<RefundRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE provider_reference = $1 ORDER BY id LIMIT 1"
    ))
    .bind(reference)
    .fetch_optional(exec)
    .await?;
    row.map(Refund::try_from).transpose()
}

/// A payment's refunds, oldest first (a payment has few: each takes part of its amount).
pub async fn list_for_transaction<'e>(
    exec: impl PgExecutor<'e>,
    transaction: TransactionId,
    limit: i64,
) -> Result<Vec<Refund>, DbError> {
    let rows: Vec<RefundRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM refunds WHERE transaction_id = $1 ORDER BY id LIMIT $2"
    ))
    .bind(transaction.as_uuid())
    .bind(limit)
    .fetch_all(exec)
    .await?;
    rows.into_iter().map(Refund::try_from).collect()
}

const UPDATE_SQL: &str =
    "UPDATE refunds SET status = $3, version = $4, attempts = $5, next_attempt_at = $6,
     provider_reference = $7, failure_code = $8, failure_message = $9, updated_at = $10
 WHERE id = $1 AND version = $2";

/// Writes `update` only if the row still has its expected version and, only then, records
/// `event` (the merchant's `refund.*` webhook event and its deliveries,
/// [`crate::announce::refund_completed`]) in the same statement, so the same commit as the
/// ledger's posting or void the status change triggers. `None`: another writer got there
/// first. Runs as its own commit on a pool, or inside the caller's transaction.
pub async fn apply_with_event<'e>(
    exec: impl PgExecutor<'e>,
    update: &RefundUpdate,
    event: Option<&NewEvent>,
) -> Result<Option<Refund>, DbError> {
    let applied: bool = match event {
        Some(event) => {
            let query = bind_update(sqlx::query_scalar(&APPLY_WITH_EVENT), update);
            webhooks::bind_event(query, event).fetch_one(exec).await?
        }
        None => {
            bind_update(sqlx::query_scalar(&APPLY), update)
                .fetch_one(exec)
                .await?
        }
    };
    Ok(applied.then(|| update.next.clone()))
}

/// Binds `update` as `$1..=$10` of [`UPDATE_SQL`].
fn bind_update<'q, Q: Bindable<'q>>(query: Q, update: &'q RefundUpdate) -> Q {
    let r = &update.next;
    query
        .bind_value(r.id.as_uuid())
        .bind_value(update.expected_version)
        .bind_value(r.status.as_str())
        .bind_value(r.version)
        .bind_value(r.attempts)
        .bind_value(r.next_attempt_at)
        .bind_value(r.provider_reference.as_deref())
        .bind_value(r.failure.as_ref().map(|f| f.code.as_str()))
        .bind_value(r.failure.as_ref().map(|f| f.message.as_str()))
        .bind_value(r.updated_at)
}

/// [`apply_with_event`] without an event: answers whether the update applied.
static APPLY: LazyLock<String> = LazyLock::new(|| {
    format!("WITH applied AS ({UPDATE_SQL} RETURNING 1) SELECT EXISTS (SELECT 1 FROM applied)")
});

/// [`apply_with_event`] with the event from `$11` ([`webhooks::bind_event`]), recorded only
/// when the update applied.
static APPLY_WITH_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH applied AS ({UPDATE_SQL} RETURNING 1), {}
         SELECT EXISTS (SELECT 1 FROM applied)",
        webhooks::record_event_ctes(Some("applied"), 11)
    )
});

/// Pending refunds whose next provider call is due: up to `limit`, their due time pushed
/// forward by `requeue_after` (scheduling, not state: no version bump) so the next scan does
/// not take them again while their message is on its way.
pub async fn take_due(
    pool: &PgPool,
    limit: i64,
    requeue_after: Duration,
) -> Result<Vec<Refund>, DbError> {
    let rows: Vec<RefundRow> = sqlx::query_as(&format!(
        "UPDATE refunds SET next_attempt_at = now() + make_interval(secs => $2)
         WHERE id IN (
             SELECT id FROM refunds WHERE status = 'pending' AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    ))
    .bind(limit)
    .bind(requeue_after.as_secs_f64())
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Refund::try_from).collect()
}

#[derive(sqlx::FromRow)]
struct RefundRow {
    id: uuid::Uuid,
    transaction_id: uuid::Uuid,
    merchant_id: uuid::Uuid,
    amount: i64,
    currency: String,
    status: String,
    version: i64,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    provider_reference: Option<String>,
    failure_code: Option<String>,
    failure_message: Option<String>,
    reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<RefundRow> for Refund {
    type Error = DbError;
    fn try_from(row: RefundRow) -> Result<Self, DbError> {
        let corrupt = |detail: String| DbError::Corrupt {
            table: "refunds",
            detail,
        };
        Ok(Refund {
            id: RefundId::from_uuid(row.id),
            transaction_id: TransactionId::from_uuid(row.transaction_id),
            merchant_id: MerchantId::from_uuid(row.merchant_id),
            money: Money::from_parts(row.amount, row.currency.trim())
                .map_err(|e| corrupt(e.to_string()))?,
            status: row.status.parse().map_err(|e| corrupt(format!("{e}")))?,
            version: row.version,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            provider_reference: row.provider_reference,
            failure: row.failure_code.map(|code| Failure {
                code,
                message: row.failure_message.unwrap_or_default(),
            }),
            reason: row.reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}
