//! Webhook events: what a merchant is told about a transaction, recorded once per
//! (transaction, announced status) and delivered to every destination the merchant has.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::deliveries::{self, bind_destinations, delivery_rows, destinations, Destinations};
use crate::db::transactions::Bindable;
use crate::db::DbError;
use crate::domain::{EventId, MerchantId, RefundId, RefundState, TransactionId, TransactionStatus};

/// Namespace of the UUIDv5 event ids (fixed forever: changing it would re-send every event).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1c_1f8e_58a4_4b4e_9a0b_7f3e_2c5d_9a10);

/// The one event id of a transaction reaching `status`: deterministic, so a re-emitted
/// completion finds the event already recorded and the merchant sees one `webhook-id`.
pub fn event_id_for(transaction: TransactionId, status: TransactionStatus) -> EventId {
    let name = format!("{}:{}", transaction.as_uuid().simple(), status.as_str());
    EventId::from_uuid(Uuid::new_v5(&EVENT_NAMESPACE, name.as_bytes()))
}

/// The one event id of a refund reaching `status` (a name space apart from payments': the
/// name carries the `rfd` prefix), deterministic for the same reason.
pub fn event_id_for_refund(refund: RefundId, status: RefundState) -> EventId {
    let name = format!("rfd:{}:{}", refund.as_uuid().simple(), status.as_str());
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
    /// The customer must act at the provider (`data.next_action`). Sent once; the outcome's
    /// own event follows.
    TransactionRequiresAction,
    /// A refund succeeded: the customer has the money back (`data` is the refund).
    RefundSucceeded,
    /// A refund failed: the hold on the merchant's balance is released.
    RefundFailed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransactionSucceeded => "transaction.succeeded",
            Self::TransactionFailed => "transaction.failed",
            Self::TransactionUnresolved => "transaction.unresolved",
            Self::TransactionRequiresAction => "transaction.requires_action",
            Self::RefundSucceeded => "refund.succeeded",
            Self::RefundFailed => "refund.failed",
        }
    }

    /// The event for a status the merchant is told of (terminal, `unresolved` or
    /// `requires_action`); `None`
    /// for any other.
    pub fn for_status(status: TransactionStatus) -> Option<Self> {
        match status {
            TransactionStatus::Succeeded => Some(Self::TransactionSucceeded),
            TransactionStatus::Failed => Some(Self::TransactionFailed),
            TransactionStatus::Unresolved => Some(Self::TransactionUnresolved),
            TransactionStatus::RequiresAction => Some(Self::TransactionRequiresAction),
            _ => None,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::TransactionSucceeded,
            Self::TransactionFailed,
            Self::TransactionUnresolved,
            Self::TransactionRequiresAction,
            Self::RefundSucceeded,
            Self::RefundFailed,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
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

/// Records an event and schedules its deliveries (due at once) to the merchant's enabled
/// endpoints and the transaction's `callback_url`, all in one commit. Idempotent by event id:
/// a recorded event schedules nothing more. One statement ([`RECORD_EVENT`]), so one round
/// trip instead of a transaction of one per destination. The services that change a
/// transaction record its event inside their own statement instead ([`record_event_ctes`]);
/// this is for the healer and tests.
pub async fn record_event<'e>(
    exec: impl PgExecutor<'e>,
    event: &NewEvent,
) -> Result<Recorded, DbError> {
    let (created, scheduled): (bool, i64) = bind_event(sqlx::query_as(&RECORD_EVENT), event)
        .fetch_one(exec)
        .await?;
    Ok(Recorded {
        created,
        deliveries: usize::try_from(scheduled).unwrap_or(0),
    })
}

/// Binds `event` as the eight parameters of [`record_event_ctes`]: the six of
/// [`deliveries::bind_destinations`] (generation 0), then its type and its body.
pub fn bind_event<'q, Q: Bindable<'q>>(query: Q, event: &'q NewEvent) -> Q {
    let to = Destinations {
        event: event.id,
        merchant: event.merchant_id,
        transaction: event.transaction_id,
        callback_url: event.callback_url.as_deref(),
        generation: 0,
    };
    bind_destinations(query, &to)
        .bind_value(event.event_type.as_str())
        .bind_value(event.payload.as_str())
}

/// The CTEs that record an event and, only when it is new, its delivery rows:
/// `webhook_event` (the ids of the events inserted) and `webhook_scheduled` (a row per
/// delivery). Parameters from `$first`, as [`bind_event`] binds them. With `gate`, the
/// event is written only if the named CTE has a row (the version-checked update that made
/// it true), so a state change and the event telling it commit together or not at all.
pub fn record_event_ctes(gate: Option<&str>, first: usize) -> String {
    let (merchant, transaction) = (first + 1, first + 2);
    let (event_type, payload) = (first + 6, first + 7);
    let from = gate.map(|g| format!("FROM {g}")).unwrap_or_default();
    format!(
        "webhook_event AS (
             INSERT INTO webhook_events (id, merchant_id, transaction_id, event_type, payload)
             SELECT ${first}, ${merchant}, ${transaction}, ${event_type}, ${payload}::json {from}
             ON CONFLICT (id) DO NOTHING
             RETURNING id
         ),
         {},
         webhook_scheduled AS (
             {} WHERE EXISTS (SELECT 1 FROM webhook_event)
             ON CONFLICT (event_id, destination, generation) DO NOTHING RETURNING 1
         )",
        destinations(first),
        delivery_rows(first)
    )
}

