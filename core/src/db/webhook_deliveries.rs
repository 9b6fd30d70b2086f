//! Webhook events and their durable delivery schedule, for the callback dispatcher (and the
//! API's `POST /v1/events/{id}/redeliver`).
//!
//! - [`record_event`]: one event per (transaction, announced status: terminal or `unresolved`), with a delivery row
//!   per destination, in one commit; recording the same event again changes nothing.
//! - [`claim_due`] / [`complete`]: the scheduler takes due deliveries under a lease
//!   (`FOR UPDATE SKIP LOCKED`, so several dispatchers share the work) and reports each
//!   attempt; an attempt is fenced by its attempt number, so a worker whose lease ran out and
//!   was re-claimed cannot overwrite the newer attempt's outcome.
//! - [`redeliver`]: a fresh delivery of an event to the merchant's current destinations.
//! - Signing secrets: endpoints keep a previous secret until an expiry (rotation overlap);
//!   deliveries to a transaction's `callback_url` are signed with the merchant's default
//!   secret ([`merchant_default_secret`], table `merchant_webhook_secrets`, created on first
//!   use).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, Postgres};
use uuid::Uuid;

use super::webhook_endpoints::{self, NewDeliveryAttempt, WebhookSecret};
use super::DbError;
use crate::domain::{EventId, MerchantId, TransactionId, TransactionStatus, WebhookEndpointId};

/// Namespace of the UUIDv5 event ids (fixed forever: changing it would re-send every event).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1c_1f8e_58a4_4b4e_9a0b_7f3e_2c5d_9a10);

/// The one event id of a transaction reaching `status`: deterministic, so a re-emitted
/// completion finds the event already recorded and the merchant sees one `webhook-id`.
pub fn event_id_for(transaction: TransactionId, status: TransactionStatus) -> EventId {
    let name = format!("{}:{}", transaction.as_uuid().simple(), status.as_str());
    EventId::from_uuid(Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes()))
}

/// What an event tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    TransactionSucceeded,
    TransactionFailed,
    /// The provider may have executed the payment and we cannot tell yet: the merchant must
    /// not re-issue it. Sent once; `transaction.succeeded` or `.failed` follows when it ends.
    TransactionUnresolved,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransactionSucceeded => "transaction.succeeded",
            Self::TransactionFailed => "transaction.failed",
            Self::TransactionUnresolved => "transaction.unresolved",
        }
    }

    /// The event for a status the merchant is told of (terminal, or `unresolved`); `None`
    /// for any other.
    pub fn for_status(status: TransactionStatus) -> Option<Self> {
        match status {
            TransactionStatus::Succeeded => Some(Self::TransactionSucceeded),
            TransactionStatus::Failed => Some(Self::TransactionFailed),
            TransactionStatus::Unresolved => Some(Self::TransactionUnresolved),
            _ => None,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::TransactionSucceeded,
            Self::TransactionFailed,
            Self::TransactionUnresolved,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// A `whsec_…` signing secret as read back for signing. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(String);

impl SigningSecret {
    /// Wraps a `whsec_…` string (None for anything else).
    pub fn parse(raw: &str) -> Option<Self> {
        raw.starts_with("whsec_").then(|| Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The HMAC key: the base64 after `whsec_`, decoded (Standard Webhooks).
    pub fn key_bytes(&self) -> Option<Vec<u8>> {
        let encoded = self.0.strip_prefix("whsec_")?;
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
    }
}

impl From<&WebhookSecret> for SigningSecret {
    fn from(secret: &WebhookSecret) -> Self {
        Self(secret.expose().to_owned())
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_…)")
    }
}

/// An event to record, with its exact JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: EventId,
    pub merchant_id: MerchantId,
    pub transaction_id: TransactionId,
    pub event_type: EventType,
    /// The body every delivery sends, byte for byte.
    pub payload: String,
    /// The transaction's own `callback_url`, a destination besides the endpoints.
    pub callback_url: Option<String>,
}

/// What [`record_event`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// False when the event was already recorded (a replayed message): nothing changed.
    pub created: bool,
    /// Delivery rows scheduled now.
    pub deliveries: usize,
}

/// The bulkhead key of a transaction's `callback_url`: `callback:<host>:<port>`.
pub fn callback_destination(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => format!(
            "callback:{}:{}",
            parsed.host_str().unwrap_or(""),
            parsed.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => "callback:invalid".to_owned(),
    }
}

/// Records an event and schedules its deliveries (due at once) to the merchant's enabled
/// endpoints and the transaction's `callback_url`, all in one commit. Idempotent by event id.
pub async fn record_event(pool: &PgPool, event: &NewEvent) -> Result<Recorded, DbError> {
    let mut db = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO webhook_events (id, merchant_id, transaction_id, event_type, payload)
         VALUES ($1, $2, $3, $4, $5::json) ON CONFLICT (id) DO NOTHING",
    )
    .bind(event.id.as_uuid())
    .bind(event.merchant_id.as_uuid())
    .bind(event.transaction_id.as_uuid())
    .bind(event.event_type.as_str())
    .bind(&event.payload)
    .execute(&mut *db)
    .await?
    .rows_affected();
    if inserted == 0 {
        db.commit().await?;
        return Ok(Recorded {
            created: false,
            deliveries: 0,
        });
    }
    let deliveries = schedule_deliveries(
        &mut db,
        event.id,
        event.merchant_id,
        event.transaction_id,
        event.callback_url.as_deref(),
        0,
    )
    .await?;
    db.commit().await?;
    Ok(Recorded {
        created: true,
        deliveries,
    })
}

