//! The transactions table: insert (with idempotency key and outbox row, one commit),
//! version-checked updates, fetch, and keyset listing.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::{PgExecutor, PgPool, Postgres};

use super::ledger::Refusal;
use super::outbox::{self, OutboxMessage};
use super::webhooks::{self, NewEvent};
use super::DbError;
use crate::domain::{
    ApiKeyId, CustomerReference, Failure, GatewayName, MerchantId, Money, Transaction,
    TransactionId, TransactionKind, TransactionStatus, TransactionUpdate,
};

/// How long an idempotency key is remembered; Stripe keeps keys 24 hours, so do we (at least).
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// The idempotency part of a create request: the merchant's key, a hash of the request as
/// received, and the response to replay for a repeat.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    pub key: String,
    pub request_hash: [u8; 32],
    pub response_status: u16,
    pub response_body: serde_json::Value,
    /// Keys older than this are forgotten and may be reused for a new request.
    pub retention: Duration,
}

/// What happened to an insert.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// Committed: the transaction, its key and its outbox row.
    Created,
    /// The key was used before with the same request: here is the first response.
    Replayed {
        status: u16,
        body: serde_json::Value,
    },
    /// The key was used before with a different request (Stripe answers 422).
    KeyReusedWithDifferentRequest,
    /// Another request with this key is being handled right now (Stripe answers 409).
    InFlight,
    /// The ledger refused it (balance or limits): nothing was written. The caller answers
    /// 4xx and stores that answer under the key with [`remember_refusal`].
    Refused(Refusal),
    /// The API key given to [`insert_checked`] was revoked, or its merchant no longer has the
    /// named gateway enabled: nothing was written. The caller authenticates afresh.
    KeyNotLive,
}

/// Inserts a new transaction, its idempotency key (if any) and the outbox message that
/// announces it, atomically. Nothing is written unless all of it is.
///
/// It is one SQL statement (data-modifying CTEs), so one round trip and an implicit
/// transaction: the accept path's cost is dominated by round trips to Postgres, and the
/// earlier BEGIN / lock / read / delete / three inserts / COMMIT took ten.
///
/// - A transaction-scoped advisory lock on (merchant, key) tells a concurrent duplicate apart
///   from a sequential one without blocking: the second of two simultaneous requests gets
///   [`InsertOutcome::InFlight`] at once instead of waiting for the first.
/// - The key row is inserted with `ON CONFLICT`: a live row wins (nothing else is written,
///   and the stored outcome is then read to replay or refuse); an expired row is taken over
///   by the new request. The unique index, not the snapshot, decides, so a duplicate that
///   committed a moment ago is still seen.
pub async fn insert(
    pool: &PgPool,
    transaction: &Transaction,
    idempotency: Option<&IdempotentRequest>,
    announcement: &OutboxMessage,
) -> Result<InsertOutcome, DbError> {
    insert_checked(pool, transaction, idempotency, announcement, None).await
}

/// [`insert`], writing only if the API key `live_key` is still live (not revoked), belongs to
/// the transaction's merchant, and that merchant still has the named gateway enabled, checked
/// inside the same statement: [`InsertOutcome::KeyNotLive`] otherwise, with nothing written.
/// The API authenticates creates from an in-process cache of keys and passes the key here,
/// so a revoked key cannot create anything even while it is still cached.
pub async fn insert_checked(
    pool: &PgPool,
    transaction: &Transaction,
    idempotency: Option<&IdempotentRequest>,
    announcement: &OutboxMessage,
    live_key: Option<ApiKeyId>,
) -> Result<InsertOutcome, DbError> {
    let headers = outbox::encode_headers(&announcement.headers)?;
    let refused = |error: sqlx::Error| match Refusal::of(&error) {
        Some(refusal) => Ok(InsertOutcome::Refused(refusal)),
        None => Err(DbError::from(error)),
    };
    let live_key = live_key.map(|k| k.as_uuid());
    let Some(request) = idempotency else {
        let query = bind_transaction(sqlx::query_as(&INSERT_WITHOUT_KEY), transaction);
        let inserted: Result<(bool, bool), _> = bind_announcement(query, announcement, headers)
            .bind(live_key)
            .fetch_one(pool)
            .await;
        return match inserted {
            Err(error) => refused(error),
            Ok((false, _)) => Ok(InsertOutcome::KeyNotLive),
            Ok((true, _)) => {
                outbox::committed();
                Ok(InsertOutcome::Created)
            }
        };
    };
    let query = bind_transaction(sqlx::query_as(&INSERT_WITH_KEY), transaction);
    let inserted = bind_announcement(query, announcement, headers)
        .bind(&request.key)
        .bind(&request.request_hash[..])
        .bind(i16::try_from(request.response_status).unwrap_or(500))
        .bind(&request.response_body)
        .bind(request.retention.as_secs_f64())
        .bind(live_key)
        .fetch_one(pool)
        .await;
    let (locked, live, created): (bool, bool, bool) = match inserted {
        Ok(row) => row,
        Err(error) => return refused(error),
    };
    if !live {
        return Ok(InsertOutcome::KeyNotLive);
    }
    if !locked {
        return Ok(InsertOutcome::InFlight);
    }
    if created {
        outbox::committed();
        return Ok(InsertOutcome::Created);
    }
    let stored = stored_outcome(
        pool,
        transaction.merchant_id,
        &request.key,
        &request.request_hash,
        request.retention,
    )
    .await?;
    // A live key that vanished between the two statements can only have been deleted by
    // retention housekeeping this instant; answering "in flight" makes the client retry.
    Ok(stored.unwrap_or(InsertOutcome::InFlight))
}

