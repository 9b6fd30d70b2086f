//! The `transaction_history` table: one row per state a payment entered, written by triggers
//! on `transactions` (migrations/20261206000200_transaction_history.sql) in the commit of the
//! change, whichever writer made it. Read by the console's timeline, gateway health and
//! activity chart; nothing here writes it.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::DbError;
use crate::domain::{GatewayName, TransactionId, TransactionStatus};

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub id: i64,
    pub transaction_id: TransactionId,
    /// The transaction's version after the change.
    pub version: i64,
    /// `None`: the payment was created in `to_status`.
    pub from_status: Option<TransactionStatus>,
    pub to_status: TransactionStatus,
    /// The gateway of the latest provider attempt at that moment (`routed_gateway`).
    pub gateway: Option<GatewayName>,
    /// Provider calls started up to that moment.
    pub attempt: i32,
    pub failure_code: Option<String>,
    pub at: DateTime<Utc>,
}

impl HistoryEntry {
    /// Whether this row ends a provider attempt (the payment left `submitting`).
    pub fn ends_attempt(&self) -> bool {
        self.from_status == Some(TransactionStatus::Submitting)
    }
}

/// A `transaction_history` row as [`COLUMNS`] selects it.
#[derive(sqlx::FromRow)]
pub(crate) struct HistoryRow {
    id: i64,
    transaction_id: uuid::Uuid,
    version: i64,
    from_status: Option<String>,
    to_status: String,
    gateway: Option<String>,
    attempt: i32,
    failure_code: Option<String>,
    at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str =
    "id, transaction_id, version, from_status, to_status, gateway, attempt, failure_code, at";

/// A stored status that does not parse: a bug or a hand edit.
pub(crate) fn status(table: &'static str, raw: &str) -> Result<TransactionStatus, DbError> {
    raw.parse::<TransactionStatus>()
        .map_err(|e| DbError::Corrupt {
            table,
            detail: e.to_string(),
        })
}

/// A stored gateway name that does not parse.
pub(crate) fn gateway(
    table: &'static str,
    raw: Option<String>,
) -> Result<Option<GatewayName>, DbError> {
    raw.map(|g| {
        GatewayName::parse(&g).map_err(|e| DbError::Corrupt {
            table,
            detail: e.to_string(),
        })
    })
    .transpose()
}

impl TryFrom<HistoryRow> for HistoryEntry {
    type Error = DbError;

    fn try_from(row: HistoryRow) -> Result<Self, DbError> {
        const TABLE: &str = "transaction_history";
        Ok(Self {
            id: row.id,
            transaction_id: TransactionId::from_uuid(row.transaction_id),
            version: row.version,
            from_status: row
                .from_status
                .as_deref()
                .map(|s| status(TABLE, s))
                .transpose()?,
            to_status: status(TABLE, &row.to_status)?,
            gateway: gateway(TABLE, row.gateway)?,
            attempt: row.attempt,
            failure_code: row.failure_code,
            at: row.at,
        })
    }
}

/// A payment's history, oldest first. Payments that changed before the table existed have
/// no rows for those changes.
pub async fn for_transaction<'e>(
    exec: impl PgExecutor<'e>,
    id: TransactionId,
) -> Result<Vec<HistoryEntry>, DbError> {
    let sql =
        format!("SELECT {COLUMNS} FROM transaction_history WHERE transaction_id = $1 ORDER BY id");
    let rows: Vec<HistoryRow> = sqlx::query_as(&sql)
        .bind(id.as_uuid())
        .fetch_all(exec)
        .await?;
    rows.into_iter().map(HistoryEntry::try_from).collect()
}
