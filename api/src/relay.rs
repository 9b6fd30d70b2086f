//! The outbox relay's lag for `/metrics` and `/readyz`. The relay itself is
//! `paygate_core::bus::relay::OutboxRelay` (woken by this process's commits, plus a poll;
//! batches; rows stamped only after the broker's ack), built by `paygate_core::startup` with
//! the `[outbox]` settings, as in every service.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use paygate_core::db;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often the backlog is measured for `/metrics` and `/readyz`.
const LAG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The last measured backlog (rows waiting), `-1` before the first measurement.
#[derive(Debug)]
pub struct Backlog(AtomicI64);

impl Default for Backlog {
    fn default() -> Self {
        Self(AtomicI64::new(-1))
    }
}

impl Backlog {
    pub fn get(&self) -> Option<i64> {
        let value = self.0.load(Ordering::Relaxed);
        (value >= 0).then_some(value)
    }
}

/// Samples the outbox backlog into gauges until `shutdown`.
pub fn spawn_lag_sampler(
    pool: PgPool,
    backlog: Arc<Backlog>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LAG_SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match db::outbox::backlog(&pool).await {
                Ok((rows, oldest)) => {
                    backlog.0.store(rows, Ordering::Relaxed);
                    let lag = oldest
                        .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    metrics::gauge!("paygate_outbox_backlog").set(rows as f64);
                    metrics::gauge!("paygate_outbox_lag_seconds").set(lag);
                }
                Err(error) => tracing::warn!(%error, "could not measure the outbox backlog"),
            }
        }
    })
}
