//! The `callback_log` table: one row per provider event settled, unique per
//! `(gateway, provider_event_id)` so a duplicate is a no-op.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use paygate_core::db::transactions::{self, Bindable, UPDATE_SQL};
use paygate_core::db::webhooks::{self, NewEvent};
use paygate_core::db::DbError;
use paygate_core::domain::{
    GatewayName, Money, TransactionId, TransactionStatus, TransactionUpdate,
};
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

/// What one settling statement ([`insert_and_apply`], [`insert_if_current`]) wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The transaction no longer has the expected version: nothing was written.
    Stale,
    /// The event was logged before (or by a concurrent worker): nothing was written.
    AlreadyLogged,
    /// The log row was written (and, for [`insert_and_apply`], the update and its
    /// announcement with it).
    Logged,
}

impl Written {
    /// From the statement's answer: whether the row had the expected version, and whether
    /// the log row was written.
    fn from_flags(current: bool, logged: bool) -> Self {
        match (current, logged) {
            (false, _) => Self::Stale,
            (true, false) => Self::AlreadyLogged,
            (true, true) => Self::Logged,
        }
    }
}

/// The columns of a new row, in [`bind_entry`]'s order.
const INSERT_COLUMNS: &str =
    "gateway, provider_event_id, transaction_id, reported_status, failure_code,
    provider_reference, reported_amount, reported_currency, outcome, needs_review, detail,
    status_before, version_before, received_at";

/// How many parameters [`bind_entry`] binds.
const ENTRY_PARAMS: usize = 14;

/// `$first, …` for the [`ENTRY_PARAMS`] parameters of a row bound from `$first` on.
fn entry_params(first: usize) -> String {
    (first..first.saturating_add(ENTRY_PARAMS))
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds a new row as the next [`ENTRY_PARAMS`] parameters ([`INSERT_COLUMNS`]).
fn bind_entry<'q, Q: Bindable<'q>>(query: Q, entry: &'q NewEntry<'q>) -> Q {
    query
        .bind_value(entry.gateway.as_str())
        .bind_value(entry.provider_event_id)
        .bind_value(entry.transaction_id.as_uuid())
        .bind_value(entry.reported_status.as_str())
        .bind_value(entry.failure_code)
        .bind_value(entry.provider_reference)
        .bind_value(entry.reported_money.amount.minor_units())
        .bind_value(entry.reported_money.currency.code())
        .bind_value(entry.outcome.as_str())
        .bind_value(entry.needs_review)
        .bind_value(entry.detail)
        .bind_value(entry.status_before.as_str())
        .bind_value(entry.version_before)
        .bind_value(entry.received_at)
}

/// The row locked for the statement's commit, only if it still has the expected version
/// (`$1` id, `$2` version). Waiting for a concurrent writer's commit, Postgres re-reads the
/// row and drops it when the version moved: then nothing below is written.
fn current_row(lock: &str) -> String {
    format!("cur AS (SELECT id FROM transactions WHERE id = $1 AND version = $2 FOR {lock})")
}

/// The log row, from `$first`, written only for a current row; `ON CONFLICT` makes an
/// event logged before (or by a concurrent worker, once it commits) write nothing.
fn log_row(first: usize) -> String {
    format!(
        "logged AS (
             INSERT INTO callback_log ({INSERT_COLUMNS}) SELECT {} FROM cur
             ON CONFLICT (gateway, provider_event_id) DO NOTHING
             RETURNING id
         )",
        entry_params(first)
    )
}

/// [`insert_if_current`]: `$1` id, `$2` version, the row from `$3`. Answers
/// `(current, logged)`.
static INSERT_IF_CURRENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, {}
         SELECT EXISTS (SELECT 1 FROM cur), EXISTS (SELECT 1 FROM logged)",
        current_row("SHARE"),
        log_row(3)
    )
});

/// The version-checked update (`$1..=$13`, [`transactions::bind_update`]), run only when the
/// log row was written. The row is locked by `cur` at the expected version, so when the log
/// row was written the update applies too.
static APPLY_IF_LOGGED: LazyLock<String> = LazyLock::new(|| {
    format!("applied AS ({UPDATE_SQL} AND EXISTS (SELECT 1 FROM logged) RETURNING 1)")
});

/// [`insert_and_apply`] without an announcement: the row from `$14`. Answers
/// `(current, logged, applied)`.
static INSERT_AND_APPLY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, {}, {}
         SELECT EXISTS (SELECT 1 FROM cur), EXISTS (SELECT 1 FROM logged), EXISTS (SELECT 1 FROM applied)",
        current_row("UPDATE"),
        log_row(14),
        *APPLY_IF_LOGGED
    )
});

/// [`insert_and_apply`] with the merchant's webhook event (`$14..=$21`,
/// [`webhooks::bind_event`]) recorded only when the update applied: the row from `$22`.
static INSERT_APPLY_AND_RECORD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}, {}, {}, {}
         SELECT EXISTS (SELECT 1 FROM cur), EXISTS (SELECT 1 FROM logged), EXISTS (SELECT 1 FROM applied)",
        current_row("UPDATE"),
        log_row(22),
        *APPLY_IF_LOGGED,
        webhooks::record_event_ctes(Some("applied"), 14)
    )
});

/// Logs a decision that changes nothing (late, conflict, mismatch) only if the transaction
/// still has `expected_version`, in one statement (its own transaction): a decision made
/// on a stale snapshot is not recorded.
pub async fn insert_if_current<'q>(
    exec: impl PgExecutor<'_>,
    entry: &'q NewEntry<'q>,
    expected_version: i64,
) -> Result<Written, DbError> {
    let query = sqlx::query_as(&INSERT_IF_CURRENT)
        .bind(entry.transaction_id.as_uuid())
        .bind(expected_version);
    let (current, logged): (bool, bool) = bind_entry(query, entry).fetch_one(exec).await?;
    Ok(Written::from_flags(current, logged))
}

/// Logs the provider's event and applies `update` with the merchant's webhook event (if
/// any) in one statement, so one round trip and one commit (the ledger's trigger on
/// `transactions` writes its entries in it): nothing at all when the version moved or the
/// provider's event was logged before.
pub async fn insert_and_apply<'q>(
    exec: impl PgExecutor<'_>,
    entry: &'q NewEntry<'q>,
    update: &'q TransactionUpdate,
    event: Option<&'q NewEvent>,
) -> Result<Written, DbError> {
    let row: (bool, bool, bool) = match event {
        Some(event) => {
            let query = transactions::bind_update(sqlx::query_as(&INSERT_APPLY_AND_RECORD), update);
            let query = webhooks::bind_event(query, event);
            bind_entry(query, entry).fetch_one(exec).await?
        }
        None => {
            let query = transactions::bind_update(sqlx::query_as(&INSERT_AND_APPLY), update);
            bind_entry(query, entry).fetch_one(exec).await?
        }
    };
    let (current, logged, applied) = row;
    if logged && !applied {
        // Cannot happen (`cur` holds the row at the expected version); if it did, the log
        // would say "applied" for a change that was not made: a person must look.
        return Err(DbError::Corrupt {
            table: "callback_log",
            detail: format!(
                "event logged but transaction {} not updated",
                update.next.id
            ),
        });
    }
    Ok(Written::from_flags(current, logged))
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