/// Stores a refusal's answer under its idempotency key (nothing else was written), so that
/// a retry with the same key and request gets the same 4xx. When the key turns out to be
/// live already (a concurrent request with it committed in between), that stored outcome is
/// returned instead and is the answer.
pub async fn remember_refusal(
    pool: &PgPool,
    merchant: MerchantId,
    request: &IdempotentRequest,
) -> Result<Option<InsertOutcome>, DbError> {
    let stored = sqlx::query(
        "INSERT INTO idempotency_keys (merchant_id, key, request_hash, response_status, response_body)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (merchant_id, key) DO UPDATE SET
             request_hash = EXCLUDED.request_hash, response_status = EXCLUDED.response_status,
             response_body = EXCLUDED.response_body, transaction_id = NULL, created_at = now()
         WHERE idempotency_keys.created_at <= now() - make_interval(secs => $6)",
    )
    .bind(merchant.as_uuid())
    .bind(&request.key)
    .bind(&request.request_hash[..])
    .bind(i16::try_from(request.response_status).unwrap_or(500))
    .bind(&request.response_body)
    .bind(request.retention.as_secs_f64())
    .execute(pool)
    .await?;
    if stored.rows_affected() == 1 {
        return Ok(None);
    }
    stored_outcome(
        pool,
        merchant,
        &request.key,
        &request.request_hash,
        request.retention,
    )
    .await
}

/// The `callback_url` a payment was created with (`None`: no such payment, or none given):
/// its refunds' events are sent there too.
pub async fn callback_url_of<'e>(
    exec: impl PgExecutor<'e>,
    id: TransactionId,
) -> Result<Option<String>, DbError> {
    let url: Option<Option<String>> =
        sqlx::query_scalar("SELECT callback_url FROM transactions WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(exec)
            .await?;
    Ok(url.flatten())
}

/// The merchant a transaction belongs to (`None`: no such transaction).
pub async fn merchant_of<'e>(
    exec: impl PgExecutor<'e>,
    id: TransactionId,
) -> Result<Option<MerchantId>, DbError> {
    let merchant: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT merchant_id FROM transactions WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_optional(exec)
            .await?;
    Ok(merchant.map(MerchantId::from_uuid))
}

/// The columns of a new transaction row, bound as `$1..=$19` by [`bind_transaction`].
const INSERT_COLUMNS: &str = "id, merchant_id, kind, amount, currency, customer_reference, gateway, status,
    version, attempts, next_attempt_at, provider_reference, failure_code, failure_message, callback_url,
    metadata, created_at, updated_at, routed_gateway";
const INSERT_VALUES: &str =
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19";
/// The outbox row, `$20..=$23` ([`bind_announcement`]).
const OUTBOX_VALUES: &str = "$20, $21, $22, $23";

/// Whether the API key `$N` (the last parameter; NULL: no check) is live, belongs to the
/// merchant `$2`, and that merchant may use the named gateway `$7` (NULL: routing chooses).
fn live_key_check(n: u8) -> String {
    format!(
        "live AS MATERIALIZED (
             SELECT ${n}::uuid IS NULL OR EXISTS (
                 SELECT 1 FROM api_keys k JOIN merchants m ON m.id = k.merchant_id
                  WHERE k.id = ${n}::uuid AND k.revoked_at IS NULL AND k.merchant_id = $2
                    AND ($7::text IS NULL OR m.enabled_gateways IS NULL
                         OR $7::text = ANY (m.enabled_gateways))
             ) AS ok
         )"
    )
}

/// `$24` the live-key check ([`live_key_check`]). Answers `(live, created)`.
static INSERT_WITHOUT_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {live},
         txn AS (
             INSERT INTO transactions ({INSERT_COLUMNS})
             SELECT {INSERT_VALUES} WHERE (SELECT ok FROM live)
             RETURNING 1
         ),
         announced AS (
             INSERT INTO outbox (topic, message_key, payload, headers)
             SELECT {OUTBOX_VALUES} FROM txn
             RETURNING 1
         )
         SELECT (SELECT ok FROM live), EXISTS (SELECT 1 FROM announced)",
        live = live_key_check(24)
    )
});