/// One delivery row per current destination, due now.
async fn schedule_deliveries(
    db: &mut sqlx::Transaction<'_, Postgres>,
    event: EventId,
    merchant: MerchantId,
    transaction: TransactionId,
    callback_url: Option<&str>,
    generation: i32,
) -> Result<usize, DbError> {
    let endpoints: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, url FROM webhook_endpoints WHERE merchant_id = $1 AND disabled_at IS NULL ORDER BY id",
    )
    .bind(merchant.as_uuid())
    .fetch_all(&mut **db)
    .await?;
    let mut rows: Vec<(Option<Uuid>, String, String)> = endpoints
        .into_iter()
        .map(|(id, url)| {
            let destination = WebhookEndpointId::from_uuid(id).to_string();
            (Some(id), url, destination)
        })
        .collect();
    if let Some(url) = callback_url.filter(|u| !u.is_empty()) {
        merchant_default_secret(&mut **db, merchant).await?;
        rows.push((None, url.to_owned(), callback_destination(url)));
    }
    let mut scheduled = 0;
    for (endpoint, url, destination) in rows {
        scheduled += sqlx::query(
            "INSERT INTO webhook_deliveries (id, event_id, merchant_id, transaction_id, endpoint_id, url, destination,
                 generation)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id, destination, generation) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(event.as_uuid())
        .bind(merchant.as_uuid())
        .bind(transaction.as_uuid())
        .bind(endpoint)
        .bind(&url)
        .bind(&destination)
        .bind(generation)
        .execute(&mut **db)
        .await?
        .rows_affected() as usize;
    }
    Ok(scheduled)
}

/// The merchant's default signing secret (for `callback_url` deliveries), created on first
/// use. Show it to the merchant so it can verify those deliveries.
pub async fn merchant_default_secret<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
) -> Result<SigningSecret, DbError> {
    let candidate = WebhookSecret::generate();
    // Insert-or-read in one statement: a no-op update returns the existing row.
    let secret: String = sqlx::query_scalar(
        "INSERT INTO merchant_webhook_secrets (merchant_id, secret) VALUES ($1, $2)
         ON CONFLICT (merchant_id) DO UPDATE SET merchant_id = EXCLUDED.merchant_id
         RETURNING secret",
    )
    .bind(merchant.as_uuid())
    .bind(candidate.expose())
    .fetch_one(exec)
    .await?;
    corrupt_secret(&secret, "merchant_webhook_secrets")
}

