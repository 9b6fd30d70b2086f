//! A broker that lost its state: noticed by one process, acted on by all of them.
//!
//! A Kafka-protocol broker that restarts empty (tansu with memory storage, a cluster rebuilt,
//! topics deleted by hand) drops every message not yet consumed, the consumer groups'
//! offsets and the producer ids it issued. Each process meets it differently: a consumer's
//! watchdog finds its topics missing, a relay's sends time out, a callback's send is
//! refused as fenced. Left to their own timers they recover one by one over minutes (the
//! healers' 30–60 s bounds, the producer's 30 s message timeout; docs/RELIABILITY.md).
//!
//! So the sighting is made once and shared through Postgres, which every process reads:
//!
//! 1. whoever has to create topics again after start-up ([`recreate_topics`]: a relay after a
//!    failed round, or the reset watch of the process whose consumer watchdog called
//!    [`noticed`]) records a row in `broker_resets`;
//! 2. every process's reset watch ([`watch`], run beside its outbox relay) sees the new row
//!    within [`POLL`] and replaces its producer (the old client's producer id and its queued
//!    sends mean nothing to the new broker; queued sends fail at once and are retried by
//!    their callers);
//! 3. every healer ([`crate::heal`]) sees it too and re-announces at once, without its
//!    bound, what the broker may have dropped, through the same idempotent handlers.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;

use super::{create_missing_topics, Producer};
use crate::config::KafkaConfig;
use crate::db::{broker_resets, DbError};

/// How often a process looks for a newer sighting.
pub const POLL: Duration = Duration::from_secs(1);

/// Bumped by a consumer watchdog of this process that found its topics missing.
static NOTICED: LazyLock<channel::Sender<u64>> = LazyLock::new(|| channel::channel(0).0);

/// Called by a consumer that found one of its topics missing at the broker: this process's
/// reset watch recreates the topics and records the sighting.
pub fn noticed() {
    NOTICED.send_modify(|n| *n = n.wrapping_add(1));
}

/// Creates the topics the broker lacks; if it lacked any, records a sighting (the broker
/// lost its state after start-up) so every process heals. Returns how many were created.
pub async fn recreate_topics(
    pool: &PgPool,
    config: &KafkaConfig,
    who: &str,
) -> Result<usize, super::BusError> {
    let created = create_missing_topics(config).await?;
    if created > 0 {
        match broker_resets::record(pool, who).await {
            Ok(id) => {
                metrics::counter!("paygate_broker_resets_recorded_total").increment(1);
                tracing::warn!(
                    reset = id,
                    topics_created = created,
                    detected_by = who,
                    "the broker lost its topics; recorded so every process heals"
                );
            }
            Err(error) => tracing::warn!(%error, "could not record the broker reset"),
        }
    }
    Ok(created)
}

/// The newest sighting id, read until it can be (a process must not mistake old sightings
/// for new ones after a database outage at start).
async fn latest_or_wait(pool: &PgPool, shutdown: &CancellationToken) -> Option<i64> {
    loop {
        match broker_resets::latest(pool).await {
            Ok(id) => return Some(id),
            Err(error) => tracing::debug!(%error, "broker resets unreadable; trying again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Follows the sightings in Postgres: yields each one newer than the last, from start.
pub struct Sightings {
    pool: PgPool,
    seen: i64,
}

impl Sightings {
    /// Starts after the newest sighting already recorded (`None`: shut down first).
    pub async fn start(pool: PgPool, shutdown: &CancellationToken) -> Option<Self> {
        let seen = latest_or_wait(&pool, shutdown).await?;
        Some(Self { pool, seen })
    }

    /// A sighting newer than the last one returned, if there is one now.
    pub async fn newer(&mut self) -> Result<Option<i64>, DbError> {
        let latest = broker_resets::latest(&self.pool).await?;
        if latest > self.seen {
            self.seen = latest;
            return Ok(Some(latest));
        }
        Ok(None)
    }
}

/// A process's reset watch (spawned by [`super::OutboxRelay::run`]): turns this process's
/// consumers' notices into recreated topics and a recorded sighting, and replaces the
/// producer on every new sighting, whoever recorded it.
pub async fn watch(pool: PgPool, producer: Producer, shutdown: CancellationToken) {
    let mut notices = NOTICED.subscribe();
    notices.mark_unchanged();
    let Some(mut sightings) = Sightings::start(pool.clone(), &shutdown).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = notices.changed() => {
                if changed.is_err() {
                    return;
                }
                if let Err(error) = recreate_topics(&pool, producer.config(), "consumer watchdog").await {
                    tracing::warn!(%error, "could not recreate the topics a consumer found missing");
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        match sightings.newer().await {
            Ok(Some(id)) => {
                tracing::warn!(
                    reset = id,
                    "the broker lost its state; replacing the Kafka producer"
                );
                if let Err(error) = producer.renew().await {
                    tracing::warn!(%error, "could not create a new Kafka producer");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "broker resets unreadable; trying again"),
        }
    }
}