/// `$24` key, `$25` request hash, `$26` response status, `$27` response body, `$28`
/// retention in seconds, `$29` the live-key check ([`live_key_check`]). Answers
/// `(locked, live, created)`.
static INSERT_WITH_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {live},
         gate AS MATERIALIZED (
             SELECT (SELECT ok FROM live)
                AND pg_try_advisory_xact_lock(hashtextextended($2::text || ':' || $24, 0)) AS locked
         ),
         idem AS (
             INSERT INTO idempotency_keys (merchant_id, key, request_hash, response_status, response_body, transaction_id)
             SELECT $2, $24, $25, $26, $27, $1 FROM gate WHERE locked
             ON CONFLICT (merchant_id, key) DO UPDATE SET
                 request_hash = EXCLUDED.request_hash, response_status = EXCLUDED.response_status,
                 response_body = EXCLUDED.response_body, transaction_id = EXCLUDED.transaction_id,
                 created_at = now()
             WHERE idempotency_keys.created_at <= now() - make_interval(secs => $28)
             RETURNING 1
         ),
         txn AS (
             INSERT INTO transactions ({INSERT_COLUMNS})
             SELECT {INSERT_VALUES} WHERE EXISTS (SELECT 1 FROM idem)
             RETURNING 1
         ),
         announced AS (
             INSERT INTO outbox (topic, message_key, payload, headers)
             SELECT {OUTBOX_VALUES} FROM txn
             RETURNING 1
         )
         SELECT (SELECT locked FROM gate), (SELECT ok FROM live), EXISTS (SELECT 1 FROM announced)",
        live = live_key_check(29)
    )
});

/// The `bind` that each of sqlx's query kinds has, as one trait, so that a row's bindings
/// are written once and used by plain, `query_as` and `query_scalar` statements alike.
/// Public so that a service writing more rows in the statement of a version-checked update
/// (the callback processor's log row) binds the update with [`bind_update`].
pub trait Bindable<'q>: Sized {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>;
}

impl<'q> Bindable<'q> for sqlx::query::Query<'q, Postgres, PgArguments> {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    {
        self.bind(value)
    }
}

impl<'q, O> Bindable<'q> for sqlx::query::QueryAs<'q, Postgres, O, PgArguments> {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    {
        self.bind(value)
    }
}

impl<'q, O> Bindable<'q> for sqlx::query::QueryScalar<'q, Postgres, O, PgArguments> {
    fn bind_value<T>(self, value: T) -> Self
    where
        T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
    {
        self.bind(value)
    }
}
/// What a live stored key says about a request: replay the first response (same request)
/// or refuse it (a different request under the same key). `None`: the key is unused or has
/// expired. The API asks this before validating, so a retry is answered with the first
/// response even when something validation depends on (a DNS lookup) fails this time.
pub async fn stored_outcome<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    key: &str,
    request_hash: &[u8; 32],
    retention: Duration,
) -> Result<Option<InsertOutcome>, DbError> {
    let previous: Option<(Vec<u8>, i16, serde_json::Value)> = sqlx::query_as(
        "SELECT request_hash, response_status, response_body FROM idempotency_keys
         WHERE merchant_id = $1 AND key = $2 AND created_at > now() - make_interval(secs => $3)",
    )
    .bind(merchant.as_uuid())
    .bind(key)
    .bind(retention.as_secs_f64())
    .fetch_optional(exec)
    .await?;
    Ok(previous.map(|(hash, status, body)| {
        if hash.as_slice() == request_hash.as_slice() {
            InsertOutcome::Replayed {
                status: u16::try_from(status).unwrap_or(500),
                body,
            }
        } else {
            InsertOutcome::KeyReusedWithDifferentRequest
        }
    }))
}

/// Binds a new transaction's row as `$1..=$19` ([`INSERT_COLUMNS`]).
fn bind_transaction<'q, Q: Bindable<'q>>(query: Q, t: &'q Transaction) -> Q {
    query
        .bind_value(t.id.as_uuid())
        .bind_value(t.merchant_id.as_uuid())
        .bind_value(t.kind.as_str())
        .bind_value(t.money.amount.minor_units())
        .bind_value(t.money.currency.code())
        .bind_value(t.customer.as_str())
        .bind_value(t.gateway.as_ref().map(GatewayName::as_str))
        .bind_value(t.status.as_str())
        .bind_value(t.version)
        .bind_value(t.attempts)
        .bind_value(t.next_attempt_at)
        .bind_value(t.provider_reference.as_deref())
        .bind_value(t.failure.as_ref().map(|f| f.code.as_str()))
        .bind_value(t.failure.as_ref().map(|f| f.message.as_str()))
        .bind_value(t.callback_url.as_deref())
        .bind_value(&t.metadata)
        .bind_value(t.created_at)
        .bind_value(t.updated_at)
        .bind_value(t.routed_gateway.as_ref().map(GatewayName::as_str))
}

