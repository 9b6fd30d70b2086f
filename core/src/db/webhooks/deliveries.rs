//! The durable delivery schedule: one row per (event, destination, generation), claimed by
//! dispatchers under a lease and completed with each attempt's outcome.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::secrets::{self, SigningSecret};
use crate::db::transactions::Bindable;
use crate::db::webhook_endpoints::{self, FailingStreak, NewDeliveryAttempt, ATTEMPT_COLUMNS};
use crate::db::{DbError, RELAXED};
use crate::domain::{DeliveryAttemptId, EventId, MerchantId, TransactionId, WebhookEndpointId};
use crate::keyring::{Keyring, SealError};

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

/// An event to schedule to the merchant's current destinations.
pub(super) struct Destinations<'a> {
    pub event: EventId,
    pub merchant: MerchantId,
    pub transaction: TransactionId,
    pub callback_url: Option<&'a str>,
    /// 0 for the first delivery, then one more per redelivery.
    pub generation: i32,
}

/// One delivery row per current destination (enabled endpoints, then the `callback_url`),
/// due now; returns the rows scheduled. A `callback_url` delivery's secret (the merchant's
/// default) is made when the delivery is claimed, if the merchant has none yet. One
/// statement ([`SCHEDULE`]).
pub(super) async fn schedule(
    db: &mut Transaction<'_, Postgres>,
    to: Destinations<'_>,
) -> Result<usize, DbError> {
    let scheduled: i64 = bind_destinations(sqlx::query_scalar(&SCHEDULE), &to)
        .fetch_one(&mut **db)
        .await?;
    Ok(usize::try_from(scheduled).unwrap_or(0))
}

/// Binds `to` as the six parameters of [`destinations`] and [`delivery_rows`], in order:
/// event, merchant, transaction, `callback_url` (NULL when there is none), its destination,
/// generation.
pub(super) fn bind_destinations<'q, Q: Bindable<'q>>(query: Q, to: &Destinations<'q>) -> Q {
    let callback_url = to.callback_url.filter(|u| !u.is_empty());
    query
        .bind_value(to.event.as_uuid())
        .bind_value(to.merchant.as_uuid())
        .bind_value(to.transaction.as_uuid())
        .bind_value(callback_url)
        .bind_value(callback_url.map(callback_destination))
        .bind_value(to.generation)
}

/// The `destinations` CTE: the current destinations of the merchant, the enabled endpoints
/// by id (destination `we_<hex>`, an endpoint id's external form), then the `callback_url`,
/// numbered from 0 in that order. Its parameters start at `$first` ([`bind_destinations`]'s
/// order), so that a statement which changes a transaction can record the event too.
pub(super) fn destinations(first: usize) -> String {
    let (merchant, url, destination) = (first + 1, first + 3, first + 4);
    format!(
        "destinations AS (
    SELECT endpoint_id, url, destination,
           (row_number() OVER (ORDER BY part, endpoint_id) - 1)::int AS ord
    FROM (
        SELECT id AS endpoint_id, url, 'we_' || replace(id::text, '-', '') AS destination, 0 AS part
        FROM webhook_endpoints WHERE merchant_id = ${merchant} AND disabled_at IS NULL
        UNION ALL
        SELECT NULL::uuid, ${url}::text, ${destination}::text, 1 WHERE ${url}::text IS NOT NULL
    ) listed
)"
    )
}

/// A delivery row per destination, selected from [`destinations`] (same parameters): the
/// caller adds its own condition. Ids are UUIDv7 (the statement's millisecond, then the
/// destination's number as the counter), in the destinations' order as when each was made
/// by `Uuid::now_v7()`.
pub(super) fn delivery_rows(first: usize) -> String {
    let (event, merchant, transaction, generation) = (first, first + 1, first + 2, first + 5);
    format!(
        "INSERT INTO webhook_deliveries
        (id, event_id, merchant_id, transaction_id, endpoint_id, url, destination, generation)
    SELECT encode(overlay(overlay(uuid_send(gen_random_uuid())
                   placing substring(int8send((extract(epoch FROM statement_timestamp()) * 1000)::int8) FROM 3) FROM 1 FOR 6)
                   placing int2send((28672 + ord % 4096)::int2) FROM 7 FOR 2), 'hex')::uuid,
           ${event}, ${merchant}, ${transaction}, endpoint_id, url, destination, ${generation}
    FROM destinations"
    )
}