/// [`record_event`]: answers `(created, scheduled)`.
static RECORD_EVENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {}
         SELECT EXISTS (SELECT 1 FROM webhook_event), (SELECT count(*) FROM webhook_scheduled)",
        record_event_ctes(None, 1)
    )
});

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

/// A `webhook_events` row as selected by [`EVENT_COLUMNS`].
#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    merchant_id: Uuid,
    transaction_id: Uuid,
    event_type: String,
    payload: String,
    created_at: DateTime<Utc>,
}

const EVENT_COLUMNS: &str =
    "id, merchant_id, transaction_id, event_type, payload::text AS payload, created_at";

impl TryFrom<EventRow> for WebhookEvent {
    type Error = DbError;

    fn try_from(row: EventRow) -> Result<Self, DbError> {
        let event_type = EventType::parse(&row.event_type).ok_or_else(|| DbError::Corrupt {
            table: "webhook_events",
            detail: format!("unknown event type {:?}", row.event_type),
        })?;
        Ok(Self {
            id: EventId::from_uuid(row.id),
            merchant_id: MerchantId::from_uuid(row.merchant_id),
            transaction_id: TransactionId::from_uuid(row.transaction_id),
            event_type,
            payload: row.payload,
            created_at: row.created_at,
        })
    }
}

/// One event of this merchant; another merchant's is not found.
pub async fn get_event<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    id: EventId,
) -> Result<Option<WebhookEvent>, DbError> {
    let sql =
        format!("SELECT {EVENT_COLUMNS} FROM webhook_events WHERE id = $1 AND merchant_id = $2");
    let row: Option<EventRow> = sqlx::query_as(&sql)
        .bind(id.as_uuid())
        .bind(merchant.as_uuid())
        .fetch_optional(exec)
        .await?;
    row.map(WebhookEvent::try_from).transpose()
}

/// The events told about one transaction, oldest first.
pub async fn events_for_transaction<'e>(
    exec: impl PgExecutor<'e>,
    transaction: TransactionId,
) -> Result<Vec<WebhookEvent>, DbError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE transaction_id = $1 ORDER BY created_at, id"
    );
    let rows: Vec<EventRow> = sqlx::query_as(&sql)
        .bind(transaction.as_uuid())
        .fetch_all(exec)
        .await?;
    rows.into_iter().map(WebhookEvent::try_from).collect()
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

/// Redeliveries of one event allowed per rolling hour through the API
/// ([`redeliver_within`]): replays are for a receiver that lost events, not a way to make
/// the dispatcher hammer a host.
pub const REDELIVERIES_PER_HOUR: i64 = 5;