/// Binds an outbox row as the next four parameters (`$20..=$23` of an insert, [`OUTBOX_VALUES`];
/// `$14..=$17` after [`bind_update`]).
pub fn bind_announcement<'q, Q: Bindable<'q>>(
    query: Q,
    message: &'q OutboxMessage,
    headers: serde_json::Value,
) -> Q {
    query
        .bind_value(message.topic.suffix())
        .bind_value(&message.key)
        .bind_value(&message.payload)
        .bind_value(headers)
}

/// Writes `update` only if the row still has `update.expected_version`. Returns the new
/// transaction when it applied and `None` when another writer got there first (the caller
/// reloads and decides again). This conditional write is what makes the Redis lock an
/// optimisation rather than the guarantee.
pub async fn apply<'e>(
    exec: impl PgExecutor<'e>,
    update: &TransactionUpdate,
) -> Result<Option<Transaction>, DbError> {
    let result = bind_update(sqlx::query(UPDATE_SQL), update)
        .execute(exec)
        .await?;
    Ok((result.rows_affected() == 1).then(|| update.next.clone()))
}

/// Writes each of `updates` only if its row still has its `expected_version`, in ONE
/// statement: one round trip and one commit for all of them ([`super::coalesce`]). Answers
/// one flag per update, in order: whether it applied. An update whose row another writer
/// moved on changes nothing, as with [`apply`].
///
/// The ids must differ (a row joined twice is updated once, by whichever match comes first):
/// the caller sends a second update of one row alone. Two such statements that lock the same
/// rows in another order may deadlock; Postgres then fails one, and its caller writes each
/// update alone (each payment has one writer at a time, so this is rare).
pub async fn apply_all<'e>(
    exec: impl PgExecutor<'e>,
    updates: &[TransactionUpdate],
) -> Result<Vec<bool>, DbError> {
    let mut columns = UpdateColumns::default();
    for update in updates {
        columns.push(update);
    }
    let applied: Vec<uuid::Uuid> = columns
        .bind(sqlx::query_scalar(APPLY_ALL_SQL))
        .fetch_all(exec)
        .await?;
    let applied: std::collections::HashSet<uuid::Uuid> = applied.into_iter().collect();
    Ok(updates
        .iter()
        .map(|u| applied.contains(&u.next.id.as_uuid()))
        .collect())
}

/// [`UPDATE_SQL`] over arrays, one element per update (`$1..=$13` in the same order).
const APPLY_ALL_SQL: &str = "WITH input AS (
         SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::int[],
                              $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[],
                              $11::timestamptz[], $12::timestamptz[], $13::text[])
             AS i(id, expected, status, version, attempts, next_attempt_at, routed_gateway,
                  provider_reference, failure_code, failure_message, updated_at,
                  ambiguous_since, next_action_url)
     )
     UPDATE transactions t SET status = i.status, version = i.version, attempts = i.attempts,
         next_attempt_at = i.next_attempt_at, routed_gateway = i.routed_gateway,
         provider_reference = i.provider_reference, failure_code = i.failure_code,
         failure_message = i.failure_message, updated_at = i.updated_at,
         ambiguous_since = i.ambiguous_since, next_action_url = i.next_action_url
     FROM input i
     WHERE t.id = i.id AND t.version = i.expected
     RETURNING t.id";

/// The columns of [`APPLY_ALL_SQL`], one vector per parameter.
#[derive(Default)]
struct UpdateColumns {
    id: Vec<uuid::Uuid>,
    expected: Vec<i64>,
    status: Vec<&'static str>,
    version: Vec<i64>,
    attempts: Vec<i32>,
    next_attempt_at: Vec<Option<DateTime<Utc>>>,
    routed_gateway: Vec<Option<String>>,
    provider_reference: Vec<Option<String>>,
    failure_code: Vec<Option<String>>,
    failure_message: Vec<Option<String>>,
    updated_at: Vec<DateTime<Utc>>,
    ambiguous_since: Vec<Option<DateTime<Utc>>>,
    next_action_url: Vec<Option<String>>,
}

