//! The durable side of retries: due `retry_scheduled` transactions are re-enqueued from
//! Postgres (not from an in-memory timer), so a restart loses none; transactions stuck
//! mid-flight are reconciled, and `unresolved` ones whose next status query is due are
//! asked about ([`crate::reconcile`]).
//!
//! The two run as separate loops on the same cadence, so a long reconciliation pass (many
//! stuck transactions after a crash, each needing a provider status call) never holds up
//! the re-enqueueing of due retries. Both stop at shutdown; a reconciliation pass in
//! progress is abandoned (see [`reconcile_stuck`] for why that is safe).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use paygate_core::announce;
use paygate_core::db::{outbox, refunds, transactions};
use paygate_core::domain::Transaction;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::attempt::Engine;

/// Upper bound on the reconciliation concurrency derived from `processor.concurrency`:
/// reconciliation shares the providers and their breakers' `max_concurrent` with the
/// consumer's workers, so it stays a background job however large the worker pool is.
pub const MAX_RECONCILE_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct SchedulerSettings {
    pub poll: Duration,
    pub batch: i64,
    /// A re-enqueued transaction not picked up within this long is enqueued again.
    pub requeue_after: Duration,
    pub stuck_after: Duration,
    /// Stuck transactions reconciled at once (provider status calls in flight). Derived
    /// from `processor.concurrency`, capped at [`MAX_RECONCILE_CONCURRENCY`]; 0 means 1.
    pub reconcile_concurrency: usize,
}

/// What one reconciliation pass did (for logs and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcilePass {
    /// Stuck transactions the pass found.
    pub found: usize,
    /// Reconciliations that ran to the end (with any outcome, errors included).
    pub finished: usize,
    /// The most reconciliations in flight at once.
    pub max_in_flight: usize,
    /// The pass stopped early because shutdown was requested.
    pub abandoned: bool,
}

/// Runs the due-retry loop and the reconciliation loop until `shutdown`.
pub async fn run(
    pool: PgPool,
    engine: Arc<Engine>,
    settings: SchedulerSettings,
    shutdown: CancellationToken,
) {
    tracing::info!(
        poll_ms = settings.poll.as_millis() as u64,
        reconcile_concurrency = settings.reconcile_concurrency.max(1),
        "retry scheduler started"
    );
    tokio::join!(
        retry_loop(&pool, &settings, &shutdown),
        reconcile_loop(&pool, &engine, &settings, &shutdown),
    );
    tracing::info!("retry scheduler stopped");
}

fn ticker(poll: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

async fn retry_loop(pool: &PgPool, settings: &SchedulerSettings, shutdown: &CancellationToken) {
    let mut tick = ticker(settings.poll);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(error) = enqueue_due(pool, settings).await {
            tracing::warn!(%error, "retry scheduler round failed; retrying next tick");
        }
        rounds += 1;
        if rounds % 10 == 1 {
            if let Ok(depth) = transactions::retry_queue_depth(pool).await {
                metrics::gauge!("paygate_processor_retry_queue_depth").set(depth as f64);
            }
        }
    }
}

async fn reconcile_loop(
    pool: &PgPool,
    engine: &Engine,
    settings: &SchedulerSettings,
    shutdown: &CancellationToken,
) {
    let mut tick = ticker(settings.poll);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match check_unresolved(pool, engine, settings, shutdown).await {
            Ok(pass) if pass.found > 0 => {
                tracing::info!(
                    found = pass.found,
                    finished = pass.finished,
                    "unresolved transactions asked about"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "unresolved check round failed; retrying next tick")
            }
        }
        match expire_actions(pool, engine, settings, shutdown).await {
            Ok(pass) if pass.found > 0 => {
                tracing::info!(
                    found = pass.found,
                    finished = pass.finished,
                    "expired customer steps checked"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "action expiry round failed; retrying next tick")
            }
        }
        match reconcile_stuck(pool, engine, settings, shutdown).await {
            Ok(pass) if pass.abandoned => {
                tracing::info!(
                    found = pass.found,
                    finished = pass.finished,
                    "reconciliation pass abandoned at shutdown"
                );
            }
            Ok(pass) if pass.found > 0 => {
                tracing::info!(
                    found = pass.found,
                    max_in_flight = pass.max_in_flight,
                    "reconciliation pass done"
                );
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "reconciliation round failed; retrying next tick")
            }
        }
    }
}

/// Publishes a pending event (through the outbox) for every due retry.
pub async fn enqueue_due(
    pool: &PgPool,
    settings: &SchedulerSettings,
) -> Result<usize, paygate_core::db::DbError> {
    let due = transactions::take_due_retries(pool, settings.batch, settings.requeue_after).await?;
    for tx in &due {
        outbox::enqueue(pool, &announce::pending(tx, None)).await?;
    }
    // Pending refunds whose next call is due (a retry, or one whose announcement was lost).
    let refunds_due = refunds::take_due(pool, settings.batch, settings.requeue_after).await?;
    for refund in &refunds_due {
        outbox::enqueue(pool, &announce::refund_pending(refund, None)).await?;
    }
    if !due.is_empty() || !refunds_due.is_empty() {
        outbox::committed();
        tracing::debug!(
            count = due.len(),
            refunds = refunds_due.len(),
            "re-enqueued due retries"
        );
    }
    Ok(due.len() + refunds_due.len())
}

