//! Settling one authenticated callback in Postgres: the decision, the version-checked
//! update, the callback log row and the merchant's webhook event with its deliveries, all in
//! ONE database transaction,
//! which in the common case is ONE statement (data-modifying CTEs): the snapshot load and
//! that statement are the two round trips of a first delivery.
//!
//! The settling statements go through a [`SettleWriter`] (group commit): settlements that
//! arrive while others are being written go in one database transaction per merchant, so a
//! busy merchant's ledger account row is locked and flushed once per batch, not once per
//! callback. Each is answered only after its transaction committed.
//!
//! The Redis lock (taken by the handler) keeps two workers from doing this at once for one
//! transaction; it is not what keeps the data right. What does:
//! - `UPDATE … WHERE version = $expected`: a writer holding a stale snapshot (a lock holder
//!   paused past its lease) changes nothing and decides again on a fresh load;
//! - the unique `(gateway, provider_event_id)` in `callback_log`: a second delivery of the
//!   same event, even one racing the first, finds it logged and does nothing;
//! - the webhook event recorded in the same commit: the merchant's event cannot be lost
//!   between the settlement and the dispatcher, whatever process dies when.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use paygate_core::announce;
use paygate_core::bus::trace::TraceParent;
use paygate_core::db::coalesce::{keyed_reads, Coalescer};
use paygate_core::db::group_commit::{GroupCommit, Write};
use paygate_core::db::webhooks::NewEvent;
use paygate_core::db::{transactions, DbError};
use paygate_core::domain::{GatewayName, Transaction, TransactionId, TransactionUpdate};
use paygate_gateways::{CallbackOutcome, ReportedStatus};
use sqlx::{PgConnection, PgPool};

use crate::callback_log::{self, Entry, NewEntry, Written};
use crate::decide::{decide, target_status, Decision, Outcome};

/// How many times a callback is re-decided on a fresh load after losing a version race
/// before the message is retried later (each loss means another writer made progress).
pub const MAX_STALE_ATTEMPTS: usize = 8;

/// Writes settling statements by group commit, and reads the snapshots they are decided on
/// coalesced ([`paygate_core::db::coalesce`]: the snapshot reads of concurrent callbacks go as
/// one statement). Clones share its tasks.
#[derive(Clone)]
pub struct SettleWriter {
    commits: GroupCommit<Written>,
    snapshots: Coalescer<TransactionId, Option<Transaction>>,
}

impl SettleWriter {
    /// Starts the writer and the reader; `max_batch` bounds both (`callbacks.settle_batch_max`).
    pub fn start(pool: PgPool, max_batch: usize) -> Self {
        let snapshots = Coalescer::start(
            "settle_snapshots",
            max_batch,
            keyed_reads(
                pool.clone(),
                |pool, ids: Vec<TransactionId>| async move { transactions::get_all(&pool, &ids).await },
                |pool, id| async move { transactions::get(&pool, id).await },
            ),
        );
        Self {
            commits: GroupCommit::start(pool, max_batch),
            snapshots,
        }
    }

    /// The pool, for reads and for writes that should not wait for a round.
    pub fn pool(&self) -> &PgPool {
        self.commits.pool()
    }

    /// Writes `write` with whatever else is waiting, and answers once it is committed.
    pub async fn write(&self, write: Write<Written>) -> Result<Written, DbError> {
        self.commits.write(write).await
    }