fn corrupt_secret(raw: &str, table: &'static str) -> Result<SigningSecret, DbError> {
    SigningSecret::parse(raw).ok_or_else(|| DbError::Corrupt {
        table,
        detail: "signing secret without the whsec_ prefix".to_owned(),
    })
}

/// Rotates the merchant's default secret; the old one keeps signing for `overlap`.
pub async fn rotate_merchant_default_secret(
    pool: &PgPool,
    merchant: MerchantId,
    overlap: Duration,
) -> Result<SigningSecret, DbError> {
    let mut db = pool.begin().await?;
    merchant_default_secret(&mut *db, merchant).await?;
    let fresh = WebhookSecret::generate();
    sqlx::query(
        "UPDATE merchant_webhook_secrets
         SET previous_secret = secret, previous_secret_expires_at = now() + make_interval(secs => $3),
             secret = $2, rotated_at = now()
         WHERE merchant_id = $1",
    )
    .bind(merchant.as_uuid())
    .bind(fresh.expose())
    .bind(overlap.as_secs_f64())
    .execute(&mut *db)
    .await?;
    db.commit().await?;
    Ok(SigningSecret::from(&fresh))
}

/// Rotates an endpoint's secret; the old one keeps signing (a second signature) for
/// `overlap`. `None` when the merchant has no such enabled endpoint.
pub async fn rotate_endpoint_secret<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    endpoint: WebhookEndpointId,
    overlap: Duration,
) -> Result<Option<SigningSecret>, DbError> {
    let fresh = WebhookSecret::generate();
    let done = sqlx::query(
        "UPDATE webhook_endpoints
         SET previous_secret = secret, previous_secret_expires_at = now() + make_interval(secs => $4), secret = $3
         WHERE id = $1 AND merchant_id = $2 AND disabled_at IS NULL",
    )
    .bind(endpoint.as_uuid())
    .bind(merchant.as_uuid())
    .bind(fresh.expose())
    .bind(overlap.as_secs_f64())
    .execute(exec)
    .await?;
    Ok((done.rows_affected() == 1).then(|| SigningSecret::from(&fresh)))
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: EventId,
    pub merchant_id: MerchantId,
    pub transaction_id: TransactionId,
    pub event_type: EventType,
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

type EventRow = (Uuid, Uuid, Uuid, String, String, DateTime<Utc>);

fn event_from_row(row: EventRow) -> Result<WebhookEvent, DbError> {
    let (id, merchant, transaction, event_type, payload, created_at) = row;
    Ok(WebhookEvent {
        id: EventId::from_uuid(id),
        merchant_id: MerchantId::from_uuid(merchant),
        transaction_id: TransactionId::from_uuid(transaction),
        event_type: EventType::parse(&event_type).ok_or_else(|| DbError::Corrupt {
            table: "webhook_events",
            detail: format!("unknown event type {event_type:?}"),
        })?,
        payload,
        created_at,
    })
}

/// One event of this merchant; another merchant's is not found.
pub async fn get_event<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    id: EventId,
) -> Result<Option<WebhookEvent>, DbError> {
    let row: Option<EventRow> = sqlx::query_as(
        "SELECT id, merchant_id, transaction_id, event_type, payload::text, created_at
         FROM webhook_events WHERE id = $1 AND merchant_id = $2",
    )
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(exec)
    .await?;
    row.map(event_from_row).transpose()
}

/// The events told about one transaction, oldest first.
pub async fn events_for_transaction<'e>(
    exec: impl PgExecutor<'e>,
    transaction: TransactionId,
) -> Result<Vec<WebhookEvent>, DbError> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT id, merchant_id, transaction_id, event_type, payload::text, created_at
         FROM webhook_events WHERE transaction_id = $1 ORDER BY created_at, id",
    )
    .bind(transaction.as_uuid())
    .fetch_all(exec)
    .await?;
    rows.into_iter().map(event_from_row).collect()
}