/// [`schedule`]: answers how many rows were scheduled.
static SCHEDULE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {},
         scheduled AS (
             {}
             ON CONFLICT (event_id, destination, generation) DO NOTHING RETURNING 1
         )
         SELECT count(*) FROM scheduled",
        destinations(1),
        delivery_rows(1)
    )
});

/// The generation a redelivery of `event` gets: one past the newest scheduled.
pub(super) async fn next_generation<'e>(
    exec: impl PgExecutor<'e>,
    event: EventId,
) -> Result<i32, DbError> {
    let generation = sqlx::query_scalar(
        "SELECT COALESCE(max(generation), 0) + 1 FROM webhook_deliveries WHERE event_id = $1",
    )
    .bind(event.as_uuid())
    .fetch_one(exec)
    .await?;
    Ok(generation)
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

/// A `webhook_deliveries` row as [`deliveries_for_event`] selects it.
#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    event_id: Uuid,
    endpoint_id: Option<Uuid>,
    url: String,
    destination: String,
    generation: i32,
    state: String,
    attempts: i32,
    next_attempt_at: DateTime<Utc>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = DbError;

    fn try_from(row: DeliveryRow) -> Result<Self, DbError> {
        let state = DeliveryState::parse(&row.state).ok_or_else(|| DbError::Corrupt {
            table: "webhook_deliveries",
            detail: format!("unknown state {:?}", row.state),
        })?;
        Ok(Self {
            id: row.id,
            event_id: EventId::from_uuid(row.event_id),
            endpoint_id: row.endpoint_id.map(WebhookEndpointId::from_uuid),
            url: row.url,
            destination: row.destination,
            generation: row.generation,
            state,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_status_code: row.last_status_code,
            last_error: row.last_error,
        })
    }
}

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
    rows.into_iter().map(Delivery::try_from).collect()
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
    /// Current secret first, then the previous one while its rotation overlap lasts; or why
    /// they could not be opened (unknown key id, altered or copied value): the attempt then
    /// fails with that error instead of being signed with anything else.
    pub secrets: Result<Vec<SigningSecret>, SealError>,
    /// The endpoint was disabled or deleted since the delivery was scheduled.
    pub endpoint_disabled: bool,
}

/// What one dispatcher has in flight: by destination (the bulkhead) and by merchant (the
/// fair share).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    pub destinations: HashMap<String, usize>,
    pub merchants: HashMap<MerchantId, usize>,
}

impl InFlight {
    /// Counts one more delivery to `destination` for `merchant`.
    pub fn add(&mut self, destination: &str, merchant: MerchantId) {
        let count = self.destinations.entry(destination.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let count = self.merchants.entry(merchant).or_insert(0);
        *count = count.saturating_add(1);
    }

    /// Counts one delivery fewer; entries that reach zero are dropped.
    pub fn remove(&mut self, destination: &str, merchant: MerchantId) {
        if let Some(count) = self.destinations.get_mut(destination) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.destinations.remove(destination);
            }
        }
        if let Some(count) = self.merchants.get_mut(&merchant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.merchants.remove(&merchant);
            }
        }
    }

    fn destination(&self, destination: &str) -> usize {
        self.destinations.get(destination).copied().unwrap_or(0)
    }

    fn merchant(&self, merchant: MerchantId) -> usize {
        self.merchants.get(&merchant).copied().unwrap_or(0)
    }
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
    /// Deliveries in flight for one merchant at most, over all its destinations: a
    /// merchant with many slow endpoints cannot take every worker (issue 17).
    pub per_merchant: usize,
    /// What this process already has in flight.
    pub in_flight: &'a InFlight,
}

/// A due delivery [`claim_due`] may take.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Candidate {
    id: Uuid,
    destination: String,
    merchant_id: Uuid,
}

