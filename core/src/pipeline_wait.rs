//! How far behind the pipeline is, for the API's admission control (docs/ARCHITECTURE.md,
//! change 29): each worker publishes how long its messages waited before a handler took
//! them, and the API refuses new payments with a `503` while that wait passes a bound.
//!
//! Why this signal: past the machine's pace the API, which is cheap, accepts payments faster
//! than the workers finish them, and the difference waits in Kafka, so every payment takes
//! longer and the merchant learns of it only from a late webhook (BENCHMARKS.md, issue 18
//! session 18: 714 accepted a second, 314 delivered, accept→webhook p50 10.6 s). The wait of a
//! message between its produce and its handler is that queue, measured where it forms (a
//! consumer's fetch, its runner's permits, per-key order), the same for every worker kind,
//! and independent of how long a provider takes to answer (which is not paygate's backlog).
//!
//! ## In Redis
//!
//! One hash, [`waits_key`] (`<redis.key_prefix>:pipeline_waits`), field
//! `<consumer group>|<instance>`, value a JSON [`WaitReport`]: the longest wait of the
//! messages that instance's handlers started in the last [`PUBLISH_EVERY`] (0 when none
//! started: an idle worker is not behind). Readers take each consumer group's longest fresh
//! report (younger than [`FRESH_FOR`]) and add them up, a payment waiting in each group's
//! queue in turn ([`read`]): a worker that stopped stops counting, so a dead worker does not shed
//! load (its backlog is the healer's and the restart's to clear, and the restarted worker
//! reports the wait of what it then reads). An instance withdraws its field when it stops; the
//! hash expires [`KEY_TTL`] after the last publication, and readers remove fields older than
//! [`FORGET_AFTER`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::instance_reports::{ReportHash, Stamped};

/// How often each worker publishes its wait.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// Reports older than this are not counted: their instance stopped publishing.
pub const FRESH_FOR: chrono::Duration = chrono::Duration::seconds(3);
/// Reports older than this are removed by a reader.
pub const FORGET_AFTER: chrono::Duration = chrono::Duration::minutes(5);
/// The hash expires this long after the last publication of any instance.
pub const KEY_TTL: Duration = Duration::from_secs(60);

pub use crate::instance_reports::ReportError as WaitError;

/// One worker instance's wait at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitReport {
    /// The longest time, in milliseconds, a message waited between its produce and the start
    /// of its handler, over the messages started since the previous report.
    pub wait_ms: u64,
    pub at: DateTime<Utc>,
}

impl Stamped for WaitReport {
    fn at(&self) -> DateTime<Utc> {
        self.at
    }
}

/// The longest wait seen since it was last taken; the consumer runner records into it.
#[derive(Debug, Clone, Default)]
pub struct WaitGauge(Arc<AtomicU64>);

impl WaitGauge {
    /// A message's handler starts after `wait`.
    pub fn record(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_max(ms, Ordering::Relaxed);
    }

    /// The longest wait recorded since the last call, and a fresh start.
    pub fn take(&self) -> Duration {
        Duration::from_millis(self.0.swap(0, Ordering::Relaxed))
    }
}

/// The hash every worker publishes to.
pub fn waits_key(prefix: &str) -> String {
    format!("{prefix}:pipeline_waits")
}

fn field(group: &str, instance: &str) -> String {
    format!("{group}|{instance}")
}

fn hash(prefix: &str) -> ReportHash {
    ReportHash {
        key: waits_key(prefix),
        fresh_for: FRESH_FOR,
        forget_after: FORGET_AFTER,
        ttl: KEY_TTL,
    }
}

/// Publishes one instance's report and renews the hash's expiry.
pub async fn publish(
    redis: &mut ConnectionManager,
    prefix: &str,
    group: &str,
    instance: &str,
    report: WaitReport,
) -> Result<(), WaitError> {
    hash(prefix)
        .publish(redis, &[(field(group, instance), report)])
        .await
}

