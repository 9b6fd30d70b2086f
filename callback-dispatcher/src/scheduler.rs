//! The scheduler: claims due deliveries from Postgres and runs them on a bounded worker
//! pool with a per-destination limit (bulkhead), so a slow or dead endpoint holds at most
//! `per_endpoint_concurrency` workers, and a per-merchant limit (fair share), so one
//! merchant's slow endpoints together hold at most `per_merchant_concurrency` and never
//! delay other merchants' deliveries.
//!
//! Everything it needs is in Postgres: a restart, or a second dispatcher, carries on from
//! the rows (`FOR UPDATE SKIP LOCKED` shares them; a lease covers a crashed worker).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use paygate_core::db::webhooks::{self, ClaimLimits, InFlight};
use paygate_core::domain::MerchantId;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics;
use crate::worker::Deliverer;

pub(crate) struct Scheduler {
    pub pool: PgPool,
    /// Opens the signing secrets of claimed deliveries (`[secrets]`).
    pub keyring: Arc<paygate_core::keyring::Keyring>,
    pub deliverer: Arc<Deliverer>,
    pub concurrency: usize,
    pub per_destination: usize,
    pub per_merchant: usize,
    pub poll: Duration,
    pub lease: Duration,
    /// Rung when new deliveries are recorded or a worker frees up.
    pub wake: Arc<Notify>,
    /// How long shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
}

type Shared = Arc<Mutex<InFlight>>;

fn lock(in_flight: &Shared) -> MutexGuard<'_, InFlight> {
    // A few map operations under the lock: a poisoned lock still holds a usable map.
    in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wakes the scheduler when a worker frees room, but only if the last claim left due
/// deliveries behind for want of room ([`webhooks::Claimed::held_back`]): otherwise the
/// wake-up would only claim nothing, three round trips to Postgres per delivery for no work.
#[derive(Clone)]
struct RoomWake {
    notify: Arc<Notify>,
    held_back: Arc<AtomicBool>,
}

impl RoomWake {
    fn room_freed(&self) {
        if self.held_back.load(Ordering::Acquire) {
            self.notify.notify_one();
        }
    }
}

/// Counts a delivery in flight to its destination and for its merchant until dropped
/// (also on panic).
struct InFlightGuard {
    in_flight: Shared,
    destination: String,
    merchant: MerchantId,
    wake: RoomWake,
}

impl InFlightGuard {
    fn new(in_flight: &Shared, destination: &str, merchant: MerchantId, wake: &RoomWake) -> Self {
        lock(in_flight).add(destination, merchant);
        Self {
            in_flight: in_flight.clone(),
            destination: destination.to_owned(),
            merchant,
            wake: wake.clone(),
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.in_flight).remove(&self.destination, self.merchant);
        self.wake.room_freed();
    }
}

impl Scheduler {
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let in_flight: Shared = Arc::new(Mutex::new(InFlight::default()));
        let room = RoomWake {
            notify: self.wake.clone(),
            held_back: Arc::new(AtomicBool::new(false)),
        };
        let tasks = TaskTracker::new();
        tracing::info!(
            concurrency = self.concurrency,
            per_destination = self.per_destination,
            per_merchant = self.per_merchant,
            "webhook scheduler started"
        );
        while !shutdown.is_cancelled() {
            let free = slots.available_permits();
            let mut more = false;
            if free > 0 {
                let snapshot = lock(&in_flight).clone();
                let limits = ClaimLimits {
                    max: free,
                    lease: self.lease,
                    per_destination: self.per_destination.max(1),
                    per_merchant: self.per_merchant.max(1),
                    in_flight: &snapshot,
                };
                match webhooks::claim_due(&self.pool, &self.keyring, limits).await {
                    Ok(claimed) => {
                        more = claimed.deliveries.len() == free;
                        room.held_back.store(claimed.held_back, Ordering::Release);
                        for delivery in claimed.deliveries {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                // Only this loop takes permits, so this cannot happen; the
                                // delivery would be taken again when its lease runs out.
                                tracing::error!("no free worker for a claimed delivery");
                                break;
                            };
                            let guard = InFlightGuard::new(
                                &in_flight,
                                &delivery.destination,
                                delivery.merchant_id,
                                &room,
                            );
                            let deliverer = self.deliverer.clone();
                            tasks.spawn(async move {
                                let _permit = permit;
                                let _guard = guard;
                                deliverer.deliver(delivery).await;
                            });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not claim due webhook deliveries; retrying");
                    }
                }
            }
            if more {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
        tracing::info!(in_flight = tasks.len(), "webhook scheduler stopping");
        tasks.close();
        if tokio::time::timeout(self.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("webhook attempts still running after the grace period; they are retried after their lease");
        }
        tracing::info!("webhook scheduler stopped");
    }
}

/// Publishes the backlog gauge per destination every `every`, until shutdown.
pub(crate) async fn report_backlog(pool: PgPool, every: Duration, shutdown: CancellationToken) {
    let mut seen: Vec<String> = Vec::new();
    loop {
        match webhooks::backlog_by_destination(&pool).await {
            Ok(rows) => {
                let now: Vec<String> = rows.iter().map(|(d, _)| d.clone()).collect();
                for gone in seen.iter().filter(|d| !now.contains(d)) {
                    metrics::backlog(gone.clone(), 0);
                }
                for (destination, count) in rows {
                    metrics::backlog(destination, count);
                }
                seen = now;
            }
            Err(error) => tracing::warn!(%error, "could not read the webhook backlog"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