/// What [`redeliver`] scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redelivery {
    pub event_id: EventId,
    /// 1 for the first replay of the event, and so on.
    pub generation: i32,
    /// Delivery rows scheduled (0 when the merchant has no destination left).
    pub deliveries: usize,
}

/// Schedules a fresh delivery of the event, due at once, to the merchant's current
/// destinations (enabled endpoints and the transaction's `callback_url`), with a fresh
/// attempt count. `None` when the event does not exist or belongs to another merchant.
pub async fn redeliver(
    pool: &PgPool,
    merchant: MerchantId,
    event: EventId,
) -> Result<Option<Redelivery>, DbError> {
    let mut db = pool.begin().await?;
    let found: Option<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT e.transaction_id, t.callback_url FROM webhook_events e JOIN transactions t ON t.id = e.transaction_id
         WHERE e.id = $1 AND e.merchant_id = $2 FOR UPDATE OF e",
    )
    .bind(event.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(&mut *db)
    .await?;
    let Some((transaction, callback_url)) = found else {
        return Ok(None);
    };
    let generation: i32 = sqlx::query_scalar(
        "SELECT COALESCE(max(generation), 0) + 1 FROM webhook_deliveries WHERE event_id = $1",
    )
    .bind(event.as_uuid())
    .fetch_one(&mut *db)
    .await?;
    let deliveries = schedule_deliveries(
        &mut db,
        event,
        merchant,
        TransactionId::from_uuid(transaction),
        callback_url.as_deref(),
        generation,
    )
    .await?;
    db.commit().await?;
    Ok(Some(Redelivery {
        event_id: event,
        generation,
        deliveries,
    }))
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    Pending,
    Delivering,
    Succeeded,
    Failed,
    Disabled,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivering => "delivering",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Delivering,
            Self::Succeeded,
            Self::Failed,
            Self::Disabled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One scheduled delivery of an event to one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: EventId,
    pub endpoint_id: Option<WebhookEndpointId>,
    pub url: String,
    pub destination: String,
    pub generation: i32,
    pub state: DeliveryState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
}

type DeliveryRow = (
    Uuid,
    Uuid,
    Option<Uuid>,
    String,
    String,
    i32,
    String,
    i32,
    DateTime<Utc>,
    Option<i32>,
    Option<String>,
);

/// The deliveries of one event (all generations), oldest first.
pub async fn deliveries_for_event<'e>(
    exec: impl PgExecutor<'e>,
    event: EventId,
) -> Result<Vec<Delivery>, DbError> {
    let rows: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT id, event_id, endpoint_id, url, destination, generation, state, attempts, next_attempt_at,
                last_status_code, last_error
         FROM webhook_deliveries WHERE event_id = $1 ORDER BY generation, id",
    )
    .bind(event.as_uuid())
    .fetch_all(exec)
    .await?;
    rows.into_iter()
        .map(
            |(
                id,
                event,
                endpoint,
                url,
                destination,
                generation,
                state,
                attempts,
                next,
                code,
                error,
            )| {
                Ok(Delivery {
                    id,
                    event_id: EventId::from_uuid(event),
                    endpoint_id: endpoint.map(WebhookEndpointId::from_uuid),
                    url,
                    destination,
                    generation,
                    state: DeliveryState::parse(&state).ok_or_else(|| DbError::Corrupt {
                        table: "webhook_deliveries",
                        detail: format!("unknown state {state:?}"),
                    })?,
                    attempts,
                    next_attempt_at: next,
                    last_status_code: code,
                    last_error: error,
                })
            },
        )
        .collect()
}

