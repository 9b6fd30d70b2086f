//! A circuit breaker per gateway instance, with Hystrix semantics.
//!
//! - **Closed**: calls pass. Outcomes are counted in a rolling window of `window` split into
//!   `buckets`. Once the window holds at least `min_requests` calls and at least
//!   `error_threshold_percent` of them failed, the breaker **opens**.
//! - **Open**: every call is rejected at once ([`Rejection::Open`]) for `sleep_window`, so
//!   a struggling provider gets air and our workers do not queue behind its timeouts.
//! - **Half-open**: after the sleep window exactly one call (the probe) is let through;
//!   everyone else is still rejected. Probe succeeds → closed with an empty window; probe
//!   fails (or is cancelled) → open for another sleep window.
//! - At most `max_concurrent` calls are in flight whatever the state
//!   ([`Rejection::Saturated`]), and each call gets `call_timeout`.
//!
//! What counts as a failure: [`GatewayError::Retryable`] and [`GatewayError::Ambiguous`]
//! (timeouts included, the breaker's own call timeout too): both say the provider is not
//! answering properly. [`GatewayError::Permanent`] counts as a **success**: a decline is
//! the provider working as intended, and a burst of declined cards must not cut off a
//! healthy provider. Rejections are not counted at all (they are not calls).
//!
//! The connector does not know about the breaker: the payment processor wraps each call in
//! [`Breaker::call`] and tells a [`BreakerError::Rejected`] (nothing was sent; defer or
//! route elsewhere) from a [`BreakerError::Gateway`] (the provider's answer).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use paygate_core::domain::GatewayName;

use crate::GatewayError;

/// Tunables: `[gateways.<name>.breaker]`, read by the configuration (keys, units and
/// defaults are documented on [`paygate_core::config::BreakerConfig`]).
pub use paygate_core::config::BreakerConfig as BreakerSettings;

/// More buckets than this are not kept (a longer window gets wider buckets).
const MAX_BUCKETS: u32 = 1_000;

/// A monotonic time source, so tests can drive the breaker through every state change.
pub trait Clock: Send + Sync + 'static {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// The breaker's state, for metrics and routing decisions (defined in core, where the
/// console reads what the payment processors publish of it).
pub use paygate_core::gateway_health::BreakerState;

/// Why the breaker refused a call. Nothing was sent to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("circuit open")]
    Open,
    #[error("circuit half-open and its one probe is in flight")]
    ProbeInFlight,
    #[error("too many calls in flight")]
    Saturated,
}

/// The result of [`Breaker::call`] when it is not `Ok`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    /// The breaker refused; the provider was not called. Not a gateway failure: defer the
    /// transaction or route it to another gateway.
    #[error("gateway {gateway} rejected by its circuit breaker: {rejection}")]
    Rejected {
        gateway: GatewayName,
        rejection: Rejection,
    },
    /// The provider was called and this is its (classified) failure. The breaker's own call
    /// timeout appears here as [`GatewayError::Ambiguous`].
    #[error(transparent)]
    Gateway(GatewayError),
}

/// Numbers for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub window_requests: u64,
    pub window_failures: u64,
    pub in_flight: u32,
    /// Calls rejected since start.
    pub rejected_total: u64,
    /// Times the breaker opened since start.
    pub opened_total: u64,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open {
        since: Duration,
    },
    /// The probe is in flight (half-open without a probe does not exist: the first caller
    /// after the sleep window becomes it).
    HalfOpen,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Absolute bucket number (time / bucket width); tells a stale slot from a live one.
    index: u64,
    successes: u64,
    failures: u64,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Bumped on every state change, so a call admitted under an earlier state cannot
    /// affect the current one.
    generation: u64,
    buckets: Vec<Bucket>,
    in_flight: u32,
    rejected_total: u64,
    opened_total: u64,
}

/// One gateway's circuit breaker. Cheap to share (`Arc`); the lock is never held across an
/// await.
pub struct Breaker {
    gateway: GatewayName,
    settings: BreakerSettings,
    bucket_width_ms: u64,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("gateway", &self.gateway)
            .field("state", &self.state())
            .finish()
    }
}

impl Breaker {
    pub fn new(gateway: GatewayName, settings: BreakerSettings) -> Self {
        Self::with_clock(gateway, settings, Arc::new(SystemClock::default()))
    }