impl UpdateColumns {
    fn push(&mut self, update: &TransactionUpdate) {
        let t = &update.next;
        self.id.push(t.id.as_uuid());
        self.expected.push(update.expected_version);
        self.status.push(t.status.as_str());
        self.version.push(t.version);
        self.attempts.push(t.attempts);
        self.next_attempt_at.push(t.next_attempt_at);
        self.routed_gateway
            .push(t.routed_gateway.as_ref().map(|g| g.as_str().to_owned()));
        self.provider_reference.push(t.provider_reference.clone());
        self.failure_code
            .push(t.failure.as_ref().map(|f| f.code.clone()));
        self.failure_message
            .push(t.failure.as_ref().map(|f| f.message.clone()));
        self.updated_at.push(t.updated_at);
        self.ambiguous_since.push(t.ambiguous_since);
        self.next_action_url.push(t.next_action_url.clone());
    }

    fn bind<'q, Q: Bindable<'q>>(self, query: Q) -> Q {
        query
            .bind_value(self.id)
            .bind_value(self.expected)
            .bind_value(self.status)
            .bind_value(self.version)
            .bind_value(self.attempts)
            .bind_value(self.next_attempt_at)
            .bind_value(self.routed_gateway)
            .bind_value(self.provider_reference)
            .bind_value(self.failure_code)
            .bind_value(self.failure_message)
            .bind_value(self.updated_at)
            .bind_value(self.ambiguous_since)
            .bind_value(self.next_action_url)
    }
}

/// Binds `update` as `$1..=$13` of [`UPDATE_SQL`]; works for any query kind.
pub fn bind_update<'q, Q: Bindable<'q>>(query: Q, update: &'q TransactionUpdate) -> Q {
    let t = &update.next;
    query
        .bind_value(t.id.as_uuid())
        .bind_value(update.expected_version)
        .bind_value(t.status.as_str())
        .bind_value(t.version)
        .bind_value(t.attempts)
        .bind_value(t.next_attempt_at)
        .bind_value(t.routed_gateway.as_ref().map(GatewayName::as_str))
        .bind_value(t.provider_reference.as_deref())
        .bind_value(t.failure.as_ref().map(|f| f.code.as_str()))
        .bind_value(t.failure.as_ref().map(|f| f.message.as_str()))
        .bind_value(t.updated_at)
        .bind_value(t.ambiguous_since)
        .bind_value(t.next_action_url.as_deref())
}

/// Applies `update` and, only if it applied, records `event` (the merchant's webhook event
/// and its deliveries, [`crate::announce::completed`]) in the same commit: the state change
/// and what tells it are written together or not at all. One statement (a data-modifying
/// CTE), so one round trip.
pub async fn apply_with_event(
    pool: &PgPool,
    update: &TransactionUpdate,
    event: &NewEvent,
) -> Result<Option<Transaction>, DbError> {
    let query = bind_update(sqlx::query_scalar(&APPLY_WITH_EVENT), update);
    let applied: bool = webhooks::bind_event(query, event).fetch_one(pool).await?;
    Ok(applied.then(|| update.next.clone()))
}

/// The version-checked update, `$1..=$13` ([`bind_update`]). It ends with its `WHERE`
/// clause, so a caller may append further `AND` conditions.
pub const UPDATE_SQL: &str = "UPDATE transactions SET status = $3, version = $4, attempts = $5, next_attempt_at = $6, routed_gateway = $7,
     provider_reference = $8, failure_code = $9, failure_message = $10, updated_at = $11, ambiguous_since = $12,
     next_action_url = $13
 WHERE id = $1 AND version = $2";

/// The update and, when it applied, the event from `$14` ([`webhooks::bind_event`]).
/// Answers whether it applied.
static APPLY_WITH_EVENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH applied AS ({UPDATE_SQL} RETURNING 1), {}
         SELECT EXISTS (SELECT 1 FROM applied)",
        webhooks::record_event_ctes(Some("applied"), 14)
    )
});

/// A resolution by hand: who decided, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub actor: String,
    pub reason: String,
}

/// Applies a person's resolution of an unresolved transaction: the version-checked update,
/// its audit row (who, when, why, the previous state) and the merchant's event, in one commit.
/// `None` when the transaction changed since it was read (nothing written).
pub async fn resolve(
    pool: &PgPool,
    update: &TransactionUpdate,
    previous: TransactionStatus,
    resolution: &Resolution,
    event: &NewEvent,
) -> Result<Option<Transaction>, DbError> {
    let query = bind_update(sqlx::query_scalar(&RESOLVE), update);
    let applied: bool = webhooks::bind_event(query, event)
        .bind(previous.as_str())
        .bind(&resolution.actor)
        .bind(&resolution.reason)
        .fetch_one(pool)
        .await?;
    Ok(applied.then(|| update.next.clone()))
}

/// [`APPLY_WITH_EVENT`] plus the audit row: `$22` previous status, `$23` actor, `$24` reason.
static RESOLVE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH applied AS ({UPDATE_SQL} RETURNING 1), {},
         audited AS (
             INSERT INTO transaction_resolutions
                 (transaction_id, previous_status, previous_version, resolved_status, actor, reason)
             SELECT $1, $22, $2, $3, $23, $24 FROM applied
         )
         SELECT EXISTS (SELECT 1 FROM applied)",
        webhooks::record_event_ctes(Some("applied"), 14)
    )
});