/// What [`redeliver_within`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeliveryOutcome {
    Scheduled(Redelivery),
    /// The event does not exist or belongs to another merchant.
    NotFound,
    /// The event was replayed `max_per_hour` times in the last hour; the oldest of those
    /// leaves the window after `retry_after`.
    Limited {
        retry_after: std::time::Duration,
    },
}

/// Schedules a fresh delivery of the event, due at once, to the merchant's current
/// destinations (enabled endpoints and the transaction's `callback_url`), with a fresh
/// attempt count. `None` when the event does not exist or belongs to another merchant.
/// Not capped: for operators and tests; the API uses [`redeliver_within`].
pub async fn redeliver(
    pool: &PgPool,
    merchant: MerchantId,
    event: EventId,
) -> Result<Option<Redelivery>, DbError> {
    match redeliver_checked(pool, merchant, event, None).await? {
        RedeliveryOutcome::Scheduled(redelivery) => Ok(Some(redelivery)),
        RedeliveryOutcome::NotFound | RedeliveryOutcome::Limited { .. } => Ok(None),
    }
}

/// [`redeliver`], refused once the event was replayed `max_per_hour` times in the last
/// hour. The count is taken under the event's row lock, so concurrent requests cannot all
/// pass it.
pub async fn redeliver_within(
    pool: &PgPool,
    merchant: MerchantId,
    event: EventId,
    max_per_hour: i64,
) -> Result<RedeliveryOutcome, DbError> {
    redeliver_checked(pool, merchant, event, Some(max_per_hour)).await
}

async fn redeliver_checked(
    pool: &PgPool,
    merchant: MerchantId,
    event: EventId,
    max_per_hour: Option<i64>,
) -> Result<RedeliveryOutcome, DbError> {
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
        return Ok(RedeliveryOutcome::NotFound);
    };
    if let Some(max) = max_per_hour {
        // Replays in the last hour, and seconds until the oldest of them leaves the window.
        let (recent, wait): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(DISTINCT generation),
                    EXTRACT(EPOCH FROM min(created_at) + interval '1 hour' - now())::float8
             FROM webhook_deliveries
             WHERE event_id = $1 AND generation > 0 AND created_at > now() - interval '1 hour'",
        )
        .bind(event.as_uuid())
        .fetch_one(&mut *db)
        .await?;
        if recent >= max {
            let secs = wait.unwrap_or(3_600.0).clamp(1.0, 3_600.0).ceil();
            return Ok(RedeliveryOutcome::Limited {
                retry_after: std::time::Duration::from_secs_f64(secs),
            });
        }
    }
    let generation = deliveries::next_generation(&mut *db, event).await?;
    let to = Destinations {
        event,
        merchant,
        transaction: TransactionId::from_uuid(transaction),
        callback_url: callback_url.as_deref(),
        generation,
    };
    let deliveries = deliveries::schedule(&mut db, to).await?;
    db.commit().await?;
    Ok(RedeliveryOutcome::Scheduled(Redelivery {
        event_id: event,
        generation,
        deliveries,
    }))
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
    fn event_types_read_back_what_they_store() {
        for status in [
            TransactionStatus::Succeeded,
            TransactionStatus::Failed,
            TransactionStatus::Unresolved,
            TransactionStatus::RequiresAction,
        ] {
            let event_type = EventType::for_status(status).expect("an announced status");
            assert_eq!(EventType::parse(event_type.as_str()), Some(event_type));
        }
        assert_eq!(EventType::parse("transaction.pending"), None);
        for event_type in [EventType::RefundSucceeded, EventType::RefundFailed] {
            assert_eq!(EventType::parse(event_type.as_str()), Some(event_type));
        }
    }

    #[test]
    fn refund_event_ids_are_deterministic_and_apart_from_payments() {
        let r = RefundId::new();
        let a = event_id_for_refund(r, RefundState::Succeeded);
        assert_eq!(a, event_id_for_refund(r, RefundState::Succeeded));
        assert_ne!(a, event_id_for_refund(r, RefundState::Failed));
        let same_uuid = TransactionId::from_uuid(r.as_uuid());
        assert_ne!(a, event_id_for(same_uuid, TransactionStatus::Succeeded));
    }
}