    pub fn with_clock(
        gateway: GatewayName,
        settings: BreakerSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let buckets = settings.buckets.clamp(1, MAX_BUCKETS);
        let window_ms = u64::try_from(settings.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let bucket_width_ms = (window_ms / u64::from(buckets)).max(1);
        Self {
            gateway,
            bucket_width_ms,
            clock,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                generation: 0,
                buckets: vec![Bucket::default(); buckets as usize],
                in_flight: 0,
                rejected_total: 0,
                opened_total: 0,
            }),
            settings,
        }
    }

    pub fn gateway(&self) -> &GatewayName {
        &self.gateway
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// Runs `call` if the breaker admits it, under the call timeout, and counts its outcome.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, BreakerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        let permit = self.admit().map_err(|rejection| BreakerError::Rejected {
            gateway: self.gateway.clone(),
            rejection,
        })?;
        let timeout = self.settings.call_timeout;
        let result = match tokio::time::timeout(timeout, call()).await {
            Ok(result) => result,
            Err(_) => Err(GatewayError::Ambiguous {
                reason: format!(
                    "no answer within the breaker's call timeout of {} ms",
                    timeout.as_millis()
                ),
            }),
        };
        permit.finish(counts_as_failure(&result));
        result.map_err(BreakerError::Gateway)
    }

    /// The current state. An open breaker whose sleep window has passed still reads
    /// `Open` until a call arrives to become the probe.
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Whether a call made now would be admitted (without admitting it). For deciding to
    /// defer a transaction before claiming it.
    pub fn would_admit(&self) -> bool {
        let now = self.clock.now();
        let inner = self.lock();
        inner.in_flight < self.settings.max_concurrent
            && match inner.phase {
                Phase::Closed => true,
                Phase::Open { since } => now >= since + self.settings.sleep_window,
                Phase::HalfOpen => false,
            }
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = self.clock.now();
        let inner = self.lock();
        let (window_requests, window_failures) = self.totals(&inner, now);
        BreakerSnapshot {
            state: match inner.phase {
                Phase::Closed => BreakerState::Closed,
                Phase::Open { .. } => BreakerState::Open,
                Phase::HalfOpen => BreakerState::HalfOpen,
            },
            window_requests,
            window_failures,
            in_flight: inner.in_flight,
            rejected_total: inner.rejected_total,
            opened_total: inner.opened_total,
        }
    }

    /// A poisoned lock only means another thread panicked mid-update of plain counters;
    /// the data is still usable, so carry on rather than take the gateway down.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit(&self) -> Result<Permit<'_>, Rejection> {
        let now = self.clock.now();
        let mut inner = self.lock();
        if inner.in_flight >= self.settings.max_concurrent {
            inner.rejected_total += 1;
            return Err(Rejection::Saturated);
        }
        let probe = match inner.phase {
            Phase::Closed => false,
            Phase::Open { since } if now >= since + self.settings.sleep_window => {
                inner.phase = Phase::HalfOpen;
                inner.generation += 1;
                tracing::info!(gateway = %self.gateway, "circuit half-open: sending one probe");
                true
            }
            Phase::Open { .. } => {
                inner.rejected_total += 1;
                return Err(Rejection::Open);
            }
            Phase::HalfOpen => {
                inner.rejected_total += 1;
                return Err(Rejection::ProbeInFlight);
            }
        };
        inner.in_flight += 1;
        Ok(Permit {
            breaker: self,
            generation: inner.generation,
            probe,
            finished: false,
        })
    }

    fn record(&self, generation: u64, probe: bool, failed: bool) {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.in_flight = inner.in_flight.saturating_sub(1);
        if generation != inner.generation {
            return;
        }
        match inner.phase {
            Phase::Closed => {
                self.count(&mut inner, now, failed);
                let (requests, failures) = self.totals(&inner, now);
                let threshold = u64::from(self.settings.error_threshold_percent);
                if failed
                    && requests >= u64::from(self.settings.min_requests)
                    && failures * 100 >= threshold * requests
                {
                    tracing::warn!(gateway = %self.gateway, requests, failures, "circuit opened");
                    self.open(&mut inner, now);
                }
            }
            Phase::HalfOpen if probe => {
                if failed {
                    tracing::warn!(gateway = %self.gateway, "circuit probe failed: open again");
                    self.open(&mut inner, now);
                } else {
                    tracing::info!(gateway = %self.gateway, "circuit probe succeeded: closed");
                    inner.phase = Phase::Closed;
                    inner.generation += 1;
                    inner
                        .buckets
                        .iter_mut()
                        .for_each(|b| *b = Bucket::default());
                }
            }
            Phase::HalfOpen | Phase::Open { .. } => {}
        }
    }

    fn open(&self, inner: &mut Inner, now: Duration) {
        inner.phase = Phase::Open { since: now };
        inner.generation += 1;
        inner.opened_total += 1;
        inner
            .buckets
            .iter_mut()
            .for_each(|b| *b = Bucket::default());
    }

    fn bucket_index(&self, now: Duration) -> u64 {
        u64::try_from(now.as_millis()).unwrap_or(u64::MAX) / self.bucket_width_ms
    }

    fn count(&self, inner: &mut Inner, now: Duration, failed: bool) {
        let index = self.bucket_index(now);
        let len = inner.buckets.len() as u64;
        let slot = &mut inner.buckets[(index % len) as usize];
        if slot.index != index {
            *slot = Bucket {
                index,
                ..Bucket::default()
            };
        }
        if failed {
            slot.failures += 1;
        } else {
            slot.successes += 1;
        }
    }

    /// (requests, failures) over the buckets still inside the window.
    fn totals(&self, inner: &Inner, now: Duration) -> (u64, u64) {
        let index = self.bucket_index(now);
        let len = inner.buckets.len() as u64;
        inner
            .buckets
            .iter()
            .filter(|b| b.index <= index && index - b.index < len)
            .fold((0, 0), |(r, f), b| {
                (r + b.successes + b.failures, f + b.failures)
            })
    }
}

/// Whether an outcome counts against the provider's health (see the module docs).
pub fn counts_as_failure<T>(result: &Result<T, GatewayError>) -> bool {
    matches!(
        result,
        Err(GatewayError::Retryable { .. } | GatewayError::Ambiguous { .. })
    )
}

/// An admitted call. Dropped without [`Permit::finish`] (the caller's future was
/// cancelled), it frees its slot, and a probe counts as failed so the breaker cannot stay
/// half-open forever.
struct Permit<'a> {
    breaker: &'a Breaker,
    generation: u64,
    probe: bool,
    finished: bool,
}

impl Permit<'_> {
    fn finish(mut self, failed: bool) {
        self.finished = true;
        self.breaker.record(self.generation, self.probe, failed);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.finished {
            if self.probe {
                self.breaker.record(self.generation, true, true);
            } else {
                // Not counted either way: decrement in-flight only.
                self.breaker.record(u64::MAX, false, false);
            }
        }
    }
}

#[cfg(test)]
mod tests;