/// The resolutions recorded for a transaction, oldest first.
pub async fn resolutions<'e>(
    exec: impl PgExecutor<'e>,
    id: TransactionId,
) -> Result<Vec<RecordedResolution>, DbError> {
    let rows: Vec<(String, i64, String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT previous_status, previous_version, resolved_status, actor, reason, created_at
         FROM transaction_resolutions WHERE transaction_id = $1 ORDER BY id",
    )
    .bind(id.as_uuid())
    .fetch_all(exec)
    .await?;
    rows.into_iter()
        .map(
            |(previous, previous_version, resolved, actor, reason, at)| {
                let status = |raw: String| {
                    raw.parse::<TransactionStatus>()
                        .map_err(|e| DbError::Corrupt {
                            table: "transaction_resolutions",
                            detail: e.to_string(),
                        })
                };
                Ok(RecordedResolution {
                    previous_status: status(previous)?,
                    previous_version,
                    resolved_status: status(resolved)?,
                    resolution: Resolution { actor, reason },
                    created_at: at,
                })
            },
        )
        .collect()
}

/// One row of `transaction_resolutions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedResolution {
    pub previous_status: TransactionStatus,
    pub previous_version: i64,
    pub resolved_status: TransactionStatus,
    pub resolution: Resolution,
    pub created_at: DateTime<Utc>,
}

/// Retries that are due: locks up to `limit` `retry_scheduled` rows whose time has come and
/// pushes their `next_attempt_at` forward by `requeue_after` (without a version bump: it is
/// scheduling, not state), so the next scan does not enqueue them again while their message
/// is on its way. If the message is lost, they come due again after `requeue_after`.
pub async fn take_due_retries(
    pool: &PgPool,
    limit: i64,
    requeue_after: Duration,
) -> Result<Vec<Transaction>, DbError> {
    take_due(
        pool,
        TransactionStatus::RetryScheduled,
        limit,
        requeue_after,
    )
    .await
}

/// Unresolved transactions whose next status query is due, taken the same way as
/// [`take_due_retries`] (pushed forward by `requeue_after`, no version bump). Those past the
/// reconciliation horizon have no due time and are never taken: they wait for a person.
pub async fn take_due_checks(
    pool: &PgPool,
    limit: i64,
    requeue_after: Duration,
) -> Result<Vec<Transaction>, DbError> {
    take_due(pool, TransactionStatus::Unresolved, limit, requeue_after).await
}

/// `requires_action` transactions whose customer's time is up, taken the same way as
/// [`take_due_retries`].
pub async fn take_due_actions(
    pool: &PgPool,
    limit: i64,
    requeue_after: Duration,
) -> Result<Vec<Transaction>, DbError> {
    take_due(
        pool,
        TransactionStatus::RequiresAction,
        limit,
        requeue_after,
    )
    .await
}

async fn take_due(
    pool: &PgPool,
    status: TransactionStatus,
    limit: i64,
    requeue_after: Duration,
) -> Result<Vec<Transaction>, DbError> {
    let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
        "UPDATE transactions SET next_attempt_at = now() + make_interval(secs => $2)
         WHERE id IN (
             SELECT id FROM transactions
             WHERE status = $3 AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING {COLUMNS}"
    ))
    .bind(limit)
    .bind(requeue_after.as_secs_f64())
    .bind(status.as_str())
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Transaction::try_from).collect()
}

/// Transactions in `submitting`/`submitted` not updated for `older_than`: candidates for
/// reconciliation (a crashed processor, a callback that never came).
pub async fn stuck_in_flight(
    pool: &PgPool,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<Transaction>, DbError> {
    let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transactions
         WHERE status IN ('submitting', 'submitted') AND updated_at < now() - make_interval(secs => $1)
         ORDER BY updated_at LIMIT $2"
    ))
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Transaction::try_from).collect()
}

/// Scheduling bookkeeping on a transaction that stays in its state: when it is next looked
/// at (`None`: not again until someone acts) and, optionally, the last error. Not a state
/// change, so no version bump; written only if the row still has `version`.
pub async fn reschedule(
    pool: &PgPool,
    id: TransactionId,
    version: i64,
    at: Option<DateTime<Utc>>,
    failure: Option<&Failure>,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE transactions SET next_attempt_at = $3,
             failure_code = COALESCE($4, failure_code), failure_message = COALESCE($5, failure_message)
         WHERE id = $1 AND version = $2",
    )
    .bind(id.as_uuid())
    .bind(version)
    .bind(at)
    .bind(failure.map(|f| f.code.as_str()))
    .bind(failure.map(|f| f.message.as_str()))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Notes that a stuck transaction was looked at (the provider says it is still executing),