impl ClaimLimits<'_> {
    /// Destinations already at their limit in this process: not even candidates.
    fn saturated_destinations(&self) -> Vec<String> {
        let full = self.in_flight.destinations.iter();
        let full = full.filter(|(_, n)| **n >= self.per_destination);
        full.map(|(destination, _)| destination.clone()).collect()
    }

    /// Merchants already at their fair share in this process: not even candidates.
    fn saturated_merchants(&self) -> Vec<Uuid> {
        let full = self.in_flight.merchants.iter();
        let full = full.filter(|(_, n)| **n >= self.per_merchant);
        full.map(|(merchant, _)| merchant.as_uuid()).collect()
    }

    /// The candidates (in due order) to take: at most `max`, no destination past
    /// `per_destination` and no merchant past `per_merchant`, counting what is already in
    /// flight; merchants take turns (round robin, the most overdue first), so one
    /// merchant's backlog does not hold the others' deliveries back for a round.
    fn choose(&self, candidates: Vec<Candidate>) -> Vec<Uuid> {
        let mut queues: Vec<(MerchantId, VecDeque<Candidate>)> = Vec::new();
        for candidate in candidates {
            let merchant = MerchantId::from_uuid(candidate.merchant_id);
            match queues.iter_mut().find(|(m, _)| *m == merchant) {
                Some((_, queue)) => queue.push_back(candidate),
                None => queues.push((merchant, VecDeque::from([candidate]))),
            }
        }
        let mut taken = self.in_flight.clone();
        let mut chosen = Vec::new();
        let mut progressed = true;
        while progressed && chosen.len() < self.max {
            progressed = false;
            for (merchant, queue) in &mut queues {
                if chosen.len() >= self.max {
                    break;
                }
                if taken.merchant(*merchant) >= self.per_merchant {
                    queue.clear();
                    continue;
                }
                while let Some(candidate) = queue.pop_front() {
                    if taken.destination(&candidate.destination) < self.per_destination {
                        taken.add(&candidate.destination, *merchant);
                        chosen.push(candidate.id);
                        progressed = true;
                        break;
                    }
                }
            }
        }
        chosen
    }
}

/// A leased delivery with its event, secrets and endpoint state, as [`claim_due`] reads it.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: Uuid,
    event_id: Uuid,
    merchant_id: Uuid,
    transaction_id: Uuid,
    endpoint_id: Option<Uuid>,
    url: String,
    destination: String,
    attempts: i32,
    payload: String,
    /// The endpoint's secret, or the merchant default's for a `callback_url` delivery.
    secret: Option<String>,
    /// The one before it, while its rotation overlap lasts.
    previous_secret: Option<String>,
    endpoint_disabled: bool,
}

impl ClaimRow {
    /// The claimed delivery; a `callback_url` delivery whose merchant has no default secret
    /// yet gets one created. A secret that does not open fails this delivery only (its
    /// `secrets` is the error), never the whole claim.
    async fn into_claimed(
        self,
        db: &mut Transaction<'_, Postgres>,
        keyring: &Keyring,
    ) -> Result<ClaimedDelivery, DbError> {
        let merchant = MerchantId::from_uuid(self.merchant_id);
        let (endpoint, row) = match self.endpoint_id {
            Some(endpoint) => (true, endpoint),
            None => (false, self.merchant_id),
        };
        let secrets = match self.secret.as_deref() {
            Some(current) => secrets::open_for_delivery(
                keyring,
                endpoint,
                row,
                current,
                self.previous_secret.as_deref(),
            ),
            None if !endpoint => {
                match secrets::merchant_default_secret(&mut **db, keyring, merchant).await {
                    Ok(secret) => Ok(vec![secret]),
                    Err(DbError::Secret { source, .. }) => Err(source),
                    Err(other) => return Err(other),
                }
            }
            // An endpoint row that is gone: `endpoint_disabled` skips the delivery.
            None => Ok(Vec::new()),
        };
        Ok(ClaimedDelivery {
            id: self.id,
            event_id: EventId::from_uuid(self.event_id),
            merchant_id: merchant,
            transaction_id: TransactionId::from_uuid(self.transaction_id),
            endpoint_id: self.endpoint_id.map(WebhookEndpointId::from_uuid),
            url: self.url,
            destination: self.destination,
            attempt: self.attempts,
            payload: self.payload,
            secrets,
            endpoint_disabled: self.endpoint_disabled,
        })
    }
}

