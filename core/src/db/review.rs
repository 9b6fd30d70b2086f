//! The operator's review queue: callbacks the callback processor flagged (a conflict with
//! our record, an amount or currency mismatch) and never applied. A person looks at each
//! and records what they found; the flag stays (it says what happened), `reviewed_at` takes
//! it off the queue. Nothing here changes money: a payment whose outcome is really unknown
//! is `unresolved` (found with [`super::transactions::search`]) and resolved through
//! [`crate::resolution`].

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::DbError;
use crate::domain::{MerchantId, TransactionId};

/// Longest note kept (the column's bound).
pub const MAX_NOTE_CHARS: usize = 2_000;
/// Longest reviewer name kept.
pub const MAX_REVIEWER_CHARS: usize = 200;

/// One flagged callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flagged {
    pub id: i64,
    pub gateway: String,
    pub provider_event_id: String,
    pub transaction_id: TransactionId,
    pub merchant_id: MerchantId,
    pub reported_status: String,
    pub reported_amount: i64,
    pub reported_currency: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub status_before: String,
    pub received_at: DateTime<Utc>,
    pub reviewed_at: Option<DateTime<Utc>>,
    pub reviewed_by: Option<String>,
    pub review_note: Option<String>,
}

type FlaggedRow = (
    i64,
    String,
    String,
    uuid::Uuid,
    uuid::Uuid,
    String,
    i64,
    String,
    String,
    Option<String>,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
);

fn flagged(
    (
        id,
        gateway,
        event,
        txn,
        merchant,
        status,
        amount,
        currency,
        outcome,
        detail,
        before,
        received,
        reviewed_at,
        reviewed_by,
        note,
    ): FlaggedRow,
) -> Flagged {
    Flagged {
        id,
        gateway,
        provider_event_id: event,
        transaction_id: TransactionId::from_uuid(txn),
        merchant_id: MerchantId::from_uuid(merchant),
        reported_status: status,
        reported_amount: amount,
        reported_currency: currency.trim().to_owned(),
        outcome,
        detail,
        status_before: before,
        received_at: received,
        reviewed_at,
        reviewed_by,
        review_note: note,
    }
}

/// Flagged callbacks not yet reviewed (oldest first) and then the latest reviewed ones, at
/// most `limit` of each.
pub async fn queue<'e>(exec: impl PgExecutor<'e>, limit: i64) -> Result<Vec<Flagged>, DbError> {
    let rows: Vec<FlaggedRow> = sqlx::query_as(
        "(SELECT c.id, c.gateway, c.provider_event_id, c.transaction_id, t.merchant_id, c.reported_status,
                 c.reported_amount, c.reported_currency, c.outcome, c.detail, c.status_before, c.received_at,
                 c.reviewed_at, c.reviewed_by, c.review_note
            FROM callback_log c JOIN transactions t ON t.id = c.transaction_id
           WHERE c.needs_review AND c.reviewed_at IS NULL ORDER BY c.created_at LIMIT $1)
         UNION ALL
         (SELECT c.id, c.gateway, c.provider_event_id, c.transaction_id, t.merchant_id, c.reported_status,
                 c.reported_amount, c.reported_currency, c.outcome, c.detail, c.status_before, c.received_at,
                 c.reviewed_at, c.reviewed_by, c.review_note
            FROM callback_log c JOIN transactions t ON t.id = c.transaction_id
           WHERE c.needs_review AND c.reviewed_at IS NOT NULL ORDER BY c.reviewed_at DESC LIMIT $1)",
    )
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok(rows.into_iter().map(flagged).collect())
}

/// Records a review of flagged callback `id` by `reviewer`; only an unreviewed flagged
/// callback can be reviewed (returns whether one was).
pub async fn mark_reviewed<'e>(
    exec: impl PgExecutor<'e>,
    id: i64,
    reviewer: &str,
    note: &str,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE callback_log SET reviewed_at = now(), reviewed_by = $2, review_note = $3
         WHERE id = $1 AND needs_review AND reviewed_at IS NULL",
    )
    .bind(id)
    .bind(reviewer)
    .bind(note)
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}
