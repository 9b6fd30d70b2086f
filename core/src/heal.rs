//! Postgres heals what the broker lost. The database is the source of truth; Kafka only
//! carries announcements. When a broker restarts empty, or a consumer group skips messages
//! after losing its offsets, some announcements never reach their handler:
//!
//! - a `pending` transaction nobody claimed within `recovery.pending_unclaimed_secs` is
//!   announced again (`transactions.pending`, at its current version) — run by the payment
//!   processor, whose relay publishes it at once;
//! - a terminal (`succeeded`/`failed`) transaction with no webhook event
//!   `recovery.webhook_missing_secs` after it became terminal has its event recorded —
//!   run by the callback dispatcher, which owns webhook events. Since the event commits with
//!   the terminal state (change 27) this finds only what that rule does not cover: rows
//!   finished before it (an upgrade), or written by hand.
//!
//! Each writes in one commit with its stamp in `heal_marks` (the `pending` one through the
//! outbox), in batches of at most `recovery.heal_batch`, and idempotently: the processor acts
//! only on the version it is told and under a version check; webhook event ids are
//! deterministic. A repeat therefore changes nothing. A row is re-announced at most once per
//! bound; if that announcement is lost too, it is re-announced after another bound.
//!
//! When a broker reset is recorded ([`crate::bus::reset`]: some process saw the broker
//! lose its topics), each healer re-announces everything it watches at once instead of
//! waiting out its bound: recovery in seconds rather than after `pending_unclaimed_secs`.
//!
//! Messages are built by [`crate::announce`], the one place that builds them.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::announce;
use crate::bus::reset;
use crate::config::RecoveryConfig;
use crate::db::heal::{self as queries, HealKind};
use crate::db::{outbox, transactions, webhooks, DbError};
use crate::domain::{TransactionId, TransactionStatus};

/// One healer's knobs.
#[derive(Debug, Clone, Copy)]
pub struct HealSettings {
    pub kind: HealKind,
    /// How long a transaction may wait for its handler before it is announced again.
    pub bound: Duration,
    pub poll: Duration,
    pub batch: i64,
    /// How far back the `completed` healer looks at start.
    pub lookback: Duration,
}

impl HealSettings {
    /// The `pending` healer from `[recovery]`.
    pub fn pending(config: &RecoveryConfig) -> Self {
        Self {
            kind: HealKind::Pending,
            bound: config.pending_unclaimed,
            poll: config.heal_poll.max(Duration::from_millis(10)),
            batch: config.heal_batch.max(1),
            lookback: config.heal_lookback,
        }
    }

    /// The `completed` (webhook) healer from `[recovery]`.
    pub fn completed(config: &RecoveryConfig) -> Self {
        Self {
            kind: HealKind::Completed,
            bound: config.webhook_missing,
            ..Self::pending(config)
        }
    }
}

/// A healer: [`Healer::scan_once`] in a loop ([`Healer::run`]).
pub struct Healer {
    pool: PgPool,
    settings: HealSettings,
    /// `completed` only: terminal rows before this were already checked (rows re-announced
    /// are followed through `heal_marks` instead), so a scan reads only new terminal rows.
    checked_until: DateTime<Utc>,
}

impl Healer {
    pub fn new(pool: PgPool, settings: HealSettings) -> Self {
        let lookback = TimeDelta::from_std(settings.lookback).unwrap_or(TimeDelta::days(1));
        let now = Utc::now();
        Self {
            pool,
            settings,
            checked_until: now.checked_sub_signed(lookback).unwrap_or(now),
        }
    }

