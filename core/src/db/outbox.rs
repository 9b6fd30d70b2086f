//! The transactional outbox: events written in the same commit as the state they announce,
//! then published to Kafka by a relay. A crash between commit and publish loses nothing: the
//! row waits until a relay publishes it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres};

use super::DbError;
use crate::bus::Topic;

/// One message to publish: the logical topic, the partition key (a transaction id) and the
/// encoded event, with headers such as `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: Topic,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// An outbox row waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub id: i64,
    pub message: OutboxMessage,
    pub created_at: DateTime<Utc>,
}

/// Counts outbox commits made by this process, so its relays wake at once.
static COMMITS: LazyLock<tokio::sync::watch::Sender<u64>> =
    LazyLock::new(|| tokio::sync::watch::Sender::new(0));

/// Tells this process's relays that outbox rows were committed. Call it after the commit
/// (a relay woken before would not see the rows yet and would wait for its next poll).
pub fn committed() {
    COMMITS.send_modify(|n| *n = n.wrapping_add(1));
}

/// What a relay waits on: changes each time [`committed`] is called.
pub fn watch_commits() -> tokio::sync::watch::Receiver<u64> {
    COMMITS.subscribe()
}

/// Adds a message to the outbox inside the caller's database transaction; the caller calls
/// [`committed`] once that transaction has committed.
pub async fn enqueue<'e>(
    exec: impl PgExecutor<'e>,
    message: &OutboxMessage,
) -> Result<i64, DbError> {
    let headers = encode_headers(&message.headers)?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (topic, message_key, payload, headers) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(message.topic.suffix())
    .bind(&message.key)
    .bind(&message.payload)
    .bind(headers)
    .fetch_one(exec)
    .await?;
    Ok(id)
}

/// A message's headers as the `headers` JSONB column holds them.
pub fn encode_headers(headers: &BTreeMap<String, String>) -> Result<serde_json::Value, DbError> {
    serde_json::to_value(headers).map_err(|e| DbError::Corrupt {
        table: "outbox",
        detail: e.to_string(),
    })
}

/// `(id, topic, key, payload, headers, created_at)` as selected.
type OutboxRow = (
    i64,
    String,
    String,
    Vec<u8>,
    serde_json::Value,
    DateTime<Utc>,
);

/// Locks up to `limit` unpublished rows, oldest first, for the rest of the caller's database
/// transaction. `SKIP LOCKED` lets several relays share the work without publishing a row twice.
///
/// The same statement relaxes the caller's transaction ([`super::RELAXED`]; a separate
/// `SET LOCAL` was one more round trip per round): its only write is the "published" stamp.
pub async fn claim_batch(
    db: &mut sqlx::Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<PendingRow>, DbError> {
    let rows: Vec<OutboxRow> = sqlx::query_as(&CLAIM)
        .bind(limit)
        .fetch_all(&mut **db)
        .await?;
    rows.into_iter()
        .map(|(id, topic, key, payload, headers, created_at)| {
            let corrupt = |detail: String| DbError::Corrupt {
                table: "outbox",
                detail,
            };
            let topic = Topic::from_suffix(&topic)
                .ok_or_else(|| corrupt(format!("unknown topic {topic:?}")))?;
            let headers: BTreeMap<String, String> =
                serde_json::from_value(headers).map_err(|e| corrupt(e.to_string()))?;
            Ok(PendingRow {
                id,
                message: OutboxMessage {
                    topic,
                    key,
                    payload,
                    headers,
                },
                created_at,
            })
        })
        .collect()
}

/// [`claim_batch`]'s statement.
static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {}
         SELECT o.id, o.topic, o.message_key, o.payload, o.headers, o.created_at FROM outbox o, relaxed
         WHERE o.published_at IS NULL ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
        super::RELAXED
    )
});

/// Stamps rows as published (inside the same database transaction that claimed them).
pub async fn mark_published(
    db: &mut sqlx::Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<(), DbError> {
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **db)
        .await?;
    Ok(())
}

/// How many rows wait and how old the oldest is: the relay's lag.
pub async fn backlog<'e>(
    exec: impl PgExecutor<'e>,
) -> Result<(i64, Option<DateTime<Utc>>), DbError> {
    let row: (i64, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT count(*), min(created_at) FROM outbox WHERE published_at IS NULL")
            .fetch_one(exec)
            .await?;
    Ok(row)
}