    /// The transaction as it stands now (`None`: unknown).
    pub async fn snapshot(&self, id: TransactionId) -> Result<Option<Transaction>, DbError> {
        self.snapshots.call(id).await
    }
}

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
pub async fn settle(
    writer: &SettleWriter,
    callback: &ReceivedCallback,
) -> Result<Settled, SettleError> {
    let id = callback.outcome.transaction_id;
    for _ in 0..MAX_STALE_ATTEMPTS {
        let snapshot = writer
            .snapshot(id)
            .await?
            .ok_or(SettleError::UnknownTransaction(id))?;
        if let Some(settled) = settle_against(writer, callback, &snapshot, Utc::now()).await? {
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

/// One attempt against `snapshot`, in one database statement (in its group's transaction) in
/// the common case: the decision is made on the snapshot, then the log row, the version-checked
/// update and the completed event are written together only if the row still has the
/// snapshot's version and the event was not logged before. `Ok(None)` means the snapshot is
/// stale (the row's version moved on): nothing was written, and the caller reloads and
/// decides again. This is what refuses a lock holder whose lease ran out.
pub async fn settle_against(
    writer: &SettleWriter,
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
        Decision::Apply(update) => apply_update(writer, update, callback, snapshot).await,
        Decision::Record {
            outcome,
            needs_review,
            detail,
        } => {
            let recorded = Settled {
                outcome,
                needs_review,
                detail: Some(detail.clone()),
                transaction: snapshot.clone(),
            };
            let change = Change::Record {
                outcome,
                needs_review,
                detail,
            };
            let written = writer
                .write(settling_write(callback, snapshot, change))
                .await?;
            settled(writer, callback, snapshot, written, recorded).await
        }
    }
}

/// What a settling write changes.
enum Change {
    /// Logs a decision that changes nothing (late, conflict, mismatch), only if the
    /// transaction still has the snapshot's version.
    Record {
        outcome: Outcome,
        needs_review: bool,
        detail: String,
    },
    /// Logs the event and applies the update, with the merchant's event when terminal.
    Apply {
        update: Box<TransactionUpdate>,
        event: Option<NewEvent>,
    },
}

/// The settling statement as a group-commit write, grouped by the merchant: its ledger
/// account is the row that one merchant's settlements share (the ledger updates no other
/// account row; the gateway's system account is only named in the entries). In the order of
/// the transaction's id.
fn settling_write(
    callback: &ReceivedCallback,
    snapshot: &Transaction,
    change: Change,
) -> Write<Written> {
    let order = snapshot.id.to_string();
    let owned = Arc::new((callback.clone(), snapshot.clone(), change));
    Write {
        group: snapshot.merchant_id.as_uuid(),
        order,
        statement: Box::new(
            move |conn: &mut PgConnection| -> BoxFuture<'_, Result<Written, DbError>> {
                Box::pin(write_change(conn, owned.clone()))
            },
        ),
    }
}

/// Runs a settling write's statement on `conn` (in its group's transaction, or alone).
async fn write_change(
    conn: &mut PgConnection,
    owned: Arc<(ReceivedCallback, Transaction, Change)>,
) -> Result<Written, DbError> {
    let (callback, snapshot, change) = &*owned;
    match change {
        Change::Record {
            outcome,
            needs_review,
            detail,
        } => {
            let entry = log_entry(callback, snapshot, *outcome, *needs_review, Some(detail));
            callback_log::insert_if_current(conn, &entry, snapshot.version).await
        }
        Change::Apply { update, event } => {
            let entry = log_entry(callback, snapshot, Outcome::Applied, false, None);
            callback_log::insert_and_apply(conn, &entry, update, event.as_ref()).await
        }
    }
}

/// What a settling statement's answer means: stale (`None`), a repeat of a logged event
/// (looked at on the slow path), or `done`.
async fn settled(
    writer: &SettleWriter,
    callback: &ReceivedCallback,
    snapshot: &Transaction,
    written: Written,
    done: Settled,
) -> Result<Option<Settled>, DbError> {
    match written {
        Written::Stale => Ok(None),
        Written::AlreadyLogged => duplicate(writer, callback, snapshot).await,
        Written::Logged => Ok(Some(done)),
    }
}

/// A repeat of a logged event (rare: a redelivered message or a provider's retry): the
/// logged row is read and, when the content differs, flagged (one conditional statement, so
/// no transaction is needed around the two). `None` when the row is gone meanwhile (nothing
/// deletes it; the caller then simply decides again).
async fn duplicate(
    writer: &SettleWriter,
    callback: &ReceivedCallback,
    snapshot: &Transaction,
) -> Result<Option<Settled>, DbError> {
    let pool = writer.pool();
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

/// Logs the event and applies the version-checked state change with the merchant's event
/// (when terminal) in one statement; `None` when the version moved meanwhile.
async fn apply_update(
    writer: &SettleWriter,
    update: Box<TransactionUpdate>,
    callback: &ReceivedCallback,
    snapshot: &Transaction,
) -> Result<Option<Settled>, DbError> {
    let applied = Settled {
        outcome: Outcome::Applied,
        needs_review: false,
        detail: None,
        transaction: update.next.clone(),
    };
    let event = if applied.transaction.status.is_terminal() {
        Some(announce::completed(&applied.transaction)?)
    } else {
        None
    };
    let change = Change::Apply { update, event };
    let written = writer
        .write(settling_write(callback, snapshot, change))
        .await?;
    settled(writer, callback, snapshot, written, applied).await
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
