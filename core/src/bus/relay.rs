//! The outbox relay: publishes committed outbox rows to Kafka, then stamps them.
//!
//! Any service may run one (the API does by default; the processors write outbox rows too):
//! rows are claimed with `FOR UPDATE SKIP LOCKED`, so several relays share the work without
//! publishing a row twice. A row is stamped only after the broker acknowledged it, in the
//! same database transaction that claimed it; if the process dies in between, the row is
//! published again by the next relay (at-least-once; consumers are idempotent). While the
//! broker is unreachable, rows simply wait and [`RelayHealth`] reports the relay degraded.
//!
//! A relay is woken by outbox commits in its own process ([`outbox::committed`]) and polls
//! for the rest. It does not use Postgres `NOTIFY`: a notifying commit takes a cluster-wide
//! lock held through its WAL flush, which serialises every such commit and capped the whole
//! pipeline at about one commit per flush (BENCHMARKS.md, docs/ARCHITECTURE.md).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{reset, Producer};
use crate::db::{outbox, DbError};

/// What `/readyz` and metrics read about a relay.
#[derive(Debug, Default)]
pub struct RelayHealth {
    /// False after a round in which the broker refused or timed out.
    broker_ok: AtomicBool,
    published: AtomicI64,
}

impl RelayHealth {
    pub fn broker_ok(&self) -> bool {
        self.broker_ok.load(Ordering::Relaxed)
    }

    /// Rows published since start.
    pub fn published(&self) -> i64 {
        self.published.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    pub batch_size: i64,
    /// Poll interval for rows no commit in this process announced (another process's).
    pub poll_interval: Duration,
    /// Pause after a failed round before trying again.
    pub failure_backoff: Duration,
}

pub struct OutboxRelay {
    pool: PgPool,
    producer: Producer,
    settings: RelaySettings,
    health: Arc<RelayHealth>,
}

impl OutboxRelay {
    pub fn new(pool: PgPool, producer: Producer, settings: RelaySettings) -> Self {
        let health = Arc::new(RelayHealth {
            broker_ok: AtomicBool::new(true),
            published: AtomicI64::new(0),
        });
        Self {
            pool,
            producer,
            settings,
            health,
        }
    }

    pub fn health(&self) -> Arc<RelayHealth> {
        self.health.clone()
    }

    /// Runs until `shutdown`; a row claimed when shutdown comes is either stamped or left
    /// for the next relay, never lost.
    ///
    /// After a round the broker failed, the relay heals the broker side before trying again
    /// (see [`OutboxRelay::recover`]) and backs off exponentially (`failure_backoff`, doubled
    /// per failed round, at most [`MAX_FAILURE_BACKOFF`]).
    ///
    /// Beside it runs the process's reset watch ([`reset::watch`]): a broker that lost its
    /// state, seen by any process, replaces this producer within a second.
    pub async fn run(self, shutdown: CancellationToken) {
        let resets = tokio::spawn(reset::watch(
            self.pool.clone(),
            self.producer.clone(),
            shutdown.child_token(),
        ));
        let mut writes = outbox::watch_commits();
        let mut failures: u32 = 0;
        tracing::info!("outbox relay started");
        loop {
            // Commits announced so far are seen by this round's claim; one announced during
            // the round wakes the next at once (below).
            writes.borrow_and_update();
            let published = match self.publish_batch().await {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(failed_rounds = failures, "outbox relay recovered");
                    }
                    failures = 0;
                    self.health.broker_ok.store(true, Ordering::Relaxed);
                    n
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let broker = matches!(error, RelayError::Broker(_));
                    if broker {
                        self.health.broker_ok.store(false, Ordering::Relaxed);
                    }
                    tracing::warn!(%error, failed_rounds = failures, "outbox relay round failed; rows wait for the next round");
                    if broker {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            () = self.recover(failures) => {}
                        }
                    }
                    let pause = failure_backoff(self.settings.failure_backoff, failures);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            if shutdown.is_cancelled() {
                break;
            }
            // A full batch may have left rows behind: go again. A partial one took every
            // row committed before the round; going again at once would only claim
            // nothing (three round trips for no work, after every burst), so wait for the
            // next commit instead.
            if published >= usize::try_from(self.settings.batch_size).unwrap_or(usize::MAX) {
                continue;
            }
            // Idle: wait for a commit in this process (at once if one came during the
            // round), the poll interval (rows another process left behind), or shutdown.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = writes.changed() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        let _ = resets.await;
        tracing::info!("outbox relay stopped");
    }

