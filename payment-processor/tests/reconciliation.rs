//! Reconciliation of transactions stuck mid-flight (after a processor crash) against real
//! Postgres, Redis and tansu and the sandbox over HTTP: bounded concurrency, prompt
//! shutdown, and due retries not held up by a long pass.
//!
//! No assertion is on elapsed time. Concurrency is observed (the pass's own count of
//! reconciliations in flight, and at the provider: status queries received whose
//! reconciliation had not yet written its outcome); shutdown is observed as work left
//! undone.

use std::sync::Arc;
use std::time::Duration;

use paygate_core::db::transactions;
use paygate_core::domain::{TransactionId, TransactionKind};
use paygate_gateways::GatewayRegistry;
use paygate_payment_processor::attempt::Engine;
use paygate_payment_processor::scheduler::{self, ReconcilePass, SchedulerSettings};
use paygate_payment_processor::PaymentProcessor;
use paygate_sandbox::Knobs;
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod common;
use common::{account, BoxError, TestResult, World};

const JSON: &str = "rc-json";
/// Every provider call (status queries included) takes this long: well under the gateway
/// timeout, long enough that calls started together overlap.
const LATENCY_MS: u64 = 300;

async fn world() -> Result<World, BoxError> {
    let knobs = Knobs {
        latency_min_ms: LATENCY_MS,
        latency_max_ms: LATENCY_MS,
        ..Knobs::default()
    };
    // No settle window: a stuck row the sandbox never saw counts as never executed at once.
    let settings = json!({"timeout_ms": 5_000, "breaker": {}, "status_not_found_after_ms": 1});
    let mut w = World::new(
        "Reconciliation tests",
        knobs,
        &[(JSON, "sandbox-json")],
        settings,
    )
    .await?;
    let p = &mut w.config.processor;
    p.concurrency = 8;
    p.lock_ttl = Duration::from_millis(3_000);
    p.lock_wait = Duration::from_millis(1_000);
    p.max_attempts = 5;
    Ok(w)
}

/// Scheduler settings for driving passes directly: every stuck row inserted by
/// [`World::stuck`] qualifies.
fn settings(reconcile_concurrency: usize) -> SchedulerSettings {
    SchedulerSettings {
        poll: Duration::from_millis(50),
        batch: 100,
        requeue_after: Duration::from_secs(60),
        stuck_after: Duration::from_secs(60),
        reconcile_concurrency,
    }
}

/// What these tests add to the shared [`World`].
impl World {
    async fn engine(&self) -> Result<Arc<Engine>, BoxError> {
        let registry = GatewayRegistry::from_config(&self.config.gateways)?;
        Ok(PaymentProcessor::build(self.config.clone(), registry)
            .await?
            .engine())
    }