/// A delivery taken by a worker, with all it needs to send one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub id: Uuid,
    pub event_id: EventId,
    pub merchant_id: MerchantId,
    pub transaction_id: TransactionId,
    /// `None` for the transaction's own `callback_url`.
    pub endpoint_id: Option<WebhookEndpointId>,
    pub url: String,
    pub destination: String,
    /// This attempt's number (1 for the first); also the lease's fencing token.
    pub attempt: i32,
    pub payload: String,
    /// Current secret first, then the previous one while its rotation overlap lasts.
    pub secrets: Vec<SigningSecret>,
    /// The endpoint was disabled or deleted since the delivery was scheduled.
    pub endpoint_disabled: bool,
}

/// How much [`claim_due`] may take.
#[derive(Debug, Clone)]
pub struct ClaimLimits<'a> {
    /// Deliveries to take at most (free worker slots).
    pub max: usize,
    /// How long a claimed delivery stays the worker's before others may take it again.
    pub lease: Duration,
    /// Deliveries in flight to one destination at most (the bulkhead).
    pub per_destination: usize,
    /// Deliveries this process already has in flight, by destination.
    pub in_flight: &'a HashMap<String, usize>,
}

type ClaimRow = (
    Uuid,
    Uuid,
    Uuid,
    Uuid,
    Option<Uuid>,
    String,
    String,
    i32,
    String,
    Option<String>,
    Option<String>,
    bool,
);

/// Takes due deliveries (pending and due, or leased by a worker whose lease ran out) under
/// a lease, skipping rows another dispatcher holds and destinations at their limit.
pub async fn claim_due(
    pool: &PgPool,
    limits: ClaimLimits<'_>,
) -> Result<Vec<ClaimedDelivery>, DbError> {
    if limits.max == 0 {
        return Ok(Vec::new());
    }
    let saturated: Vec<String> = limits
        .in_flight
        .iter()
        .filter(|(_, n)| **n >= limits.per_destination)
        .map(|(d, _)| d.clone())
        .collect();
    let mut db = pool.begin().await?;
    let candidates: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT id, destination FROM webhook_deliveries
         WHERE ((state = 'pending' AND next_attempt_at <= now()) OR (state = 'delivering' AND locked_until <= now()))
           AND NOT (destination = ANY($1))
         ORDER BY next_attempt_at
         LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(&saturated)
    .bind(i64::try_from(limits.max.saturating_mul(4)).unwrap_or(i64::MAX))
    .fetch_all(&mut *db)
    .await?;
    let mut taken: HashMap<String, usize> = limits.in_flight.clone();
    let mut chosen: Vec<Uuid> = Vec::new();
    for (id, destination) in candidates {
        if chosen.len() >= limits.max {
            break;
        }
        let count = taken.entry(destination).or_insert(0);
        if *count < limits.per_destination {
            *count += 1;
            chosen.push(id);
        }
    }
    if chosen.is_empty() {
        db.commit().await?;
        return Ok(Vec::new());
    }
    // A lost lease only lets the delivery be claimed (and sent) again.
    super::relax_durability(&mut db).await?;
    sqlx::query(
        "UPDATE webhook_deliveries
         SET state = 'delivering', attempts = attempts + 1, locked_until = now() + make_interval(secs => $2),
             updated_at = now()
         WHERE id = ANY($1)",
    )
    .bind(&chosen)
    .bind(limits.lease.as_secs_f64())
    .execute(&mut *db)
    .await?;
    let rows: Vec<ClaimRow> = sqlx::query_as(
        "SELECT d.id, d.event_id, d.merchant_id, d.transaction_id, d.endpoint_id, d.url, d.destination, d.attempts,
                e.payload::text,
                CASE WHEN d.endpoint_id IS NULL THEN m.secret ELSE w.secret END,
                CASE WHEN d.endpoint_id IS NULL
                     THEN CASE WHEN m.previous_secret_expires_at > now() THEN m.previous_secret END
                     ELSE CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END END,
                (d.endpoint_id IS NOT NULL AND (w.id IS NULL OR w.disabled_at IS NOT NULL))
         FROM webhook_deliveries d
         JOIN webhook_events e ON e.id = d.event_id
         LEFT JOIN webhook_endpoints w ON w.id = d.endpoint_id
         LEFT JOIN merchant_webhook_secrets m ON m.merchant_id = d.merchant_id
         WHERE d.id = ANY($1)
         ORDER BY d.next_attempt_at",
    )
    .bind(&chosen)
    .fetch_all(&mut *db)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for (
        id,
        event,
        merchant,
        transaction,
        endpoint,
        url,
        destination,
        attempt,
        payload,
        secret,
        previous,
        endpoint_disabled,
    ) in rows
    {
        let merchant = MerchantId::from_uuid(merchant);
        let current = match secret {
            Some(raw) => corrupt_secret(&raw, "webhook_endpoints")?,
            // A callback delivery scheduled before the default secret existed (hand-made rows).
            None => merchant_default_secret(&mut *db, merchant).await?,
        };
        let mut secrets = vec![current];
        if let Some(previous) = previous.as_deref().and_then(SigningSecret::parse) {
            secrets.push(previous);
        }
        claimed.push(ClaimedDelivery {
            id,
            event_id: EventId::from_uuid(event),
            merchant_id: merchant,
            transaction_id: TransactionId::from_uuid(transaction),
            endpoint_id: endpoint.map(WebhookEndpointId::from_uuid),
            url,
            destination,
            attempt,
            payload,
            secrets,
            endpoint_disabled,
        });
    }
    db.commit().await?;
    Ok(claimed)
}