/// so reconciliation does not ask again at every scan. Not a state change: no version bump.
pub async fn touch(pool: &PgPool, id: TransactionId, version: i64) -> Result<bool, DbError> {
    let done =
        sqlx::query("UPDATE transactions SET updated_at = now() WHERE id = $1 AND version = $2")
            .bind(id.as_uuid())
            .bind(version)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// How many transactions wait for a retry (a gauge for metrics).
pub async fn retry_queue_depth<'e>(exec: impl PgExecutor<'e>) -> Result<i64, DbError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM transactions WHERE status = 'retry_scheduled'")
            .fetch_one(exec)
            .await?,
    )
}

const COLUMNS: &str = "id, merchant_id, kind, amount, currency, customer_reference, gateway, status, version, attempts,
    next_attempt_at, provider_reference, failure_code, failure_message, callback_url, metadata, created_at, updated_at,
    routed_gateway, ambiguous_since, next_action_url";

/// Any merchant's transaction, for the services (never for a merchant-facing read).
pub async fn get<'e>(
    exec: impl PgExecutor<'e>,
    id: TransactionId,
) -> Result<Option<Transaction>, DbError> {
    let row: Option<TransactionRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM transactions WHERE id = $1"))
            .bind(id.as_uuid())
            .fetch_optional(exec)
            .await?;
    row.map(Transaction::try_from).transpose()
}

/// [`get`] for several transactions in one round trip ([`super::coalesce`]): one answer per
/// id, in order (`None`: no such transaction).
pub async fn get_all<'e>(
    exec: impl PgExecutor<'e>,
    ids: &[TransactionId],
) -> Result<Vec<Option<Transaction>>, DbError> {
    let wanted: Vec<uuid::Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transactions WHERE id = ANY($1)"
    ))
    .bind(&wanted)
    .fetch_all(exec)
    .await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let transaction = Transaction::try_from(row)?;
        found.insert(transaction.id, transaction);
    }
    Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
}

/// Any merchant's transaction with the gateways its merchant enabled (`None`: every
/// gateway), in one read: what the payment processor needs to route an attempt, one round
/// trip per attempt fewer than reading the merchant after.
pub async fn get_with_enabled_gateways<'e>(
    exec: impl PgExecutor<'e>,
    id: TransactionId,
) -> Result<Option<(Transaction, Option<Vec<GatewayName>>)>, DbError> {
    Ok(get_all_with_enabled_gateways(exec, &[id])
        .await?
        .pop()
        .flatten())
}

/// [`get_with_enabled_gateways`] for several transactions in one round trip
/// ([`super::coalesce`]): one answer per id, in order (`None`: no such transaction).
pub async fn get_all_with_enabled_gateways<'e>(
    exec: impl PgExecutor<'e>,
    ids: &[TransactionId],
) -> Result<Vec<Option<(Transaction, Option<Vec<GatewayName>>)>>, DbError> {
    let wanted: Vec<uuid::Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let rows: Vec<WithGateways> = sqlx::query_as(&GET_ALL_WITH_ENABLED_GATEWAYS)
        .bind(&wanted)
        .fetch_all(exec)
        .await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let enabled = super::merchants::parse_gateways(row.enabled_gateways)?;
        let transaction = Transaction::try_from(row.transaction)?;
        found.insert(transaction.id, (transaction, enabled));
    }
    Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
}

static GET_ALL_WITH_ENABLED_GATEWAYS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS},
            (SELECT m.enabled_gateways FROM merchants m WHERE m.id = t.merchant_id) AS enabled_gateways
         FROM transactions t WHERE t.id = ANY($1)"
    )
});

#[derive(sqlx::FromRow)]
struct WithGateways {
    #[sqlx(flatten)]
    transaction: TransactionRow,
    enabled_gateways: Option<Vec<String>>,
}

/// A transaction as its merchant may see it: another merchant's id is simply not found.
pub async fn get_for_merchant<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    id: TransactionId,
) -> Result<Option<Transaction>, DbError> {
    let row: Option<TransactionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transactions WHERE id = $1 AND merchant_id = $2"
    ))
    .bind(id.as_uuid())
    .bind(merchant.as_uuid())
    .fetch_optional(exec)
    .await?;
    row.map(Transaction::try_from).transpose()
}

/// One page of a merchant's transactions, newest first.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery {
    pub status: Option<TransactionStatus>,
    /// Page size; callers clamp it (the API allows 1..=100).
    pub limit: i64,
    /// Keyset cursor: return transactions older than this one (Stripe's `starting_after`).
    pub starting_after: Option<TransactionId>,
}