/// What [`claim_due`] took, and whether it left due deliveries behind for want of room.
#[derive(Debug)]
pub struct Claimed {
    pub deliveries: Vec<ClaimedDelivery>,
    /// Due deliveries were passed over because a destination or a merchant was at its
    /// limit (or the claim filled every free slot): a worker finishing frees room for them,
    /// so it should wake the scheduler. When false, everything due was taken, and a worker
    /// finishing has nothing to wake it for (new work wakes it by itself).
    pub held_back: bool,
}

/// Takes due deliveries (pending and due, or leased by a worker whose lease ran out) under
/// a lease, skipping rows another dispatcher holds and destinations at their limit. Four
/// round trips when something is taken (begin, candidates, lease-and-read, commit), three
/// when nothing is.
pub async fn claim_due(
    pool: &PgPool,
    keyring: &Keyring,
    limits: ClaimLimits<'_>,
) -> Result<Claimed, DbError> {
    if limits.max == 0 {
        return Ok(Claimed {
            deliveries: Vec::new(),
            held_back: true,
        });
    }
    let saturated = (
        limits.saturated_destinations(),
        limits.saturated_merchants(),
    );
    let mut db = pool.begin().await?;
    let candidates = due_candidates(&mut db, &limits, &saturated).await?;
    let offered = candidates.len();
    let chosen = limits.choose(candidates);
    let held_back = chosen.len() < offered
        || chosen.len() >= limits.max
        || !saturated.0.is_empty()
        || !saturated.1.is_empty();
    if chosen.is_empty() {
        db.commit().await?;
        return Ok(Claimed {
            deliveries: Vec::new(),
            held_back,
        });
    }
    let rows = lease(&mut db, &chosen, limits.lease).await?;
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in rows {
        deliveries.push(row.into_claimed(&mut db, keyring).await?);
    }
    db.commit().await?;
    Ok(Claimed {
        deliveries,
        held_back,
    })
}

/// Due deliveries nobody holds, oldest due first, locked for this transaction: a few times
/// `max`, so that destinations at their limit still leave enough to choose from. Destinations
/// and merchants already `saturated` (as [`ClaimLimits::saturated_destinations`] and
/// [`ClaimLimits::saturated_merchants`] give them) are not even candidates.
///
/// The two kinds of due row (pending and due; leased with the lease run out) are read apart,
/// each in its partial index's order with a limit, and merged. Why: the two conditions joined
/// by `OR` were planned as bitmap scans of the partial indexes, and a bitmap scan reads every
/// entry its index holds for rows since updated (every delivery leaves one when it is leased
/// and one when it finishes) and never marks them dead, so each poll read all those since the
/// last vacuum: 1.1–1.4 ms a poll, 17,000 entries, 75 s into a run at 300 payments/s. Read
/// in order, an index scan stops at its limit and marks the dead entries it passes, which
/// later scans skip: 0.04 ms (BENCHMARKS.md, session 20).
async fn due_candidates(
    db: &mut Transaction<'_, Postgres>,
    limits: &ClaimLimits<'_>,
    (destinations, merchants): &(Vec<String>, Vec<Uuid>),
) -> Result<Vec<Candidate>, DbError> {
    let candidates = sqlx::query_as(
        "WITH pending AS (
             SELECT id, destination, merchant_id, next_attempt_at FROM webhook_deliveries
             WHERE state = 'pending' AND next_attempt_at <= now()
               AND NOT (destination = ANY($1)) AND NOT (merchant_id = ANY($3))
             ORDER BY next_attempt_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ),
         lease_ran_out AS (
             SELECT id, destination, merchant_id, next_attempt_at FROM webhook_deliveries
             WHERE state = 'delivering' AND locked_until <= now()
               AND NOT (destination = ANY($1)) AND NOT (merchant_id = ANY($3))
             ORDER BY locked_until
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         )
         SELECT id, destination, merchant_id
         FROM (SELECT * FROM pending UNION ALL SELECT * FROM lease_ran_out) due
         ORDER BY next_attempt_at
         LIMIT $2",
    )
    .bind(destinations)
    .bind(i64::try_from(limits.max.saturating_mul(4)).unwrap_or(i64::MAX))
    .bind(merchants)
    .fetch_all(&mut **db)
    .await?;
    Ok(candidates)
}