    /// `n` transactions left in `submitted` an hour ago by a processor that died: the
    /// provider has no record of them (its status query answers "not found").
    async fn stuck(&self, n: usize) -> Result<Vec<TransactionId>, BoxError> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let tx = self
                .insert(TransactionKind::Deposit, JSON, 1_000 + i as i64)
                .await?;
            sqlx::query(
                "UPDATE transactions SET status = 'submitted', version = version + 1, attempts = 1,
                     routed_gateway = $2, updated_at = now() - interval '1 hour'
                 WHERE id = $1",
            )
            .bind(tx.id.as_uuid())
            .bind(JSON)
            .execute(&self.pool)
            .await?;
            ids.push(tx.id);
        }
        Ok(ids)
    }

    async fn still_submitted(&self) -> Result<usize, BoxError> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM transactions WHERE status = 'submitted'")
                .fetch_one(&self.pool)
                .await?;
        Ok(usize::try_from(n)?)
    }

    async fn status_queries(&self) -> Result<usize, BoxError> {
        let queries = account(&self.stats().await?, JSON).status_queries;
        Ok(usize::try_from(queries)?)
    }

    /// Waits (bounded, as a failure guard only) until the provider has seen `at_least`
    /// status queries.
    async fn wait_for_status_queries(&self, at_least: usize) -> TestResult {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.status_queries().await? < at_least {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("the provider never saw {at_least} status queries").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

fn spawn_pass(
    w: &World,
    engine: &Arc<Engine>,
    settings: SchedulerSettings,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<ReconcilePass, paygate_core::db::DbError>> {
    let (pool, engine, shutdown) = (w.pool.clone(), engine.clone(), shutdown.clone());
    tokio::spawn(
        async move { scheduler::reconcile_stuck(&pool, &engine, &settings, &shutdown).await },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_transactions_are_reconciled_concurrently_up_to_the_limit() -> TestResult {
    const N: usize = 12;
    const LIMIT: usize = 4;
    let w = world().await?;
    let engine = w.engine().await?;
    let ids = w.stuck(N).await?;

    let pass = spawn_pass(&w, &engine, settings(LIMIT), &CancellationToken::new());
    // A sequential pass queries the provider about the next transaction only after writing
    // the previous one's outcome, so it never has more than one query outstanding. Status
    // queries are sampled before outcomes, so the overlap seen is never more than the real one.
    let mut overlap = 0;
    while !pass.is_finished() {
        let queried = w.status_queries().await?;
        let written = N - w.still_submitted().await?;
        overlap = overlap.max(queried.saturating_sub(written));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pass = pass.await??;

    assert_eq!(pass.found, N);
    assert_eq!(pass.finished, N, "every stuck transaction reconciled");
    assert!(!pass.abandoned);
    assert_eq!(
        pass.max_in_flight, LIMIT,
        "the pass fills, and never exceeds, its concurrency limit"
    );
    assert!(
        (2..=LIMIT).contains(&overlap),
        "provider status queries outstanding at once: {overlap} (expected 2..={LIMIT})"
    );
    assert_eq!(w.status_queries().await?, N, "one status query each");
    for id in ids {
        let tx = transactions::get(&w.pool, id)
            .await?
            .ok_or("stuck transaction vanished")?;
        assert_eq!(
            tx.status,
            paygate_core::domain::TransactionStatus::RetryScheduled,
            "{id}: the provider has no record of it, so it is retried"
        );
        assert_eq!(
            tx.failure.as_ref().map(|f| f.code.as_str()),
            Some(paygate_payment_processor::attempt::codes::RETRYABLE)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_pass_stops_promptly_at_shutdown() -> TestResult {
    const N: usize = 16;
    const LIMIT: usize = 2;
    let w = world().await?;
    let engine = w.engine().await?;
    w.stuck(N).await?;

    // Shutdown already requested: the pass does nothing at all.
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let pass = scheduler::reconcile_stuck(&w.pool, &engine, &settings(LIMIT), &cancelled).await?;
    assert!(pass.abandoned);
    assert_eq!((pass.found, pass.finished), (0, 0));
    assert_eq!(w.status_queries().await?, 0);
    assert_eq!(w.still_submitted().await?, N);

    // Shutdown requested once the first provider call is under way.
    let shutdown = CancellationToken::new();
    let task = spawn_pass(&w, &engine, settings(LIMIT), &shutdown);
    w.wait_for_status_queries(1).await?;
    shutdown.cancel();
    let pass = tokio::time::timeout(Duration::from_secs(20), task).await???;
    assert!(pass.abandoned, "{pass:?}");
    assert_eq!(pass.found, N);
    assert!(
        pass.finished + LIMIT < N,
        "the pass stopped early rather than running to the end: {pass:?}"
    );
    // Let any request already on the wire land before counting.
    tokio::time::sleep(Duration::from_millis(LATENCY_MS)).await;
    let queried = w.status_queries().await?;
    assert!(
        queried <= pass.finished + LIMIT,
        "no reconciliation started after the cancel: {queried} queries, {pass:?}"
    );
    // A reconciliation dropped mid-flight may have written its outcome before the drop,
    // never more than LIMIT of them.
    let left = w.still_submitted().await?;
    assert!(left + pass.finished + LIMIT >= N, "{left} left, {pass:?}");

    // What was abandoned is found again by the next pass. The ones dropped mid-flight keep
    // their lease until it expires, and are skipped (left stuck) until then.
    let again = scheduler::reconcile_stuck(
        &w.pool,
        &engine,
        &settings(LIMIT),
        &CancellationToken::new(),
    )
    .await?;
    assert_eq!(again.found, left);
    assert_eq!(again.finished, left);
    assert!(!again.abandoned);
    assert!(w.still_submitted().await? <= LIMIT);
    Ok(())
}

/// A long reconciliation pass (one at a time here, so it lasts N × latency) does not hold
/// up a retry that falls due meanwhile; and stopping the scheduler abandons the pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_falling_due_during_a_long_reconciliation_pass_is_enqueued_at_once() -> TestResult {
    const N: usize = 10;
    let w = world().await?;
    let engine = w.engine().await?;
    w.stuck(N).await?;
    let retry = w.insert(TransactionKind::Deposit, JSON, 77).await?;
    sqlx::query(
        "UPDATE transactions SET status = 'retry_scheduled', version = version + 1, attempts = 1,
             next_attempt_at = now() + interval '1 second'
         WHERE id = $1",
    )
    .bind(retry.id.as_uuid())
    .execute(&w.pool)
    .await?;

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler::run(
        w.pool.clone(),
        engine.clone(),
        settings(1),
        shutdown.clone(),
    ));
    // The insert wrote the first pending message; the scheduler writes the second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE topic = 'transactions.pending' AND message_key = $1",
        )
        .bind(retry.id.to_string())
        .fetch_one(&w.pool)
        .await?;
        if pending >= 2 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the due retry was never re-enqueued".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Counted after the re-enqueue, so at least this many were still stuck at that moment.
    let left = w.still_submitted().await?;
    assert!(
        left > 0,
        "the retry was re-enqueued while the reconciliation pass was still running"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await??;
    tokio::time::sleep(Duration::from_millis(LATENCY_MS)).await;
    let queried = w.status_queries().await?;
    assert!(
        queried < N,
        "stopping the scheduler abandoned the pass: {queried} of {N} queried"
    );
    assert!(w.still_submitted().await? > 0);
    Ok(())
}