    /// Scans until `shutdown`; a failed scan (database down) is logged and tried again at
    /// the next poll. Between scans it looks every [`reset::POLL`] for a sighting of a broker
    /// that lost its state, and then re-announces at once ([`Healer::heal_now`]).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let kind = self.settings.kind.as_str();
        tracing::info!(
            kind,
            bound_secs = self.settings.bound.as_secs(),
            "healer started"
        );
        let Some(mut sightings) = reset::Sightings::start(self.pool.clone(), &shutdown).await
        else {
            return;
        };
        loop {
            let pause = match self.scan_once().await {
                // A full batch: there may be more, go again at once.
                Ok(n) if self.filled(n) => Duration::ZERO,
                Ok(_) => self.settings.poll,
                Err(error) => {
                    tracing::warn!(kind, %error, "heal scan failed; trying again later");
                    self.settings.poll
                }
            };
            let next_scan = tokio::time::Instant::now() + pause;
            while tokio::time::Instant::now() < next_scan {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        tracing::info!(kind, "healer stopped");
                        return;
                    }
                    _ = tokio::time::sleep_until(next_scan.min(tokio::time::Instant::now() + reset::POLL)) => {}
                }
                match sightings.newer().await {
                    Ok(Some(id)) => self.heal_now(id).await,
                    Ok(None) => {}
                    Err(error) => tracing::debug!(kind, %error, "broker resets unreadable"),
                }
            }
        }
    }

    fn filled(&self, found: usize) -> bool {
        i64::try_from(found).unwrap_or(i64::MAX) >= self.settings.batch
    }

    /// After a broker reset: everything this healer watches is re-announced now, whatever
    /// its age, batch after batch. Announcements of rows whose messages did survive (sent
    /// after the reset) arrive twice, which the idempotent handlers absorb.
    ///
    /// Every scan of the run uses one cutoff, the database's clock when it began: rows last
    /// changed before it, not re-announced since. Each row once, and the loop ends.
    async fn heal_now(&mut self, reset: i64) {
        let kind = self.settings.kind.as_str();
        let mut announced = 0usize;
        let healed = async {
            let cutoff = queries::cutoff(&self.pool, Duration::ZERO).await?;
            loop {
                let n = self.scan_before(cutoff).await?;
                announced = announced.saturating_add(n);
                if !self.filled(n) {
                    return Ok::<(), DbError>(());
                }
            }
        }
        .await;
        match healed {
            Ok(()) => tracing::warn!(kind, reset, announced, "healed after a broker reset"),
            Err(error) => {
                tracing::warn!(kind, reset, announced, %error, "heal after a broker reset failed; the periodic scans carry on")
            }
        }
    }

    /// One scan: re-announces what the broker seems to have lost; returns how many.
    pub async fn scan_once(&mut self) -> Result<usize, DbError> {
        let cutoff = queries::cutoff(&self.pool, self.settings.bound).await?;
        self.scan_before(cutoff).await
    }

    /// A scan for rows last changed, and not re-announced, since `cutoff`.
    async fn scan_before(&mut self, cutoff: DateTime<Utc>) -> Result<usize, DbError> {
        let limit = self.settings.batch;
        let mut db = self.pool.begin().await?;
        let (candidates, next_checked) = match self.settings.kind {
            HealKind::Pending => (
                queries::unclaimed_pending(&mut db, cutoff, limit).await?,
                None,
            ),
            HealKind::Completed => {
                let mut candidates =
                    queries::completed_still_missing(&mut db, cutoff, limit).await?;
                let room = limit.saturating_sub(i64::try_from(candidates.len()).unwrap_or(limit));
                let fresh = queries::terminal_without_event(
                    &mut db,
                    self.checked_until,
                    cutoff,
                    room.max(1),
                )
                .await?;
                // Not all found: everything before the cutoff is checked. Otherwise continue
                // after the last one found (marked rows are excluded next time).
                let next = if i64::try_from(fresh.len()).unwrap_or(i64::MAX) < room.max(1) {
                    cutoff
                } else {
                    fresh.last().map(|(_, _, at)| *at).unwrap_or(cutoff)
                };
                candidates.extend(fresh.into_iter().map(|(id, version, _)| (id, version)));
                (candidates, Some(next))
            }
        };
        let won = if candidates.is_empty() {
            Vec::new()
        } else {
            queries::mark(&mut db, self.settings.kind, &candidates, cutoff).await?
        };
        let mut announced = 0usize;
        for id in won {
            if self.announce(&mut db, id).await? {
                announced += 1;
            }
        }
        db.commit().await?;
        if let Some(next) = next_checked {
            self.checked_until = self.checked_until.max(next);
        }
        if announced > 0 {
            if self.settings.kind == HealKind::Pending {
                outbox::committed();
            }
            metrics::counter!("paygate_heal_reannounced_total", "kind" => self.settings.kind.as_str())
                .increment(announced as u64);
            tracing::warn!(
                kind = self.settings.kind.as_str(),
                announced,
                "re-announced transactions the broker seems to have lost"
            );
        }
        Ok(announced)
    }

    /// Writes the announcement for one transaction if it is still in the state the scan saw.
    async fn announce(
        &self,
        db: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        id: Uuid,
    ) -> Result<bool, DbError> {
        let Some(transaction) = transactions::get(&mut **db, TransactionId::from_uuid(id)).await?
        else {
            return Ok(false);
        };
        match self.settings.kind {
            HealKind::Pending if transaction.status == TransactionStatus::Pending => {
                outbox::enqueue(&mut **db, &announce::pending(&transaction, None)).await?;
            }
            HealKind::Completed if transaction.status.is_terminal() => {
                webhooks::record_event(&mut **db, &announce::completed(&transaction)?).await?;
            }
            // Moved on since the scan: its own handler has it.
            _ => return Ok(false),
        }
        Ok(true)
    }
}