/// Marks the chosen deliveries as being delivered, one attempt more, until the lease ends,
/// and reads what sending them needs, in due order: one statement. It relaxes the claim's
/// commit ([`RELAXED`]): a lost lease only lets the delivery be claimed (and sent) again.
async fn lease(
    db: &mut Transaction<'_, Postgres>,
    chosen: &[Uuid],
    lease: Duration,
) -> Result<Vec<ClaimRow>, DbError> {
    let rows = sqlx::query_as(&LEASE)
        .bind(chosen)
        .bind(lease.as_secs_f64())
        .fetch_all(&mut **db)
        .await?;
    Ok(rows)
}

/// [`lease`]'s statement: `$1` the chosen ids, `$2` the lease in seconds.
static LEASE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {RELAXED},
         leased AS (
             UPDATE webhook_deliveries
             SET state = 'delivering', attempts = attempts + 1, locked_until = now() + make_interval(secs => $2),
                 updated_at = now()
             WHERE id = ANY($1) AND EXISTS (SELECT 1 FROM relaxed)
             RETURNING id, event_id, merchant_id, transaction_id, endpoint_id, url, destination, attempts,
                       next_attempt_at
         )
         SELECT d.id, d.event_id, d.merchant_id, d.transaction_id, d.endpoint_id, d.url, d.destination, d.attempts,
                e.payload::text AS payload,
                CASE WHEN d.endpoint_id IS NULL THEN m.secret ELSE w.secret END AS secret,
                CASE WHEN d.endpoint_id IS NULL
                     THEN CASE WHEN m.previous_secret_expires_at > now() THEN m.previous_secret END
                     ELSE CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END END
                  AS previous_secret,
                (d.endpoint_id IS NOT NULL AND (w.id IS NULL OR w.disabled_at IS NOT NULL)) AS endpoint_disabled
         FROM leased d
         JOIN webhook_events e ON e.id = d.event_id
         LEFT JOIN webhook_endpoints w ON w.id = d.endpoint_id
         LEFT JOIN merchant_webhook_secrets m ON m.merchant_id = d.merchant_id
         ORDER BY d.next_attempt_at"
    )
});

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

/// A delivery row's next state and retry delay (seconds) for an outcome.
fn next_state(outcome: DeliveryOutcome) -> (&'static str, Option<f64>) {
    match outcome {
        DeliveryOutcome::Succeeded => ("succeeded", None),
        DeliveryOutcome::Retry { after } => ("pending", Some(after.as_secs_f64())),
        DeliveryOutcome::Failed => ("failed", None),
        DeliveryOutcome::Gone | DeliveryOutcome::Skipped => ("disabled", None),
    }
}

/// The delivery's move, fenced by its attempt number (`$1` id, `$2` attempt, `$3` state,
/// `$4` retry delay in seconds or NULL, `$5` status code, `$6` error): a worker whose lease
/// ran out and was re-claimed changes nothing.
const MOVE_ON: &str = "UPDATE webhook_deliveries
     SET state = $3,
         next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at
                                ELSE now() + make_interval(secs => $4::float8) END,
         locked_until = NULL,
         last_status_code = COALESCE($5, last_status_code),
         last_error = $6,
         completed_at = CASE WHEN $3 IN ('succeeded', 'failed', 'disabled') THEN now() END,
         updated_at = now()
     WHERE id = $1 AND state = 'delivering' AND attempts = $2";

/// Binds `$1..=$6` of [`MOVE_ON`].
fn bind_move<'q, Q: Bindable<'q>>(
    query: Q,
    claimed: &ClaimedDelivery,
    attempt: Option<&'q NewDeliveryAttempt>,
    outcome: DeliveryOutcome,
) -> Q {
    let (state, retry_secs) = next_state(outcome);
    query
        .bind_value(claimed.id)
        .bind_value(claimed.attempt)
        .bind_value(state)
        .bind_value(retry_secs)
        .bind_value(attempt.and_then(|a| a.status_code))
        .bind_value(attempt.and_then(|a| a.error.as_deref()))
}