/// One reconciliation pass: up to `settings.batch` transactions stuck in
/// `submitting`/`submitted` are reconciled ([`Engine::reconcile`]), at most
/// `settings.reconcile_concurrency` at once.
///
/// When `shutdown` is cancelled no further reconciliation starts and the pass returns at
/// once with `abandoned` set, dropping the ones in flight. Dropping a reconciliation at any
/// await point is safe:
/// - it only *reads* the provider (a status query; it never submits a payment);
/// - each of its writes is a single version-checked statement (`transactions::apply`,
///   `apply_and_announce` — the state change and its outbox row in one statement —, and
///   `touch`), so a write either happened entirely or not at all, and one based on a stale
///   read cannot apply;
/// - a dropped breaker permit frees its slot ([`paygate_gateways::breaker`]);
/// - the transaction's Redis lease is not released but expires after `lock_ttl`; until
///   then the next reconciliation skips it ("in progress elsewhere") and tries again later.
///
/// The transaction stays stuck and is reconciled again by a later pass or processor.
pub async fn reconcile_stuck(
    pool: &PgPool,
    engine: &Engine,
    settings: &SchedulerSettings,
    shutdown: &CancellationToken,
) -> Result<ReconcilePass, paygate_core::db::DbError> {
    let stuck = transactions::stuck_in_flight(pool, settings.stuck_after, settings.batch);
    due_pass(
        stuck,
        settings,
        shutdown,
        "reconcile a stuck transaction",
        |id| engine.reconcile(id),
    )
    .await
}

/// One pass over `unresolved` transactions whose next status query is due
/// ([`Engine::check_unresolved`]), with the same bounds and shutdown behaviour as
/// [`reconcile_stuck`]. A due row is pushed `requeue_after` forward when taken, so a pass
/// dropped at shutdown leaves it to come due again.
pub async fn check_unresolved(
    pool: &PgPool,
    engine: &Engine,
    settings: &SchedulerSettings,
    shutdown: &CancellationToken,
) -> Result<ReconcilePass, paygate_core::db::DbError> {
    let due = transactions::take_due_checks(pool, settings.batch, settings.requeue_after);
    due_pass(
        due,
        settings,
        shutdown,
        "ask about an unresolved transaction",
        |id| engine.check_unresolved(id),
    )
    .await
}

/// One pass over `requires_action` transactions whose customer's time is up
/// ([`Engine::expire_action`]), bounded and cancel-safe like [`check_unresolved`].
pub async fn expire_actions(
    pool: &PgPool,
    engine: &Engine,
    settings: &SchedulerSettings,
    shutdown: &CancellationToken,
) -> Result<ReconcilePass, paygate_core::db::DbError> {
    let due = transactions::take_due_actions(pool, settings.batch, settings.requeue_after);
    due_pass(due, settings, shutdown, "expire a customer step", |id| {
        engine.expire_action(id)
    })
    .await
}

/// The shape every reconciliation pass shares: take the rows (unless shutdown comes
/// first: abandoned), then run `work` on each within [`bounded_pass`]'s bounds, logging
/// what became of each (`what` names the pass). A failed row is left to the next pass.
async fn due_pass<W, Fut>(
    take: impl std::future::Future<Output = Result<Vec<Transaction>, paygate_core::db::DbError>>,
    settings: &SchedulerSettings,
    shutdown: &CancellationToken,
    what: &'static str,
    work: W,
) -> Result<ReconcilePass, paygate_core::db::DbError>
where
    W: Fn(paygate_core::domain::TransactionId) -> Fut,
    Fut:
        std::future::Future<Output = Result<crate::attempt::Outcome, crate::attempt::ProcessError>>,
{
    let rows = tokio::select! {
        biased;
        _ = shutdown.cancelled() => {
            return Ok(ReconcilePass { abandoned: true, ..ReconcilePass::default() });
        }
        rows = take => rows?,
    };
    let work = &work;
    Ok(bounded_pass(rows, settings, shutdown, |tx| async move {
        match work(tx.id).await {
            Ok(outcome) => tracing::info!(id = %tx.id, ?outcome, pass = what, "handled"),
            Err(error) => tracing::warn!(id = %tx.id, %error, pass = what, "failed; will retry"),
        }
    })
    .await)
}

/// Runs `work` on each transaction, at most `settings.reconcile_concurrency` at once,
/// stopping (abandoned) at shutdown.
async fn bounded_pass<F, Fut>(
    items: Vec<Transaction>,
    settings: &SchedulerSettings,
    shutdown: &CancellationToken,
    work: F,
) -> ReconcilePass
where
    F: Fn(Transaction) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let found = items.len();
    let finished = AtomicUsize::new(0);
    let in_flight = AtomicUsize::new(0);
    let max_in_flight = AtomicUsize::new(0);
    let (finished_ref, in_flight_ref, max_ref, work_ref) =
        (&finished, &in_flight, &max_in_flight, &work);
    let pass = futures::stream::iter(items).for_each_concurrent(
        settings.reconcile_concurrency.max(1),
        |tx| async move {
            if shutdown.is_cancelled() {
                return;
            }
            let now = in_flight_ref.fetch_add(1, Ordering::Relaxed) + 1;
            max_ref.fetch_max(now, Ordering::Relaxed);
            work_ref(tx).await;
            in_flight_ref.fetch_sub(1, Ordering::Relaxed);
            finished_ref.fetch_add(1, Ordering::Relaxed);
        },
    );
    let abandoned = tokio::select! {
        biased;
        _ = shutdown.cancelled() => true,
        _ = pass => false,
    };
    ReconcilePass {
        found,
        finished: finished.load(Ordering::Relaxed),
        max_in_flight: max_in_flight.load(Ordering::Relaxed),
        abandoned,
    }
}
