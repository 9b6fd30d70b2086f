//! Queries of the healers (`crate::heal`): which transactions the broker seems to have lost,
//! and the marks that keep one row from being re-announced at every scan.
//!
//! Statuses are named explicitly (`pending`; `succeeded`, `failed`): a status added later
//! (such as `unresolved`) is never picked up by accident.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use uuid::Uuid;

use super::DbError;

/// What a healer re-announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealKind {
    /// A `pending` transaction nobody claimed: `transactions.pending` again.
    Pending,
    /// A terminal transaction with no webhook event: `transactions.completed` again.
    Completed,
}

impl HealKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
        }
    }
}

/// The scans' cutoff by the database's clock: `now - older_than`. A row last changed, or
/// re-announced, at or after it is left alone by a scan with this cutoff.
pub async fn cutoff<'e>(
    db: impl sqlx::PgExecutor<'e>,
    older_than: Duration,
) -> Result<DateTime<Utc>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT now() - make_interval(secs => $1)")
            .bind(older_than.as_secs_f64())
            .fetch_one(db)
            .await?,
    )
}

/// `pending` transactions not updated since `before` and not re-announced (at this
/// version) since `before`: `(id, version)`, oldest first.
pub async fn unclaimed_pending(
    db: &mut sqlx::Transaction<'_, Postgres>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT t.id, t.version FROM transactions t
         WHERE t.status = 'pending' AND t.updated_at < $1
           AND NOT EXISTS (
               SELECT 1 FROM heal_marks h
               WHERE h.transaction_id = t.id AND h.kind = 'pending' AND h.version = t.version
                 AND h.announced_at >= $1)
         ORDER BY t.updated_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(&mut **db)
    .await?)
}

/// Terminal transactions that became terminal in `[since, before)`, have no webhook event
/// and were never re-announced: `(id, version, became terminal)`, oldest first.
pub async fn terminal_without_event(
    db: &mut sqlx::Transaction<'_, Postgres>,
    since: DateTime<Utc>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, i64, DateTime<Utc>)>, DbError> {
    let upper = before;
    let rows = sqlx::query_as(
        "SELECT t.id, t.version, t.updated_at FROM transactions t
         WHERE t.status IN ('succeeded', 'failed') AND t.updated_at >= $1 AND t.updated_at < $2
           AND NOT EXISTS (SELECT 1 FROM webhook_events e WHERE e.transaction_id = t.id)
           AND NOT EXISTS (
               SELECT 1 FROM heal_marks h WHERE h.transaction_id = t.id AND h.kind = 'completed')
         ORDER BY t.updated_at LIMIT $3",
    )
    .bind(since)
    .bind(upper)
    .bind(limit)
    .fetch_all(&mut **db)
    .await?;
    Ok(rows)
}

/// Terminal transactions re-announced before `before` that still have no webhook event (the
/// re-announcement was lost too): `(id, version)`.
pub async fn completed_still_missing(
    db: &mut sqlx::Transaction<'_, Postgres>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT t.id, t.version FROM heal_marks h JOIN transactions t ON t.id = h.transaction_id
         WHERE h.kind = 'completed' AND h.announced_at < $1
           AND t.status IN ('succeeded', 'failed')
           AND NOT EXISTS (SELECT 1 FROM webhook_events e WHERE e.transaction_id = t.id)
         ORDER BY h.announced_at LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(&mut **db)
    .await?)
}

/// Stamps the candidates as re-announced now and returns those this caller won: a row
/// another healer stamped since `before` (at the same version) is not returned, so
/// two healers racing re-announce a row once.
pub async fn mark(
    db: &mut sqlx::Transaction<'_, Postgres>,
    kind: HealKind,
    candidates: &[(Uuid, i64)],
    before: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    let ids: Vec<Uuid> = candidates.iter().map(|(id, _)| *id).collect();
    let versions: Vec<i64> = candidates.iter().map(|(_, v)| *v).collect();
    Ok(sqlx::query_scalar(
        "INSERT INTO heal_marks (transaction_id, kind, version)
         SELECT id, $2, version FROM unnest($1::uuid[], $3::bigint[]) AS c(id, version)
         ON CONFLICT (transaction_id, kind) DO UPDATE
             SET version = EXCLUDED.version, announced_at = now(), times = heal_marks.times + 1
             WHERE heal_marks.version <> EXCLUDED.version
                OR heal_marks.announced_at < $4
         RETURNING transaction_id",
    )
    .bind(&ids)
    .bind(kind.as_str())
    .bind(&versions)
    .bind(before)
    .fetch_all(&mut **db)
    .await?)
}