/// Logs an attempt (when one was made) and moves the delivery on, in the caller's
/// transaction (where the dispatcher also applies its endpoint policy). Returns false when
/// the lease was lost (another worker re-claimed the delivery): the attempt is logged but
/// the schedule is left to the newer attempt.
pub async fn complete(
    db: &mut Transaction<'_, Postgres>,
    claimed: &ClaimedDelivery,
    attempt: Option<&NewDeliveryAttempt>,
    outcome: DeliveryOutcome,
) -> Result<bool, DbError> {
    if let Some(attempt) = attempt {
        webhook_endpoints::record_attempt(&mut **db, attempt).await?;
    }
    let applied = bind_move(sqlx::query(MOVE_ON), claimed, attempt, outcome)
        .execute(&mut **db)
        .await?
        .rows_affected();
    Ok(applied == 1)
}

/// What a completion does to the endpoint's failing streak (the dispatcher's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreakChange {
    /// Leave it (no attempt was made, or a `callback_url` delivery).
    Keep,
    /// A success ends it (only a failing endpoint's row is written).
    Clear,
    /// A failure starts it or lets it go on (an enabled endpoint only).
    Mark,
}

impl StreakChange {
    fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Clear => "clear",
            Self::Mark => "mark",
        }
    }
}

/// What [`finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// False when the lease was lost: the attempt was logged, nothing else changed.
    pub applied: bool,
    /// After [`StreakChange::Mark`] on an enabled endpoint: its failing streak so far.
    pub failing: Option<FailingStreak>,
}

/// [`finish`]: `$7` endpoint (NULL for a `callback_url`), `$8` [`StreakChange`]. The
/// endpoint's row is written only when the delivery moved on. Relaxed ([`RELAXED`], for the
/// statement's own transaction): a lost result only sends the webhook again, with the same
/// `webhook-id`.
static FINISH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {RELAXED},
         moved AS ({MOVE_ON} RETURNING 1),
         streak AS (
             UPDATE webhook_endpoints
             SET failing_since = CASE WHEN $8 = 'clear' THEN NULL ELSE COALESCE(failing_since, now()) END
             WHERE id = $7 AND EXISTS (SELECT 1 FROM moved)
               AND (($8 = 'clear' AND failing_since IS NOT NULL) OR ($8 = 'mark' AND disabled_at IS NULL))
             RETURNING failing_since AS since, now() AS now
         )"
    )
});

/// [`FINISH`] answering `(relaxed, applied, since, now)`.
static FINISH_WITHOUT_ATTEMPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} SELECT (SELECT setting FROM relaxed) = 'off', EXISTS (SELECT 1 FROM moved),
             (SELECT since FROM streak), (SELECT now FROM streak)",
        *FINISH
    )
});

/// [`FINISH`] with the attempt row (`$9..=$18`, [`webhook_endpoints::bind_attempt`]).
static FINISH_WITH_ATTEMPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{},
         logged AS (
             INSERT INTO delivery_attempts ({ATTEMPT_COLUMNS})
             VALUES ($9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         )
         SELECT (SELECT setting FROM relaxed) = 'off', EXISTS (SELECT 1 FROM moved),
             (SELECT since FROM streak), (SELECT now FROM streak)",
        *FINISH
    )
});