/// Removes one instance's report (at shutdown), so it stops counting at once.
pub async fn withdraw(
    redis: &mut ConnectionManager,
    prefix: &str,
    group: &str,
    instance: &str,
) -> Result<(), WaitError> {
    hash(prefix)
        .withdraw(redis, &[field(group, instance)])
        .await
}

/// What a reader makes of the fresh reports: the pipeline's wait and each group's part.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// The longest fresh wait of each consumer group, added over the groups: a payment waits
    /// in each group's queue in turn (the payment processor's, then the callback
    /// processor's), so the sum is how long a payment taken now would queue.
    pub wait: Duration,
    /// Each consumer group's longest fresh wait (the console shows them).
    pub by_group: BTreeMap<String, Duration>,
}

/// Makes out the fresh reports, by field (pure, for [`current`]).
pub fn read(fresh: Vec<(String, WaitReport)>) -> Reading {
    let mut by_group: BTreeMap<String, Duration> = BTreeMap::new();
    for (name, report) in fresh {
        let group = name
            .split_once('|')
            .map_or(name.as_str(), |(group, _)| group);
        let entry = by_group.entry(group.to_owned()).or_default();
        *entry = (*entry).max(Duration::from_millis(report.wait_ms));
    }
    let wait = by_group
        .values()
        .fold(Duration::ZERO, |sum, wait| sum.saturating_add(*wait));
    Reading { wait, by_group }
}

/// The workers' recent reports, made out by [`read`]: [`Reading::wait`] is how long a payment
/// taken now would queue (zero when no worker reported recently).
pub async fn current(redis: &mut ConnectionManager, prefix: &str) -> Result<Reading, WaitError> {
    Ok(read(hash(prefix).fresh(redis).await?))
}

/// Publishes `gauge` for consumer group `group` every [`PUBLISH_EVERY`] until `shutdown`,
/// then withdraws it. A Redis failure is logged and the next tick tries again: admission
/// control is a protection, and without reports the API admits everything.
pub async fn publish_until(
    gauge: WaitGauge,
    mut redis: ConnectionManager,
    prefix: String,
    group: String,
    shutdown: CancellationToken,
) {
    let instance = crate::instance_reports::instance_id();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let report = WaitReport {
            wait_ms: u64::try_from(gauge.take().as_millis()).unwrap_or(u64::MAX),
            at: Utc::now(),
        };
        if let Err(error) = publish(&mut redis, &prefix, &group, &instance, report).await {
            tracing::warn!(%error, %group, "could not publish the pipeline wait");
        }
    }
    if let Err(error) = withdraw(&mut redis, &prefix, &group, &instance).await {
        tracing::debug!(%error, "could not withdraw the pipeline wait; it ages out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(field: &str, wait_ms: u64) -> (String, WaitReport) {
        let at = Utc::now();
        (field.to_owned(), WaitReport { wait_ms, at })
    }

    #[test]
    fn each_groups_longest_wait_adds_up() {
        let reading = read(vec![
            report("pp|a", 1_200),
            report("pp|c", 800),
            report("cp|b", 4_000),
        ]);
        // The longest of each group (pp 1.2 s, cp 4 s), added: a payment waits in both.
        assert_eq!(reading.wait, Duration::from_millis(5_200));
        assert_eq!(
            reading.by_group,
            BTreeMap::from([
                ("cp".to_owned(), Duration::from_millis(4_000)),
                ("pp".to_owned(), Duration::from_millis(1_200)),
            ])
        );
    }

    #[test]
    fn no_reports_read_as_no_wait() {
        assert_eq!(read(Vec::new()), Reading::default());
    }

    #[test]
    fn the_gauge_keeps_the_longest_wait_until_taken() {
        let gauge = WaitGauge::default();
        gauge.record(Duration::from_millis(30));
        gauge.record(Duration::from_millis(900));
        gauge.record(Duration::from_millis(5));
        assert_eq!(gauge.take(), Duration::from_millis(900));
        assert_eq!(gauge.take(), Duration::ZERO);
    }
}
