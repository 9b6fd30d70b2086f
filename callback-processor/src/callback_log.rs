//! The `callback_log` table: one row per provider event settled, unique per
//! `(gateway, provider_event_id)` so a duplicate is a no-op.

use chrono::{DateTime, Utc};
use paygate_core::db::DbError;
use paygate_core::domain::{GatewayName, Money, TransactionId, TransactionStatus};
use sqlx::PgExecutor;

use crate::decide::Outcome;

/// A row to write.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub gateway: &'a GatewayName,
    pub provider_event_id: &'a str,
    pub transaction_id: TransactionId,
    pub reported_status: TransactionStatus,
    pub failure_code: Option<&'a str>,
    pub provider_reference: Option<&'a str>,
    pub reported_money: Money,
    pub outcome: Outcome,
    pub needs_review: bool,
    pub detail: Option<&'a str>,
    pub status_before: TransactionStatus,
    pub version_before: i64,
    pub received_at: DateTime<Utc>,
}

/// A stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub gateway: String,
    pub provider_event_id: String,
    pub transaction_id: TransactionId,
    pub reported_status: String,
    pub failure_code: Option<String>,
    pub provider_reference: Option<String>,
    pub reported_amount: i64,
    pub reported_currency: String,
    pub outcome: Outcome,
    pub needs_review: bool,
    pub detail: Option<String>,
    pub status_before: String,
    pub version_before: i64,
    pub received_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// Inserts the row unless the event is already logged. `None` means it was: a duplicate
/// (a concurrent insert of the same event waits for the other's commit, then lands here).
pub async fn insert<'e>(
    exec: impl PgExecutor<'e>,
    entry: &NewEntry<'_>,
) -> Result<Option<i64>, DbError> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO callback_log (gateway, provider_event_id, transaction_id, reported_status, failure_code,
             provider_reference, reported_amount, reported_currency, outcome, needs_review, detail,
             status_before, version_before, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (gateway, provider_event_id) DO NOTHING
         RETURNING id",
    )
    .bind(entry.gateway.as_str())
    .bind(entry.provider_event_id)
    .bind(entry.transaction_id.as_uuid())
    .bind(entry.reported_status.as_str())
    .bind(entry.failure_code)
    .bind(entry.provider_reference)
    .bind(entry.reported_money.amount.minor_units())
    .bind(entry.reported_money.currency.code())
    .bind(entry.outcome.as_str())
    .bind(entry.needs_review)
    .bind(entry.detail)
    .bind(entry.status_before.as_str())
    .bind(entry.version_before)
    .bind(entry.received_at)
    .fetch_optional(exec)
    .await?;
    Ok(id)
}

const COLUMNS: &str = "id, gateway, provider_event_id, transaction_id, reported_status, failure_code,
    provider_reference, reported_amount, reported_currency, outcome, needs_review, detail, status_before,
    version_before, received_at, created_at";

/// The row for one provider event, if it was settled before.
pub async fn find<'e>(
    exec: impl PgExecutor<'e>,
    gateway: &GatewayName,
    provider_event_id: &str,
) -> Result<Option<Entry>, DbError> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM callback_log WHERE gateway = $1 AND provider_event_id = $2"
    ))
    .bind(gateway.as_str())
    .bind(provider_event_id)
    .fetch_optional(exec)
    .await?;
    row.map(Entry::try_from).transpose()
}

/// Every callback settled for one transaction, oldest first.
pub async fn for_transaction<'e>(
    exec: impl PgExecutor<'e>,
    transaction: TransactionId,
) -> Result<Vec<Entry>, DbError> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM callback_log WHERE transaction_id = $1 ORDER BY id"
    ))
    .bind(transaction.as_uuid())
    .fetch_all(exec)
    .await?;
    rows.into_iter().map(Entry::try_from).collect()
}

/// Flags a logged event for review (an event id the provider reused with other content).
pub async fn flag_for_review<'e>(
    exec: impl PgExecutor<'e>,
    id: i64,
    detail: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE callback_log SET needs_review = true,
             detail = coalesce(detail || '; ', '') || $2
         WHERE id = $1 AND NOT needs_review",
    )
    .bind(id)
    .bind(detail)
    .execute(exec)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    gateway: String,
    provider_event_id: String,
    transaction_id: uuid::Uuid,
    reported_status: String,
    failure_code: Option<String>,
    provider_reference: Option<String>,
    reported_amount: i64,
    reported_currency: String,
    outcome: String,
    needs_review: bool,
    detail: Option<String>,
    status_before: String,
    version_before: i64,
    received_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl TryFrom<Row> for Entry {
    type Error = DbError;
    fn try_from(row: Row) -> Result<Self, DbError> {
        let outcome = Outcome::parse(&row.outcome).ok_or_else(|| DbError::Corrupt {
            table: "callback_log",
            detail: format!("unknown outcome {:?}", row.outcome),
        })?;
        Ok(Self {
            id: row.id,
            gateway: row.gateway,
            provider_event_id: row.provider_event_id,
            transaction_id: TransactionId::from_uuid(row.transaction_id),
            reported_status: row.reported_status,
            failure_code: row.failure_code,
            provider_reference: row.provider_reference,
            reported_amount: row.reported_amount,
            reported_currency: row.reported_currency.trim_end().to_owned(),
            outcome,
            needs_review: row.needs_review,
            detail: row.detail,
            status_before: row.status_before,
            version_before: row.version_before,
            received_at: row.received_at,
            created_at: row.created_at,
        })
    }
}