/// How one claimed delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// A 2xx: done.
    Succeeded,
    /// Try again after this delay.
    Retry { after: Duration },
    /// Given up: schedule exhausted, or the destination is refused.
    Failed,
    /// The endpoint answered 410 Gone: disable it (a `callback_url` delivery just stops).
    Gone,
    /// Not sent: the endpoint was disabled or deleted meanwhile.
    Skipped,
}

/// What [`complete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// False when the lease was lost (another worker re-claimed the delivery): the attempt
    /// was logged but the schedule was left to the newer attempt.
    pub applied: bool,
    /// The endpoint was disabled by this outcome (410, or failing for too long).
    pub endpoint_disabled: bool,
}

/// Logs an attempt (when one was made) and moves the delivery on, in one commit. An
/// endpoint's failing streak is tracked here: any success clears it, and an endpoint failing
/// for `disable_after` without a success is disabled with its pending deliveries.
pub async fn complete(
    pool: &PgPool,
    claimed: &ClaimedDelivery,
    attempt: Option<&NewDeliveryAttempt>,
    outcome: DeliveryOutcome,
    disable_after: Duration,
) -> Result<Completed, DbError> {
    let mut db = pool.begin().await?;
    // A lost result only sends the webhook again, with the same `webhook-id`; disabling an
    // endpoint is kept durable.
    if !matches!(outcome, DeliveryOutcome::Gone) {
        super::relax_durability(&mut db).await?;
    }
    if let Some(attempt) = attempt {
        webhook_endpoints::record_attempt(&mut *db, attempt).await?;
    }
    let (state, retry_secs) = match outcome {
        DeliveryOutcome::Succeeded => ("succeeded", None),
        DeliveryOutcome::Retry { after } => ("pending", Some(after.as_secs_f64())),
        DeliveryOutcome::Failed => ("failed", None),
        DeliveryOutcome::Gone | DeliveryOutcome::Skipped => ("disabled", None),
    };
    let applied = sqlx::query(
        "UPDATE webhook_deliveries
         SET state = $3,
             next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                                    ELSE now() + make_interval(secs => $4::float8) END,
             locked_until = NULL,
             last_status_code = COALESCE($5, last_status_code),
             last_error = $6,
             completed_at = CASE WHEN $3 IN ('succeeded', 'failed', 'disabled') THEN now() END,
             updated_at = now()
         WHERE id = $1 AND state = 'delivering' AND attempts = $2",
    )
    .bind(claimed.id)
    .bind(claimed.attempt)
    .bind(state)
    .bind(retry_secs)
    .bind(attempt.and_then(|a| a.status_code))
    .bind(attempt.and_then(|a| a.error.as_deref()))
    .execute(&mut *db)
    .await?
    .rows_affected()
        == 1;
    let mut endpoint_disabled = false;
    if let (true, Some(endpoint)) = (applied, claimed.endpoint_id) {
        let disable_reason = match outcome {
            DeliveryOutcome::Succeeded => {
                // Only a failing endpoint's row is written: every delivery to an endpoint
                // would otherwise lock its one row until commit (a WAL flush), which
                // serialised all of an endpoint's deliveries (BENCHMARKS.md).
                sqlx::query(
                    "UPDATE webhook_endpoints SET failing_since = NULL
                     WHERE id = $1 AND failing_since IS NOT NULL",
                )
                .bind(endpoint.as_uuid())
                .execute(&mut *db)
                .await?;
                None
            }
            DeliveryOutcome::Retry { .. } | DeliveryOutcome::Failed => {
                let failing_too_long: Option<bool> = sqlx::query_scalar(
                    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, now())
                     WHERE id = $1 AND disabled_at IS NULL
                     RETURNING failing_since <= now() - make_interval(secs => $2)",
                )
                .bind(endpoint.as_uuid())
                .bind(disable_after.as_secs_f64())
                .fetch_optional(&mut *db)
                .await?;
                failing_too_long.unwrap_or(false).then_some("failing")
            }
            DeliveryOutcome::Gone => Some("gone"),
            DeliveryOutcome::Skipped => None,
        };
        if let Some(reason) = disable_reason {
            endpoint_disabled = disable_endpoint(&mut db, endpoint, reason).await?;
        }
    }
    db.commit().await?;
    Ok(Completed {
        applied,
        endpoint_disabled,
    })
}