    /// Heals what a failed round may have met. Topics the broker lacks are created again
    /// and the sighting recorded ([`reset::recreate_topics`]): the reset watch then replaces
    /// the producer of every process, this one included. A client in a fatal or fenced state
    /// was already replaced by the failed send itself ([`Producer::send`]). What is left is
    /// a client whose sends only ever time out with no sign why: it is replaced every
    /// [`RENEW_AFTER_FAILURES`] failed rounds in a row.
    async fn recover(&self, failures: u32) {
        if let Err(error) =
            reset::recreate_topics(&self.pool, self.producer.config(), "outbox relay").await
        {
            tracing::warn!(%error, "outbox relay: could not check or create topics");
        }
        if failures % RENEW_AFTER_FAILURES != 0 {
            return;
        }
        tracing::warn!(
            failed_rounds = failures,
            "outbox relay: replacing the Kafka producer"
        );
        if let Err(error) = self.producer.renew().await {
            tracing::warn!(%error, "outbox relay: could not create a new Kafka producer");
        }
    }

    /// Publishes one batch; returns how many rows were published.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        let mut db = self.pool.begin().await.map_err(DbError::from)?;
        let rows = outbox::claim_batch(&mut db, self.settings.batch_size).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Send the batch concurrently (the producer batches on the wire; idempotence keeps
        // per-partition order), then stamp only what the broker acknowledged.
        let sends = rows.iter().map(|row| {
            let m = &row.message;
            self.producer.send(m.topic, &m.key, &m.payload, &m.headers)
        });
        let results = join_all(sends).await;
        let mut acked = Vec::with_capacity(rows.len());
        let mut first_error = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(_) => acked.push(row.id),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        outbox::mark_published(&mut db, &acked).await?;
        db.commit().await.map_err(DbError::from)?;
        self.health
            .published
            .fetch_add(acked.len() as i64, Ordering::Relaxed);
        metrics::counter!("paygate_outbox_published_total").increment(acked.len() as u64);
        match first_error {
            Some(error) => Err(RelayError::Broker(error.to_string())),
            None => Ok(acked.len()),
        }
    }
}

/// Failed rounds in a row after which the producer client is replaced even without a sign
/// that the broker lost its state (sends that only ever time out).
pub const RENEW_AFTER_FAILURES: u32 = 3;
/// The longest pause between failed rounds.
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// `base` doubled per failed round after the first, at most [`MAX_FAILURE_BACKOFF`] (and
/// never less than `base`).
fn failure_backoff(base: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    base.saturating_mul(1u32 << doublings)
        .min(MAX_FAILURE_BACKOFF)
        .max(base)
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("broker: {0}")]
    Broker(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        assert_eq!(failure_backoff(base, 1), base);
        assert_eq!(failure_backoff(base, 2), Duration::from_secs(1));
        assert_eq!(failure_backoff(base, 3), Duration::from_secs(2));
        assert_eq!(failure_backoff(base, 40), MAX_FAILURE_BACKOFF);
        assert_eq!(failure_backoff(base, u32::MAX), MAX_FAILURE_BACKOFF);
        // A base above the cap is kept: the caller asked for at least that.
        let slow = Duration::from_secs(20);
        assert_eq!(failure_backoff(slow, 5), slow);
    }
}
