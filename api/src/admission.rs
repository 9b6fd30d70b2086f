//! Admission control: while the pipeline is far behind, new payments are refused with a
//! `503` and a `Retry-After`, before anything is written (docs/ARCHITECTURE.md, change 29).
//!
//! Past the machine's pace the API, which is cheap, accepts payments faster than the workers
//! finish them; the difference waits in Kafka and every payment, the merchant's and everyone
//! else's, takes longer. Refusing new work while the workers' messages wait longer than
//! `api.shed_after_wait_ms` keeps that queue bounded, and tells the merchant at once instead
//! of by a webhook many seconds late. The wait (each worker kind's longest, added: a payment
//! queues at each in turn) comes from the workers themselves
//! ([`paygate_core::pipeline_wait`]), read from Redis every [`SAMPLE_EVERY`]; only creates of
//! deposits and withdrawals are refused. Reads, refunds, provider callbacks (which finish
//! payments already taken, and so shorten the queue) and everything else are served as usual.
//! Without a reading (Redis down, no worker publishing) everything is admitted: this is a
//! protection, not a dependency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paygate_core::pipeline_wait;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::error::HttpError;

/// How often the API reads the workers' waits.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// The longest `Retry-After` given: a backlog drains in seconds once creates stop (a restarted
/// worker's, say), and a client told to wait longer would idle after it has.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The bound and the latest reading.
#[derive(Debug)]
pub struct Admission {
    /// `api.shed_after_wait_ms`; zero admits everything.
    bound: Duration,
    wait_ms: AtomicU64,
}

impl Admission {
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            wait_ms: AtomicU64::new(0),
        }
    }

    /// Admits a new payment, or refuses it while the last reading is past the bound.
    pub fn admit(&self) -> Result<(), HttpError> {
        let wait = Duration::from_millis(self.wait_ms.load(Ordering::Relaxed));
        match retry_after(self.bound, wait) {
            None => Ok(()),
            Some(delay) => {
                metrics::counter!("paygate_api_shed_total").increment(1);
                Err(HttpError::overloaded(delay))
            }
        }
    }

    fn set(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.wait_ms.store(ms, Ordering::Relaxed);
        metrics::gauge!("paygate_api_pipeline_wait_seconds").set(wait.as_secs_f64());
    }
}

/// How long a refused client should wait: `None` (admit) at or below the bound or when it is
/// zero; otherwise about how far past it the wait is, between 1 s and [`MAX_RETRY_AFTER`].
pub fn retry_after(bound: Duration, wait: Duration) -> Option<Duration> {
    if bound.is_zero() || wait <= bound {
        return None;
    }
    let over = wait.saturating_sub(bound);
    Some(over.clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
}

/// Reads the workers' waits into `admission` every [`SAMPLE_EVERY`] until `shutdown`. A
/// failed read admits everything until the next one succeeds.
pub fn spawn_sampler(
    admission: Arc<Admission>,
    mut redis: ConnectionManager,
    prefix: String,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if admission.bound.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match pipeline_wait::pipeline_wait(&mut redis, &prefix).await {
                Ok(wait) => {
                    failing = false;
                    admission.set(wait);
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "could not read the pipeline's wait; admitting every payment until it can");
                    }
                    failing = true;
                    admission.set(Duration::ZERO);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_past_the_bound_refuses_and_says_how_long_to_wait() {
        let bound = Duration::from_secs(10);
        assert_eq!(retry_after(bound, Duration::from_secs(3)), None);
        assert_eq!(retry_after(bound, bound), None);
        assert_eq!(
            retry_after(bound, Duration::from_millis(10_200)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_after(bound, Duration::from_secs(13)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(bound, Duration::from_secs(600)),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn a_zero_bound_admits_everything() {
        assert_eq!(retry_after(Duration::ZERO, Duration::from_secs(600)), None);
    }

    #[test]
    fn the_admission_follows_its_latest_reading() {
        let admission = Admission::new(Duration::from_secs(5));
        assert!(admission.admit().is_ok());
        admission.set(Duration::from_secs(8));
        let refused = admission
            .admit()
            .err()
            .map(|e| (e.status.as_u16(), e.retry_after));
        assert_eq!(refused, Some((503, Some(Duration::from_secs(3)))));
        admission.set(Duration::from_secs(1));
        assert!(admission.admit().is_ok());
    }
}
