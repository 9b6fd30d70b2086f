//! Settling one authenticated callback in Postgres: the decision, the version-checked
//! update, the callback log row and the completed event, all in ONE database transaction,
//! which in the common case is ONE statement (data-modifying CTEs): the snapshot load and
//! that statement are the two round trips of a first delivery.
//!
//! The Redis lock (taken by the handler) keeps two workers from doing this at once for one
//! transaction; it is not what keeps the data right. What does:
//! - `UPDATE … WHERE version = $expected`: a writer holding a stale snapshot (a lock holder
//!   paused past its lease) changes nothing and decides again on a fresh load;
//! - the unique `(gateway, provider_event_id)` in `callback_log`: a second delivery of the
//!   same event, even one racing the first, finds it logged and does nothing;
//! - the outbox row written in the same commit: the completed event cannot be lost between
//!   the commit and the publish, whatever process dies when.

use chrono::{DateTime, Utc};
use paygate_core::announce;
use paygate_core::bus::trace::TraceParent;
use paygate_core::db::{transactions, DbError};
use paygate_core::domain::{GatewayName, Transaction, TransactionId, TransactionUpdate};
use paygate_gateways::{CallbackOutcome, ReportedStatus};
use sqlx::PgPool;

use crate::callback_log::{self, Entry, NewEntry, Written};
use crate::decide::{decide, target_status, Decision, Outcome};

/// How many times a callback is re-decided on a fresh load after losing a version race
/// before the message is retried later (each loss means another writer made progress).
pub const MAX_STALE_ATTEMPTS: usize = 8;

/// An authenticated, parsed callback, ready to settle.
#[derive(Debug, Clone)]
pub struct ReceivedCallback {
    /// The gateway it came through (`/callbacks/{gateway}`).
    pub gateway: GatewayName,
    pub outcome: CallbackOutcome,
    pub received_at: DateTime<Utc>,
    /// Trace context to carry onto the completed event.
    pub traceparent: Option<TraceParent>,
    /// For an unsigned provider's callback: why the provider's own status answer
    /// contradicts it. Such a callback is recorded and flagged for review, never applied.
    pub contradicted: Option<String>,
}

/// What settling did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub outcome: Outcome,
    pub needs_review: bool,
    /// Why it was not applied (for a late, conflicting or mismatched callback).
    pub detail: Option<String>,
    /// The transaction as it stands afterwards.
    pub transaction: Transaction,
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// No such transaction: the callback can never be applied (dead-lettered).
    #[error("unknown transaction {0}")]
    UnknownTransaction(TransactionId),
    /// Lost the version race this many times in a row: try the message again later.
    #[error("transaction {id} changed under us {attempts} times in a row")]
    Contended { id: TransactionId, attempts: usize },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Loads the transaction and settles the callback against it, reloading and deciding again
/// whenever another writer got there first.
pub async fn settle(pool: &PgPool, callback: &ReceivedCallback) -> Result<Settled, SettleError> {
    let id = callback.outcome.transaction_id;
    for _ in 0..MAX_STALE_ATTEMPTS {
        let snapshot = transactions::get(pool, id)
            .await?
            .ok_or(SettleError::UnknownTransaction(id))?;
        if let Some(settled) = settle_against(pool, callback, &snapshot, Utc::now()).await? {
            return Ok(settled);
        }
        metrics::counter!("paygate_callbacks_stale_snapshot_total").increment(1);
        tracing::info!(transaction = %id, version = snapshot.version, "transaction changed since it was loaded; deciding again");
    }
    Err(SettleError::Contended {
        id,
        attempts: MAX_STALE_ATTEMPTS,
    })
}

/// One attempt against `snapshot`, in one database statement (its own transaction) in the
/// common case: the decision is made on the snapshot, then the log row, the version-checked
/// update and the completed event are written together only if the row still has the
/// snapshot's version and the event was not logged before. `Ok(None)` means the snapshot is
/// stale (the row's version moved on): nothing was written, and the caller reloads and
/// decides again. This is what refuses a lock holder whose lease ran out.
pub async fn settle_against(
    pool: &PgPool,
    callback: &ReceivedCallback,
    snapshot: &Transaction,
    now: DateTime<Utc>,
) -> Result<Option<Settled>, DbError> {
    let decision = match &callback.contradicted {
        Some(why) => Decision::Record {
            outcome: Outcome::Conflict,
            needs_review: true,
            detail: format!("unsigned callback contradicted by the provider's status: {why}"),
        },
        None => decide(snapshot, &callback.gateway, &callback.outcome, now),
    };
    match decision {
        Decision::Apply(update) => apply_update(pool, &update, callback, snapshot).await,
        Decision::Record {
            outcome,
            needs_review,
            detail,
        } => {
            let entry = log_entry(callback, snapshot, outcome, needs_review, Some(&detail));
            let written = callback_log::insert_if_current(pool, &entry, snapshot.version).await?;
            let recorded = Settled {
                outcome,
                needs_review,
                detail: Some(detail.clone()),
                transaction: snapshot.clone(),
            };
            settled(pool, callback, snapshot, written, recorded).await
        }
    }
}