/// Logs an attempt (when one was made), moves the delivery on and changes the endpoint's
/// failing streak, in one statement: one round trip instead of a transaction of five or six.
/// For outcomes that disable nothing by themselves (not [`DeliveryOutcome::Gone`], whose
/// disabling is kept durable and atomic by [`complete`] in the caller's transaction).
pub async fn finish(
    pool: &PgPool,
    claimed: &ClaimedDelivery,
    attempt: Option<&NewDeliveryAttempt>,
    outcome: DeliveryOutcome,
    streak: StreakChange,
) -> Result<Finished, DbError> {
    type Answer = (bool, bool, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let endpoint = claimed.endpoint_id.map(|e| e.as_uuid());
    let answer: Answer = match attempt {
        Some(made) => {
            let query = bind_move(
                sqlx::query_as(&FINISH_WITH_ATTEMPT),
                claimed,
                attempt,
                outcome,
            )
            .bind(endpoint)
            .bind(streak.as_str());
            webhook_endpoints::bind_attempt(query, DeliveryAttemptId::new(), made)
                .fetch_one(pool)
                .await?
        }
        None => {
            bind_move(
                sqlx::query_as(&FINISH_WITHOUT_ATTEMPT),
                claimed,
                attempt,
                outcome,
            )
            .bind(endpoint)
            .bind(streak.as_str())
            .fetch_one(pool)
            .await?
        }
    };
    // The first column is there so that `relaxed` is evaluated (a CTE nobody reads is not).
    let (_relaxed, applied, since, now) = answer;
    let failing = match (streak, since, now) {
        (StreakChange::Mark, Some(since), Some(now)) => Some(FailingStreak { since, now }),
        _ => None,
    };
    Ok(Finished { applied, failing })
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

    fn candidate(merchant: MerchantId, destination: &str) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            destination: destination.to_owned(),
            merchant_id: merchant.as_uuid(),
        }
    }

    fn ids(candidates: &[Candidate], picks: &[usize]) -> Vec<Uuid> {
        picks
            .iter()
            .filter_map(|i| candidates.get(*i))
            .map(|c| c.id)
            .collect()
    }

    #[test]
    fn claims_respect_the_total_and_each_destination_limit() {
        let shop = MerchantId::new();
        let mut in_flight = InFlight::default();
        in_flight.add("a", shop);
        in_flight.add("full", shop);
        in_flight.add("full", shop);
        let limits = ClaimLimits {
            max: 3,
            lease: Duration::from_secs(30),
            per_destination: 2,
            per_merchant: 100,
            in_flight: &in_flight,
        };
        assert_eq!(limits.saturated_destinations(), vec!["full".to_owned()]);
        let candidates: Vec<_> = ["a", "a", "b", "b", "b"]
            .iter()
            .map(|d| candidate(shop, d))
            .collect();
        let expected = ids(&candidates, &[0, 2, 3]);
        // "a" has one in flight: one more; "b" two; then `max` is reached.
        assert_eq!(limits.choose(candidates), expected);
    }

    #[test]
    fn a_merchant_past_its_share_leaves_the_workers_to_the_others() {
        let (busy, quiet) = (MerchantId::new(), MerchantId::new());
        let mut in_flight = InFlight::default();
        for endpoint in ["slow-1", "slow-2", "slow-3"] {
            in_flight.add(endpoint, busy);
        }
        let limits = ClaimLimits {
            max: 10,
            lease: Duration::from_secs(30),
            per_destination: 8,
            per_merchant: 4,
            in_flight: &in_flight,
        };
        assert_eq!(limits.saturated_merchants(), Vec::<Uuid>::new());
        // The busy merchant's backlog is the most overdue, the quiet one's comes after.
        let mut candidates: Vec<_> = (0..6).map(|_| candidate(busy, "slow-4")).collect();
        candidates.push(candidate(quiet, "fast"));
        candidates.push(candidate(quiet, "fast"));
        let expected = ids(&candidates, &[0, 6, 7]);
        // One more for the busy merchant (3 + 1 = its share of 4), both of the quiet one's.
        assert_eq!(limits.choose(candidates), expected);
    }

    #[test]
    fn merchants_take_turns_when_workers_are_scarce() {
        let (a, b) = (MerchantId::new(), MerchantId::new());
        let in_flight = InFlight::default();
        let limits = ClaimLimits {
            max: 4,
            lease: Duration::from_secs(30),
            per_destination: 10,
            per_merchant: 10,
            in_flight: &in_flight,
        };
        let mut candidates: Vec<_> = (0..5).map(|_| candidate(a, "a")).collect();
        candidates.push(candidate(b, "b"));
        candidates.push(candidate(b, "b"));
        let expected = ids(&candidates, &[0, 5, 1, 6]);
        assert_eq!(limits.choose(candidates), expected);
    }

    #[test]
    fn in_flight_counts_go_back_to_nothing() {
        let shop = MerchantId::new();
        let mut in_flight = InFlight::default();
        in_flight.add("d", shop);
        in_flight.add("d", shop);
        in_flight.remove("d", shop);
        in_flight.remove("d", shop);
        in_flight.remove("d", shop);
        assert_eq!(in_flight, InFlight::default());
    }
}
