//! Admission control: while the pipeline is far behind, new payments are refused with a
//! `503` and a `Retry-After`, before anything is written (docs/ARCHITECTURE.md, change 29).
//!
//! Past the machine's pace the API, which is cheap, accepts payments faster than the workers
//! finish them; the difference waits in Kafka and every payment, the merchant's and everyone
//! else's, takes longer. Refusing new work while the workers' messages wait longer than
//! `api.shed_after_wait_ms` keeps that queue bounded, and tells the merchant at once instead
//! of by a webhook many seconds late. The wait (each worker kind's longest, added: a payment
//! queues at each in turn) comes from the workers themselves
//! ([`paygate_core::pipeline_wait`]), read from Redis every [`SAMPLE_EVERY`], and creates are
//! refused once it has stayed past the bound for [`SUSTAIN`]; only creates of
//! deposits and withdrawals are refused. Reads, refunds, provider callbacks (which finish
//! payments already taken, and so shorten the queue) and everything else are served as usual.
//! Without a reading (Redis down, no worker publishing) everything is admitted: this is a
//! protection, not a dependency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paygate_core::pipeline_wait;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::error::HttpError;

/// How often the API reads the workers' waits.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// The longest `Retry-After` given: a backlog drains in seconds once creates stop (a restarted
/// worker's, say), and a client told to wait longer would idle after it has.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long the wait must stay past the bound before creates are refused: a message or two
/// that waited out a consumer group's join or rebalance (8 s on tansu when a group starts)
/// pass at once and leave nothing behind, while a pipeline falling behind stays past it.
pub const SUSTAIN: Duration = Duration::from_secs(1);

/// The decision the sampler keeps and every create reads.
#[derive(Debug)]
pub struct Admission {
    /// `api.shed_after_wait_ms`; zero admits everything.
    bound: Duration,
    /// The `Retry-After` to answer with, in ms, while refusing; 0 while admitting.
    refusing_ms: AtomicU64,
}

impl Admission {
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            refusing_ms: AtomicU64::new(0),
        }
    }

    /// Admits a new payment, or refuses it while the pipeline is too far behind.
    pub fn admit(&self) -> Result<(), HttpError> {
        match self.refusing_ms.load(Ordering::Relaxed) {
            0 => Ok(()),
            ms => {
                metrics::counter!("paygate_api_shed_total").increment(1);
                Err(HttpError::overloaded(Duration::from_millis(ms)))
            }
        }
    }

    fn decide(&self, refuse: Option<Duration>) {
        let ms = refuse.map_or(0, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.refusing_ms.store(ms, Ordering::Relaxed);
    }
}

/// The sampler's state: since when the wait has been past the bound.
#[derive(Debug)]
pub struct Shedder {
    bound: Duration,
    over_since: Option<Instant>,
}

impl Shedder {
    pub fn new(bound: Duration) -> Self {
        Self {
            bound,
            over_since: None,
        }
    }

    /// Takes a reading at `now`: the `Retry-After` to refuse creates with, once the wait has
    /// been past the bound for [`SUSTAIN`]; `None` (admit) otherwise. One reading at or under
    /// the bound admits again at once.
    pub fn observe(&mut self, wait: Duration, now: Instant) -> Option<Duration> {
        let Some(delay) = retry_after(self.bound, wait) else {
            self.over_since = None;
            return None;
        };
        let since = *self.over_since.get_or_insert(now);
        (now.saturating_duration_since(since) >= SUSTAIN).then_some(delay)
    }
}

/// How long a refused client should wait: `None` at or below the bound or when it is zero;
/// otherwise about how far past it the wait is, between 1 s and [`MAX_RETRY_AFTER`].
pub fn retry_after(bound: Duration, wait: Duration) -> Option<Duration> {
    if bound.is_zero() || wait <= bound {
        return None;
    }
    let over = wait.saturating_sub(bound);
    Some(over.clamp(Duration::from_secs(1), MAX_RETRY_AFTER))
}

/// Reads the workers' waits every [`SAMPLE_EVERY`] until `shutdown` and keeps `admission`'s
/// decision ([`Shedder`]). A failed read admits everything until a read succeeds.
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
        let mut shedder = Shedder::new(admission.bound);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let wait = match pipeline_wait::current(&mut redis, &prefix).await {
                Ok(reading) => {
                    failing = false;
                    reading.wait
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "could not read the pipeline's wait; admitting every payment until it can");
                    }
                    failing = true;
                    Duration::ZERO
                }
            };
            metrics::gauge!("paygate_api_pipeline_wait_seconds").set(wait.as_secs_f64());
            admission.decide(shedder.observe(wait, Instant::now()));
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
    fn creates_are_refused_only_once_the_wait_has_stayed_past_the_bound() {
        let mut shedder = Shedder::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let over = Duration::from_secs(8);
        assert_eq!(shedder.observe(Duration::from_secs(2), at(0)), None);
        // One straggler from a rebalance: past the bound for less than SUSTAIN, then gone.
        assert_eq!(shedder.observe(over, at(250)), None);
        assert_eq!(shedder.observe(over, at(500)), None);
        assert_eq!(shedder.observe(Duration::from_millis(40), at(750)), None);
        assert_eq!(
            shedder.observe(over, at(1_000)),
            None,
            "the clock starts again"
        );
        // Falling behind: past the bound for a second and more.
        assert_eq!(shedder.observe(over, at(1_500)), None);
        assert_eq!(
            shedder.observe(over, at(2_000)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            shedder.observe(over, at(2_250)),
            Some(Duration::from_secs(3))
        );
        // One reading under the bound admits again.
        assert_eq!(shedder.observe(Duration::from_secs(5), at(2_500)), None);
    }

    #[test]
    fn the_admission_answers_with_the_decision_it_was_given() {
        let admission = Admission::new(Duration::from_secs(5));
        assert!(admission.admit().is_ok());
        admission.decide(Some(Duration::from_secs(3)));
        let refused = admission
            .admit()
            .err()
            .map(|e| (e.status.as_u16(), e.code, e.retry_after));
        assert_eq!(
            refused,
            Some((503, "overloaded", Some(Duration::from_secs(3))))
        );
        admission.decide(None);
        assert!(admission.admit().is_ok());
    }
}
