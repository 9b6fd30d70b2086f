//! The durable side of retries: due `retry_scheduled` transactions are re-enqueued from
//! Postgres (not from an in-memory timer), so a restart loses none; transactions stuck
//! mid-flight are reconciled.

use std::sync::Arc;
use std::time::Duration;

use paygate_core::announce;
use paygate_core::db::{outbox, transactions};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::attempt::Engine;

#[derive(Debug, Clone, Copy)]
pub struct SchedulerSettings {
    pub poll: Duration,
    pub batch: i64,
    /// A re-enqueued transaction not picked up within this long is enqueued again.
    pub requeue_after: Duration,
    pub stuck_after: Duration,
}

pub async fn run(
    pool: PgPool,
    engine: Arc<Engine>,
    settings: SchedulerSettings,
    shutdown: CancellationToken,
) {
    tracing::info!(
        poll_ms = settings.poll.as_millis() as u64,
        "retry scheduler started"
    );
    let mut tick = tokio::time::interval(settings.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(error) = enqueue_due(&pool, &settings).await {
            tracing::warn!(%error, "retry scheduler round failed; retrying next tick");
        }
        if let Err(error) = reconcile_stuck(&pool, &engine, &settings).await {
            tracing::warn!(%error, "reconciliation round failed; retrying next tick");
        }
        rounds += 1;
        if rounds % 10 == 1 {
            if let Ok(depth) = transactions::retry_queue_depth(&pool).await {
                metrics::gauge!("paygate_processor_retry_queue_depth").set(depth as f64);
            }
        }
    }
    tracing::info!("retry scheduler stopped");
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
    if !due.is_empty() {
        outbox::committed();
        tracing::debug!(count = due.len(), "re-enqueued due retries");
    }
    Ok(due.len())
}

async fn reconcile_stuck(
    pool: &PgPool,
    engine: &Engine,
    settings: &SchedulerSettings,
) -> Result<(), paygate_core::db::DbError> {
    for tx in transactions::stuck_in_flight(pool, settings.stuck_after, settings.batch).await? {
        match engine.reconcile(tx.id).await {
            Ok(outcome) => tracing::info!(id = %tx.id, ?outcome, "reconciled a stuck transaction"),
            Err(error) => tracing::warn!(id = %tx.id, %error, "reconciliation failed; will retry"),
        }
    }
    Ok(())
}