/// What a settling statement's answer means: stale (`None`), a repeat of a logged event
/// (looked at on the slow path), or `done`.
async fn settled(
    pool: &PgPool,
    callback: &ReceivedCallback,
    snapshot: &Transaction,
    written: Written,
    done: Settled,
) -> Result<Option<Settled>, DbError> {
    match written {
        Written::Stale => Ok(None),
        Written::AlreadyLogged => duplicate(pool, callback, snapshot).await,
        Written::Logged => Ok(Some(done)),
    }
}

/// A repeat of a logged event (rare: a redelivered message or a provider's retry): the
/// logged row is read and, when the content differs, flagged (one conditional statement, so
/// no transaction is needed around the two). `None` when the row is gone meanwhile (nothing
/// deletes it; the caller then simply decides again).
async fn duplicate(
    pool: &PgPool,
    callback: &ReceivedCallback,
    snapshot: &Transaction,
) -> Result<Option<Settled>, DbError> {
    let cb = &callback.outcome;
    let Some(existing) = callback_log::find(pool, &callback.gateway, &cb.provider_event_id).await?
    else {
        return Ok(None);
    };
    let needs_review = check_duplicate(pool, &existing, callback).await?;
    Ok(Some(Settled {
        outcome: Outcome::Duplicate,
        needs_review,
        detail: Some(format!(
            "event already settled as {} (log row {})",
            existing.outcome, existing.id
        )),
        transaction: snapshot.clone(),
    }))
}

/// The callback log row for this event and the decision taken on `snapshot`.
fn log_entry<'a>(
    callback: &'a ReceivedCallback,
    snapshot: &Transaction,
    outcome: Outcome,
    needs_review: bool,
    detail: Option<&'a str>,
) -> NewEntry<'a> {
    let cb = &callback.outcome;
    let failure_code = match &cb.status {
        ReportedStatus::Failed { code, .. } => Some(code.as_str()),
        ReportedStatus::Succeeded => None,
    };
    NewEntry {
        gateway: &callback.gateway,
        provider_event_id: &cb.provider_event_id,
        transaction_id: snapshot.id,
        reported_status: target_status(&cb.status),
        failure_code,
        provider_reference: Some(cb.provider_reference.as_str()).filter(|r| !r.is_empty()),
        reported_money: cb.money,
        outcome,
        needs_review,
        detail,
        status_before: snapshot.status,
        version_before: snapshot.version,
        received_at: callback.received_at,
    }
}

/// Logs the event and applies the version-checked state change with its announcement (when
/// terminal) in one statement; `None` when the version moved meanwhile.
async fn apply_update(
    pool: &PgPool,
    update: &TransactionUpdate,
    callback: &ReceivedCallback,
    snapshot: &Transaction,
) -> Result<Option<Settled>, DbError> {
    let next = &update.next;
    let entry = log_entry(callback, snapshot, Outcome::Applied, false, None);
    let announcement = next
        .status
        .is_terminal()
        .then(|| announce::completed(next, callback.traceparent));
    let written =
        callback_log::insert_and_apply(pool, &entry, update, announcement.as_ref()).await?;
    let applied = Settled {
        outcome: Outcome::Applied,
        needs_review: false,
        detail: None,
        transaction: next.clone(),
    };
    settled(pool, callback, snapshot, written, applied).await
}

/// A repeat of a logged event. The provider signed it, so the same event id with other
/// content is a provider bug worth a person's attention: the logged row is flagged.
async fn check_duplicate(
    pool: &PgPool,
    existing: &Entry,
    callback: &ReceivedCallback,
) -> Result<bool, DbError> {
    let cb = &callback.outcome;
    let same = existing.transaction_id == cb.transaction_id
        && existing.reported_status == target_status(&cb.status).as_str()
        && existing.reported_amount == cb.money.amount.minor_units()
        && existing.reported_currency == cb.money.currency.code();
    if same {
        return Ok(existing.needs_review);
    }
    tracing::warn!(
        gateway = %callback.gateway,
        provider_event_id = %cb.provider_event_id,
        log_row = existing.id,
        "provider event id reused with different content; flagged for review"
    );
    callback_log::flag_for_review(
        pool,
        existing.id,
        "the same event id was delivered again with different content",
    )
    .await?;
    Ok(true)
}
