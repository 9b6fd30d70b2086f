//! The console's chart: per minute, the payments that reached an outcome and how long they
//! took from acceptance, from `transaction_history` ([`super::history`]).

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use super::DbError;
use crate::domain::MerchantId;

/// The longest span [`per_minute`] covers: a day of minutes. An older `since` is moved up to
/// it, so a caller's mistake cannot ask Postgres for a row per minute of a year.
pub const MAX_SPAN: Duration = Duration::days(1);

/// One minute of activity.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MinuteActivity {
    /// The start of the minute.
    pub minute: DateTime<Utc>,
    /// Payments that entered `succeeded` in this minute.
    pub succeeded: i64,
    /// … `failed`.
    pub failed: i64,
    /// … `unresolved` (not final: it may still succeed or fail, and is counted again then).
    pub unresolved: i64,
    /// Acceptance (`created_at`) to the final state (`succeeded` or `failed`), in
    /// milliseconds, over the payments that finished in this minute; `None` when none did.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Every minute from `since`'s minute to the current one (zeros included), oldest first,
/// for one merchant or (`None`) all of them.
pub async fn per_minute(
    pool: &PgPool,
    merchant: Option<MerchantId>,
    since: DateTime<Utc>,
) -> Result<Vec<MinuteActivity>, DbError> {
    let earliest = Utc::now() - MAX_SPAN;
    let since = since.max(earliest);
    let rows: Vec<MinuteActivity> = sqlx::query_as(
        "WITH minutes AS (
             SELECT generate_series(date_trunc('minute', $1::timestamptz),
                                    date_trunc('minute', now()), interval '1 minute') AS minute
         ),
         outcomes AS (
             SELECT date_trunc('minute', h.at) AS minute, h.to_status,
                    (extract(epoch FROM h.at - t.created_at) * 1000)::float8 AS took_ms
             FROM transaction_history h JOIN transactions t ON t.id = h.transaction_id
             WHERE h.to_status IN ('succeeded', 'failed', 'unresolved')
               AND h.at >= date_trunc('minute', $1::timestamptz)
               AND ($2::uuid IS NULL OR t.merchant_id = $2)
         )
         SELECT m.minute,
                count(o.to_status) FILTER (WHERE o.to_status = 'succeeded') AS succeeded,
                count(o.to_status) FILTER (WHERE o.to_status = 'failed') AS failed,
                count(o.to_status) FILTER (WHERE o.to_status = 'unresolved') AS unresolved,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY o.took_ms)
                    FILTER (WHERE o.to_status IN ('succeeded', 'failed')) AS p50_ms,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY o.took_ms)
                    FILTER (WHERE o.to_status IN ('succeeded', 'failed')) AS p99_ms
         FROM minutes m LEFT JOIN outcomes o ON o.minute = m.minute
         GROUP BY m.minute ORDER BY m.minute",
    )
    .bind(since)
    .bind(merchant.map(|m| m.as_uuid()))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}