/// Disables an endpoint and stops its pending deliveries; returns whether it was enabled.
async fn disable_endpoint(
    db: &mut sqlx::Transaction<'_, Postgres>,
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

/// Deliveries not yet finished (pending or in flight), by destination: the backlog gauge.
pub async fn backlog_by_destination<'e>(
    exec: impl PgExecutor<'e>,
) -> Result<Vec<(String, i64)>, DbError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT destination, count(*) FROM webhook_deliveries
         WHERE state IN ('pending', 'delivering') GROUP BY destination ORDER BY destination",
    )
    .fetch_all(exec)
    .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_per_transaction_and_status() {
        let t = TransactionId::new();
        let a = event_id_for(t, TransactionStatus::Succeeded);
        assert_eq!(a, event_id_for(t, TransactionStatus::Succeeded));
        assert_ne!(a, event_id_for(t, TransactionStatus::Failed));
        assert_ne!(
            a,
            event_id_for(TransactionId::new(), TransactionStatus::Succeeded)
        );
        assert_eq!(a.as_uuid().get_version_num(), 5);
    }

    #[test]
    fn callback_destinations_name_the_host() {
        assert_eq!(
            callback_destination("https://shop.example/hooks?a=1"),
            "callback:shop.example:443"
        );
        assert_eq!(
            callback_destination("http://127.0.0.1:8081/x"),
            "callback:127.0.0.1:8081"
        );
        assert_eq!(callback_destination("nonsense"), "callback:invalid");
    }

    #[test]
    fn signing_secrets_never_debug_print() {
        let secret = SigningSecret::from(&WebhookSecret::generate());
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
        assert_eq!(secret.key_bytes().map(|k| k.len()), Some(32));
        assert!(SigningSecret::parse("nope").is_none());
    }
}