pub async fn list<'e>(
    exec: impl PgExecutor<'e>,
    merchant: MerchantId,
    query: ListQuery,
) -> Result<Vec<Transaction>, DbError> {
    let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transactions
         WHERE merchant_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(merchant.as_uuid())
    .bind(query.status.map(TransactionStatus::as_str))
    .bind(query.starting_after.map(|id| id.as_uuid()))
    .bind(query.limit)
    .fetch_all(exec)
    .await?;
    rows.into_iter().map(Transaction::try_from).collect()
}

/// The console's search: every filter optional, one merchant's or (operator) everyone's,
/// newest first, keyset-paged on the id (UUIDv7, so id order is creation order).
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// `None`: every merchant (operators only; the console decides who may).
    pub merchant: Option<MerchantId>,
    pub status: Option<TransactionStatus>,
    pub kind: Option<TransactionKind>,
    /// The gateway the payment was routed to (or named by the merchant).
    pub gateway: Option<String>,
    pub created_from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub created_before: Option<DateTime<Utc>>,
    /// The merchant's customer reference, exactly.
    pub customer: Option<String>,
    /// Page size; the caller bounds it.
    pub limit: i64,
    pub starting_after: Option<TransactionId>,
}

pub async fn search<'e>(
    exec: impl PgExecutor<'e>,
    query: &SearchQuery,
) -> Result<Vec<Transaction>, DbError> {
    let rows: Vec<TransactionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM transactions
         WHERE ($1::uuid IS NULL OR merchant_id = $1)
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR kind = $3)
           AND ($4::text IS NULL OR routed_gateway = $4 OR (routed_gateway IS NULL AND gateway = $4))
           AND ($5::timestamptz IS NULL OR created_at >= $5)
           AND ($6::timestamptz IS NULL OR created_at < $6)
           AND ($7::text IS NULL OR customer_reference = $7)
           AND ($8::uuid IS NULL OR id < $8)
         ORDER BY id DESC LIMIT $9"
    ))
    .bind(query.merchant.map(|m| m.as_uuid()))
    .bind(query.status.map(TransactionStatus::as_str))
    .bind(query.kind.map(TransactionKind::as_str))
    .bind(query.gateway.as_deref())
    .bind(query.created_from)
    .bind(query.created_before)
    .bind(query.customer.as_deref())
    .bind(query.starting_after.map(|id| id.as_uuid()))
    .bind(query.limit)
    .fetch_all(exec)
    .await?;
    rows.into_iter().map(Transaction::try_from).collect()
}

/// Forgets idempotency keys past their retention. Returns how many were removed.
pub async fn purge_idempotency_keys(pool: &PgPool, retention: Duration) -> Result<u64, DbError> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[derive(sqlx::FromRow)]
struct TransactionRow {
    id: uuid::Uuid,
    merchant_id: uuid::Uuid,
    kind: String,
    amount: i64,
    currency: String,
    customer_reference: String,
    gateway: Option<String>,
    status: String,
    version: i64,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    provider_reference: Option<String>,
    failure_code: Option<String>,
    failure_message: Option<String>,
    callback_url: Option<String>,
    metadata: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    routed_gateway: Option<String>,
    ambiguous_since: Option<DateTime<Utc>>,
    next_action_url: Option<String>,
}

impl TryFrom<TransactionRow> for Transaction {
    type Error = DbError;
    fn try_from(row: TransactionRow) -> Result<Self, DbError> {
        let corrupt = |detail: String| DbError::Corrupt {
            table: "transactions",
            detail,
        };
        Ok(Transaction {
            id: TransactionId::from_uuid(row.id),
            merchant_id: MerchantId::from_uuid(row.merchant_id),
            kind: row.kind.parse().map_err(|e| corrupt(format!("{e}")))?,
            money: Money::from_parts(row.amount, &row.currency)
                .map_err(|e| corrupt(format!("{e}")))?,
            customer: CustomerReference::parse(&row.customer_reference)
                .map_err(|e| corrupt(format!("{e}")))?,
            gateway: row
                .gateway
                .as_deref()
                .map(GatewayName::parse)
                .transpose()
                .map_err(|e| corrupt(format!("{e}")))?,
            routed_gateway: row
                .routed_gateway
                .as_deref()
                .map(GatewayName::parse)
                .transpose()
                .map_err(|e| corrupt(format!("{e}")))?,
            status: row.status.parse().map_err(|e| corrupt(format!("{e}")))?,
            version: row.version,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            ambiguous_since: row.ambiguous_since,
            next_action_url: row.next_action_url,
            provider_reference: row.provider_reference,
            failure: row.failure_code.map(|code| Failure {
                code,
                message: row.failure_message.unwrap_or_default(),
            }),
            callback_url: row.callback_url,
            metadata: row.metadata,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}
