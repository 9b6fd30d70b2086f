//! One provider attempt for one transaction: claim, route, call through the breaker,
//! record the outcome. Also the reconciliation of a transaction stuck mid-flight.
//!
//! Safety rests on these, in this order:
//! 1. every write is version-checked (`db::transactions::apply`, or `apply_all` when
//!    [`crate::store`] sends several together), so a second worker that
//!    read the same row cannot claim it again, and a stale worker cannot overwrite;
//! 2. every provider call carries our transaction id as its idempotency reference, so a
//!    retry after an ambiguous outcome cannot execute the payment twice;
//! 3. a payment that may have reached a provider is *pinned* to it (`ambiguous_since`):
//!    its next step is a status query there ([`crate::status_step`]), a resubmit goes only
//!    there, and it is never failed automatically — it becomes `unresolved` when we cannot
//!    find out. Failover happens only after failures that certainly never reached the
//!    provider (the rule on `GatewayError`).
//!
//! The Redis lock only keeps two workers from doing the same work at once.

use std::ops::ControlFlow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use paygate_core::announce;
use paygate_core::db::transactions;
use paygate_core::db::DbError;
use paygate_core::domain::clock;
use paygate_core::domain::{
    Failure, GatewayName, InvalidTransition, Transaction, TransactionId, TransactionKind,
    TransactionStatus, TransactionUpdate,
};
use paygate_core::lock::RedisLock;
use paygate_gateways::breaker::BreakerError;
use paygate_gateways::check::check_outcome;
use paygate_gateways::registry::RegisteredGateway;
use paygate_gateways::{
    GatewayError, GatewayRegistry, ProviderStatus, Reported, SubmitOutcome, SubmitStatus,
};
use sqlx::PgPool;

use crate::backoff::Backoff;
use crate::routing::{Route, RouteError, Router};
use crate::status_step::{after_asking, AskPacing, Step};

/// `failure.code` values the processor writes. On a non-terminal transaction `failure` is
/// the last attempt's error (like Stripe's `last_payment_error`); the codes also drive the
/// next attempt's routing.
pub mod codes {
    /// The provider may have executed the last attempt: ask it, retry only on that gateway.
    pub const AMBIGUOUS: &str = "ambiguous";
    /// The provider certainly did not execute it: any gateway of the route may retry.
    pub const RETRYABLE: &str = "retryable";
    pub const BREAKER_OPEN: &str = "breaker_open";
    /// `failed` from `requires_action`: the customer did not finish at the provider in time
    /// (and the provider confirmed nothing moved).
    pub const ACTION_EXPIRED: &str = "action_expired";
    /// Failed after attempts that certainly never reached a provider.
    pub const MAX_ATTEMPTS: &str = "max_attempts_exceeded";
    pub const NO_ROUTE: &str = "no_route";
    pub const UNKNOWN_GATEWAY: &str = "unknown_gateway";
    /// `unresolved`: attempts ran out after an ambiguous outcome.
    pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";
    /// `unresolved`: the provider's status answers settled nothing for too long.
    pub const STATUS_UNKNOWN: &str = "status_unknown";
    /// `unresolved`: the provider reported a different payment (amount, currency, kind,
    /// reference or gateway); flagged for a person.
    pub const OUTCOME_MISMATCH: &str = "outcome_mismatch";
    /// `failed` after `unresolved`: the provider confirmed, past its settle window, that it
    /// never received the payment.
    pub const NOT_EXECUTED: &str = "not_executed";
    /// Pinned (`retry_scheduled` or `unresolved`): the provider refused a resubmit as a
    /// duplicate reference, so it holds the payment. Kept on every later write while the
    /// payment is pinned ([`super::sticky`]): its status query's "not found" is lag, never
    /// "never executed".
    pub const DUPLICATE_REFERENCE: &str = "duplicate_reference";
}

/// The code to record on a pinned payment: `code`, unless the provider has refused a
/// resubmit as a duplicate reference, a fact an ordinary ambiguous failure or an
/// inconclusive status answer must not erase (else a later "not found" past the settle
/// window would fail a payment the provider executed).
pub(crate) fn sticky<'a>(tx: &Transaction, code: &'a str) -> &'a str {
    let ordinary = [
        codes::AMBIGUOUS,
        codes::STATUS_UNKNOWN,
        codes::OUTCOME_UNKNOWN,
    ];
    if crate::status_step::holds_reference(tx) && ordinary.contains(&code) {
        codes::DUPLICATE_REFERENCE
    } else {
        code
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub lock_ttl: Duration,
    pub lock_wait: Duration,
    pub backoff: Backoff,
    pub max_attempts: i32,
    pub breaker_deferral: Duration,
    /// The most of a provider's `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// Inconclusive status answers for this long after the ambiguous attempt → `unresolved`.
    pub unresolved_after: Duration,
    /// How long reconciliation keeps asking about an `unresolved` transaction.
    pub reconcile_horizon: Duration,
    /// A payment in flight untouched this long is reconciled, unless its gateway sets its
    /// own `reconcile_after_ms`.
    pub stuck_after: Duration,
    pub pacing: AskPacing,
}

/// What handling one event did (for logs, metrics and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: duplicate or replayed event, already claimed or terminal.
    Skipped(&'static str),
    /// Every candidate's breaker was open: retry later, no attempt used.
    Deferred,
    /// Accepted by the provider; the callback will finish it.
    Submitted,
    /// Waiting for the customer at the provider.
    RequiresAction,
    /// A retry (or the next status query) is scheduled.
    RetryScheduled,
    /// Terminal now.
    Completed(TransactionStatus),
    /// We cannot tell whether the provider executed it: `unresolved`, merchant told.
    Unresolved,
    /// Still unresolved; the provider is asked again later (or, past the horizon, a person
    /// decides).
    StillUnresolved,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Try the same event again later (database, Redis, lock busy).
    #[error("transient: {0}")]
    Transient(String),
    /// The event can never be processed (refers to nothing, unknown gateway): dead-letter it.
    #[error("poison: {0}")]
    Poison(String),
}

impl From<DbError> for ProcessError {
    fn from(e: DbError) -> Self {
        Self::Transient(e.to_string())
    }
}

impl From<InvalidTransition> for ProcessError {
    fn from(e: InvalidTransition) -> Self {
        // Only reachable if a status check above is wrong: treat as a bug, but do not loop.
        Self::Poison(e.to_string())
    }
}

pub struct Engine {
    pub(crate) pool: PgPool,
    /// The hot reads and version-checked updates, coalesced across concurrent attempts.
    pub(crate) store: crate::store::Store,
    pub(crate) registry: GatewayRegistry,
    pub(crate) router: Router,
    pub(crate) lock: RedisLock,
    pub(crate) cache: Option<redis::aio::ConnectionManager>,
    pub(crate) cache_prefix: String,
    pub(crate) settings: Settings,
}

/// Where a pinned payment's status query led.
enum AfterAsking {
    /// Handled (finished, flagged, or the next question scheduled).
    Done(Outcome),
    /// Go on to an attempt with this snapshot (same gateway, or any after "never executed").
    Attempt(Box<Transaction>),
}

impl Engine {
    /// Handles one `transactions.pending` event for `id` at `version`.
    pub async fn process(&self, id: TransactionId, version: i64) -> Result<Outcome, ProcessError> {
        let lease = self
            .lock
            .acquire(
                &lock_name(id),
                self.settings.lock_ttl,
                self.settings.lock_wait,
            )
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?
            .ok_or_else(|| ProcessError::Transient(format!("{id} is locked by another worker")))?;
        let result = self.process_locked(id, version).await;
        if let Err(error) = self.lock.release(lease).await {
            tracing::warn!(%error, %id, "lock release failed; it expires by itself");
        }
        if changed_state(&result) {
            self.invalidate_cache(id, &result).await;
        }
        result
    }

    async fn process_locked(
        &self,
        id: TransactionId,
        version: i64,
    ) -> Result<Outcome, ProcessError> {
        let (tx, enabled) = match self.claimable(id, version).await? {
            ControlFlow::Continue(claimable) => claimable,
            ControlFlow::Break(outcome) => return Ok(outcome),
        };
        let tx = match self.ask_if_pinned(tx).await? {
            AfterAsking::Done(outcome) => return Ok(outcome),
            AfterAsking::Attempt(tx) => *tx,
        };
        if tx.attempts >= self.settings.max_attempts {
            let reason = format!("gave up after {} attempts", tx.attempts);
            return self.give_up(&tx, reason).await;
        }
        let route = match self.route_or_fail(&tx, enabled.as_deref()).await? {
            ControlFlow::Continue(route) => route,
            ControlFlow::Break(outcome) => return Ok(outcome),
        };

        let Some((gateway_name, entry)) = self.first_admitting(&candidates(&tx, &route)) else {
            return self.defer(&tx).await;
        };

        let claim = tx
            .advance(TransactionStatus::Submitting, Utc::now())?
            .start_attempt()
            .routed_to(gateway_name.clone());
        let Some(claimed) = self.store.apply(&claim).await? else {
            return Ok(Outcome::Skipped("claimed by another worker"));
        };
        let result = submit(&claimed, &gateway_name, &entry).await;
        self.record(&claimed, &route, result).await
    }

    /// The transaction as this event may act on it: known, still waiting for an attempt,
    /// and at the event's version (an older event's replay would retry before the backoff
    /// is over); with the gateways its merchant enabled (`None`: all), read with it.
    async fn claimable(
        &self,
        id: TransactionId,
        version: i64,
    ) -> Result<ControlFlow<Outcome, (Transaction, Option<Vec<GatewayName>>)>, ProcessError> {
        let Some((tx, enabled)) = self.store.read(id).await? else {
            return Err(ProcessError::Poison(format!("unknown transaction {id}")));
        };
        if !matches!(
            tx.status,
            TransactionStatus::Pending | TransactionStatus::RetryScheduled
        ) {
            return Ok(ControlFlow::Break(Outcome::Skipped("not claimable")));
        }
        if tx.version != version {
            // A replay of an older event: acting on it would retry before the backoff is over.
            return Ok(ControlFlow::Break(Outcome::Skipped("stale event")));
        }
        Ok(ControlFlow::Continue((tx, enabled)))
    }

    /// The route for `tx` within its merchant's `enabled` gateways, or the transaction
    /// failed when there is none: no matching rule, or a rule naming a gateway that is not
    /// configured (also dead-lettered, as poison).
    async fn route_or_fail(
        &self,
        tx: &Transaction,
        enabled: Option<&[GatewayName]>,
    ) -> Result<ControlFlow<Outcome, Route>, ProcessError> {
        let enabled = match &tx.gateway {
            // Named by the merchant: the API allowed it.
            Some(_) => None,
            None => enabled,
        };
        match self.router.route_within(tx, enabled) {
            Ok(route) => Ok(ControlFlow::Continue(route)),
            Err(error @ (RouteError::NoRoute | RouteError::NoEnabledGateway)) => {
                let failure = Some((codes::NO_ROUTE, error.to_string()));
                let outcome = self
                    .finish(tx, TransactionStatus::Failed, failure, None)
                    .await?;
                Ok(ControlFlow::Break(outcome))
            }
            Err(error @ RouteError::UnknownGateway(_)) => {
                // Terminal for the merchant, and dead-lettered for the operator to see.
                let failure = Some((codes::UNKNOWN_GATEWAY, error.to_string()));
                self.finish(tx, TransactionStatus::Failed, failure, None)
                    .await?;
                Err(ProcessError::Poison(error.to_string()))
            }
        }
    }

    /// A payment that may be at its provider already is asked about before anything else:
    /// a conclusive answer finishes it, an inconclusive one schedules the next question
    /// (or, after `unresolved_after`, makes it `unresolved`), and only "never executed" or
    /// "no status query" lets an attempt go ahead.
    async fn ask_if_pinned(&self, tx: Transaction) -> Result<AfterAsking, ProcessError> {
        let (Some(since), Some(gateway)) = (tx.ambiguous_since, tx.routed_gateway.clone()) else {
            return Ok(AfterAsking::Attempt(Box::new(tx)));
        };
        let Some(entry) = self.registry.entry(&gateway) else {
            // The gateway left the configuration: nobody can find out here.
            let reason = format!("gateway {gateway} that may hold this payment is not configured");
            return self
                .unresolve(&tx, codes::STATUS_UNKNOWN, reason)
                .await
                .map(AfterAsking::Done);
        };
        let now = Utc::now();
        let step = self.ask(&tx, &gateway, &entry, since, now).await;
        Ok(AfterAsking::Done(match step {
            // A provider without idempotency would execute a resubmit as a second payment
            // (M-Pesa's STK push prompts the customer again): only a person may decide.
            Step::Resubmit if !entry.gateway.idempotent_submit() => {
                let reason = format!(
                    "{gateway} may hold this payment, cannot be asked, and would execute a resubmit twice"
                );
                self.unresolve(&tx, codes::OUTCOME_UNKNOWN, reason).await?
            }
            Step::Resubmit => return Ok(AfterAsking::Attempt(Box::new(tx))),
            Step::NeverExecuted => {
                metrics::counter!("paygate_processor_never_executed_total", "gateway" => gateway.to_string()).increment(1);
                return Ok(AfterAsking::Attempt(Box::new(never_executed(tx))));
            }
            step @ (Step::Finish { .. } | Step::Mismatch(_)) => self.settle(&tx, step).await?,
            Step::Executing | Step::AwaitingCustomer => {
                let update = tx.advance(TransactionStatus::Submitted, now)?;
                // A provider that refused our resubmit as a duplicate holds the reference:
                // keep that mark, so a later "not found" is never read as "never executed".
                let update = if crate::status_step::holds_reference(&tx) {
                    update
                } else {
                    update.clear_failure()
                };
                match self.store.apply(&update).await? {
                    Some(_) => Outcome::Submitted,
                    None => Outcome::Skipped("changed while asking the provider"),
                }
            }
            Step::AskAgainAt { at, why } => {
                if clock::elapsed(since, now) >= self.settings.unresolved_after {
                    let reason = format!(
                        "no conclusive answer from {gateway} for {}s: {why}",
                        self.settings.unresolved_after.as_secs()
                    );
                    self.unresolve(&tx, codes::STATUS_UNKNOWN, reason).await?
                } else {
                    transactions::reschedule(&self.pool, tx.id, tx.version, Some(at), None).await?;
                    tracing::info!(id = %tx.id, %gateway, %at, why, "asking the provider again later");
                    Outcome::Skipped("status query scheduled")
                }
            }
        }))
    }

    /// Asks `gateway` (through its breaker) about `tx` and decides the next step.
    pub(crate) async fn ask(
        &self,
        tx: &Transaction,
        gateway: &GatewayName,
        entry: &RegisteredGateway,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Step {
        let answer = match entry.breaker.call(|| entry.gateway.status(tx)).await {
            Ok(answer) => Ok(answer),
            Err(BreakerError::Gateway(error)) => Err(error),
            Err(BreakerError::Rejected { rejection, .. }) => Err(GatewayError::Retryable {
                reason: rejection.to_string(),
                retry_after: None,
            }),
        };
        metrics::counter!("paygate_processor_status_queries_total", "gateway" => gateway.to_string(), "answer" => answer_class(&answer)).increment(1);
        after_asking(
            tx,
            gateway,
            answer,
            since,
            entry.timings.status_not_found_after,
            self.settings.pacing,
            now,
        )
    }

    /// The first candidate whose breaker would admit a call now.
    fn first_admitting(
        &self,
        candidates: &[GatewayName],
    ) -> Option<(GatewayName, RegisteredGateway)> {
        candidates.iter().find_map(|name| {
            let entry = self.registry.entry(name)?;
            entry.breaker.would_admit().then(|| (name.clone(), entry))
        })
    }

    /// Every candidate's breaker is open: try again after the deferral, using no attempt.
    async fn defer(&self, tx: &Transaction) -> Result<Outcome, ProcessError> {
        let now = Utc::now();
        let update = tx
            .advance(TransactionStatus::RetryScheduled, now)?
            .retry_at(clock::after(now, self.settings.breaker_deferral))
            .failure(
                codes::BREAKER_OPEN,
                "every gateway for this transaction has an open circuit breaker",
            );
        match self.store.apply(&update).await? {
            Some(_) => Ok(Outcome::Deferred),
            None => Ok(Outcome::Skipped("changed while deferring")),
        }
    }

    async fn record(
        &self,
        claimed: &Transaction,
        route: &Route,
        result: Result<SubmitOutcome, BreakerError>,
    ) -> Result<Outcome, ProcessError> {
        let now = Utc::now();
        let (outcome, gateway) = match (result, claimed.routed_gateway.clone()) {
            (Ok(outcome), Some(gateway)) => (outcome, gateway),
            (Ok(_), None) => return Err(ProcessError::Poison("attempt without a gateway".into())),
            (Err(error), _) => return self.record_failure(claimed, route, error).await,
        };
        let reported = Reported {
            money: outcome.money,
            kind: None,
            provider_reference: Some(outcome.provider_reference.clone()),
        };
        if let Err(mismatch) = check_outcome(claimed, &gateway, &reported) {
            // The provider took *something* under our reference: it may hold money.
            return self
                .flag_mismatch(claimed, &gateway, "submit", &mismatch.to_string())
                .await;
        }
        match outcome.status {
            SubmitStatus::RequiresAction { url } => {
                self.await_customer(claimed, &gateway, outcome.provider_reference, url)
                    .await
            }
            SubmitStatus::Accepted => {
                let update = claimed
                    .advance(TransactionStatus::Submitted, now)?
                    .provider_reference(outcome.provider_reference)
                    .clear_failure();
                Ok(match self.store.apply(&update).await? {
                    Some(_) => Outcome::Submitted,
                    // The provider's callback overtook us and already finished it: fine.
                    None => Outcome::Skipped("callback arrived first"),
                })
            }
            SubmitStatus::Succeeded => {
                self.finish(
                    claimed,
                    TransactionStatus::Succeeded,
                    None,
                    Some(outcome.provider_reference),
                )
                .await
            }
        }
    }

    /// The provider needs the customer first: `requires_action` with where to send them,
    /// announced to the merchant (`transaction.requires_action`) in the same commit, and
    /// due for the expiry check at the gateway's `action_expires_after`.
    async fn await_customer(
        &self,
        claimed: &Transaction,
        gateway: &GatewayName,
        provider_reference: String,
        url: String,
    ) -> Result<Outcome, ProcessError> {
        let now = Utc::now();
        let expires_after = self
            .registry
            .entry(gateway)
            .map(|e| e.timings.action_expires_after)
            .unwrap_or(paygate_gateways::registry::DEFAULT_ACTION_EXPIRES_AFTER);
        let update = claimed
            .advance(TransactionStatus::RequiresAction, now)?
            .provider_reference(provider_reference)
            .next_action(url)
            .retry_at(clock::after(now, expires_after))
            .clear_failure();
        let event = announce::completed(&update.next)?;
        Ok(
            match transactions::apply_with_event(&self.pool, &update, &event).await? {
                Some(_) => Outcome::RequiresAction,
                None => Outcome::Skipped("callback arrived first"),
            },
        )
    }

    async fn record_failure(
        &self,
        claimed: &Transaction,
        route: &Route,
        error: BreakerError,
    ) -> Result<Outcome, ProcessError> {
        let now = Utc::now();
        let pinned = claimed.ambiguous_since.is_some();
        match error {
            BreakerError::Rejected { rejection, .. } => {
                // Refused at the last moment (another worker took the half-open probe): the
                // provider was not called, so the attempt is given back.
                let update = claimed
                    .advance(TransactionStatus::RetryScheduled, now)?
                    .refund_attempt()
                    .retry_at(clock::after(now, self.settings.breaker_deferral))
                    .failure(codes::BREAKER_OPEN, rejection.to_string());
                self.schedule(update).await
            }
            // A refusal of a payment that may already be at this provider (a resubmit after
            // an ambiguous attempt) says nothing about the first request: ask the provider.
            BreakerError::Gateway(GatewayError::Permanent { code, reason }) if pinned => {
                let reason = format!("resubmit refused ({code}: {reason}); asking the provider");
                self.ask_later(claimed, codes::AMBIGUOUS, reason, now).await
            }
            BreakerError::Gateway(GatewayError::Permanent { code, reason }) => {
                self.finish(
                    claimed,
                    TransactionStatus::Failed,
                    Some((&code, reason)),
                    None,
                )
                .await
            }
            BreakerError::Gateway(GatewayError::Retryable {
                reason,
                retry_after,
            }) => {
                // Fail over at once when another gateway of the route can take it; else back off.
                let failover_ready = !pinned
                    && route.failover
                    && route.gateways.iter().any(|g| {
                        Some(g) != claimed.routed_gateway.as_ref()
                            && self.registry.breaker(g).is_some_and(|b| b.would_admit())
                    });
                let delay = if failover_ready {
                    Duration::ZERO
                } else {
                    self.retry_delay(claimed.attempts, retry_after)
                };
                // A pinned payment keeps its "ambiguous" code: only that gateway may retry.
                let code = if pinned {
                    sticky(claimed, codes::AMBIGUOUS)
                } else {
                    codes::RETRYABLE
                };
                self.retry_or_give_up(claimed, code, reason, delay).await
            }
            BreakerError::Gateway(ref error @ GatewayError::Ambiguous { ref reason }) => {
                // A duplicate-reference refusal proves the provider holds the payment.
                let code = if error.is_duplicate_reference() {
                    codes::DUPLICATE_REFERENCE
                } else {
                    codes::AMBIGUOUS
                };
                self.ask_later(claimed, code, reason.clone(), now).await
            }
        }
    }

    /// After an ambiguous outcome: pin the payment to this gateway and ask the provider
    /// after a backoff. Never gives up here; the next round asks first.
    async fn ask_later(
        &self,
        claimed: &Transaction,
        code: &str,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Outcome, ProcessError> {
        let delay = self
            .settings
            .backoff
            .delay(claimed.attempts, &mut rand::rng());
        let update = claimed
            .advance(TransactionStatus::RetryScheduled, now)?
            .pin_ambiguous(now)
            .retry_at(clock::after(now, delay))
            .failure(sticky(claimed, code), reason);
        self.schedule(update).await
    }

    /// The backoff for the next attempt, at least the provider's `Retry-After` (capped).
    pub fn retry_delay(&self, attempts: i32, retry_after: Option<Duration>) -> Duration {
        retry_delay(
            &self.settings.backoff,
            attempts,
            retry_after,
            self.settings.max_retry_after,
            &mut rand::rng(),
        )
    }

    /// Schedules the next attempt after `delay`, recording the last error under `code`
    /// (which steers the next attempt's routing), or gives up once attempts are used up.
    async fn retry_or_give_up(
        &self,
        tx: &Transaction,
        code: &str,
        reason: String,
        delay: Duration,
    ) -> Result<Outcome, ProcessError> {
        if tx.attempts >= self.settings.max_attempts {
            let reason = format!("gave up after {} attempts; last: {reason}", tx.attempts);
            return self.give_up(tx, reason).await;
        }
        let now = Utc::now();
        let update = tx
            .advance(TransactionStatus::RetryScheduled, now)?
            .retry_at(clock::after(now, delay))
            .failure(code, reason);
        self.schedule(update).await
    }

    /// Attempts are used up. A payment that may be at a provider becomes `unresolved`
    /// (never `failed`: the provider may have executed it); any other fails.
    async fn give_up(&self, tx: &Transaction, reason: String) -> Result<Outcome, ProcessError> {
        if tx.ambiguous_since.is_some() {
            let reason = format!("{reason}; the provider may have executed it");
            return self.unresolve(tx, codes::OUTCOME_UNKNOWN, reason).await;
        }
        self.finish(
            tx,
            TransactionStatus::Failed,
            Some((codes::MAX_ATTEMPTS, reason)),
            None,
        )
        .await
    }

    async fn schedule(&self, update: TransactionUpdate) -> Result<Outcome, ProcessError> {
        Ok(match self.store.apply(&update).await? {
            Some(_) => Outcome::RetryScheduled,
            None => Outcome::Skipped("changed while scheduling a retry"),
        })
    }

    /// A provider reported something that is not this payment: recorded (the failure
    /// names the mismatch), flagged (the transaction is `unresolved`, for a person), never
    /// applied.
    pub(crate) async fn flag_mismatch(
        &self,
        tx: &Transaction,
        gateway: &GatewayName,
        source: &'static str,
        detail: &str,
    ) -> Result<Outcome, ProcessError> {
        tracing::warn!(id = %tx.id, %gateway, source, detail, "provider outcome does not match the payment; flagged for review");
        metrics::counter!("paygate_processor_outcome_mismatches_total", "gateway" => gateway.to_string(), "source" => source).increment(1);
        let reason = format!("{source} answer from {gateway}: {detail}");
        if tx.status == TransactionStatus::Unresolved {
            // Already unresolved: record why, and stop asking; a person decides.
            let failure = Failure {
                code: codes::OUTCOME_MISMATCH.into(),
                message: reason,
            };
            transactions::reschedule(&self.pool, tx.id, tx.version, None, Some(&failure)).await?;
            return Ok(Outcome::StillUnresolved);
        }
        self.unresolve(tx, codes::OUTCOME_MISMATCH, reason).await
    }

    /// Moves to `unresolved` and tells the merchant (`transaction.unresolved`), in one
    /// commit. The provider is asked again from `next_attempt_at` on.
    pub(crate) async fn unresolve(
        &self,
        tx: &Transaction,
        code: &str,
        reason: String,
    ) -> Result<Outcome, ProcessError> {
        let now = Utc::now();
        let since = tx.ambiguous_since.unwrap_or(now);
        let code = sticky(tx, code);
        let update = tx
            .advance(TransactionStatus::Unresolved, now)?
            .pin_ambiguous(since)
            .retry_at(self.settings.pacing.next(since, now))
            .failure(code, reason);
        let event = announce::completed(&update.next)?;
        Ok(
            match transactions::apply_with_event(&self.pool, &update, &event).await? {
                Some(_) => {
                    tracing::warn!(id = %tx.id, code, "transaction unresolved: the provider may have executed it");
                    metrics::counter!("paygate_processor_unresolved_total", "code" => code.to_owned()).increment(1);
                    Outcome::Unresolved
                }
                None => Outcome::Skipped("changed while marking unresolved"),
            },
        )
    }

    /// Moves to a terminal state and announces it, in one commit.
    pub(crate) async fn finish(
        &self,
        tx: &Transaction,
        status: TransactionStatus,
        failure: Option<(&str, String)>,
        provider_reference: Option<String>,
    ) -> Result<Outcome, ProcessError> {
        let mut update = tx.advance(status, Utc::now())?;
        update = match failure {
            Some((code, reason)) => update.failure(code, reason),
            None => update.clear_failure(),
        };
        if let Some(reference) = provider_reference {
            update = update.provider_reference(reference);
        }
        let event = announce::completed(&update.next)?;
        Ok(
            match transactions::apply_with_event(&self.pool, &update, &event).await? {
                Some(done) => {
                    metrics::counter!("paygate_processor_completed_total", "status" => done.status.as_str()).increment(1);
                    Outcome::Completed(done.status)
                }
                None => Outcome::Skipped("changed while finishing"),
            },
        )
    }

    /// Drops the API's cached copy of `id` after a committed change and, when the change
    /// finished it (money moved), its merchant's cached balance: the merchant is looked up
    /// then, a primary-key read on the rare path where this processor finishes a payment.
    pub(crate) async fn invalidate_cache(
        &self,
        id: TransactionId,
        result: &Result<Outcome, ProcessError>,
    ) {
        let Some(mut cache) = self.cache.clone() else {
            return;
        };
        let merchant = match result {
            Ok(Outcome::Completed(_)) => transactions::merchant_of(&self.pool, id)
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%id, %error, "could not find the merchant whose cached balance to drop; it expires by its TTL");
                    None
                }),
            _ => None,
        };
        paygate_core::cache_keys::invalidate_transaction(
            &mut cache,
            &self.cache_prefix,
            id,
            merchant,
        )
        .await;
    }
}

/// Whether an outcome changed the row (the cached copy must go).
pub(crate) fn changed_state(result: &Result<Outcome, ProcessError>) -> bool {
    matches!(
        result,
        Ok(Outcome::Submitted
            | Outcome::RequiresAction
            | Outcome::RetryScheduled
            | Outcome::Completed(_)
            | Outcome::Deferred
            | Outcome::Unresolved
            | Outcome::StillUnresolved)
    )
}

/// The provider said, past its settle window, that it never received the payment: the
/// pin is lifted and the last error becomes "retryable", so failover may move on.
fn never_executed(mut tx: Transaction) -> Transaction {
    tx.ambiguous_since = None;
    tx.failure = Some(Failure {
        code: codes::RETRYABLE.into(),
        message: "the provider has no record of the earlier attempt after its settle window".into(),
    });
    tx
}

/// The backoff for the next attempt, at least the provider's `Retry-After`, never more than
/// `max_retry_after` for the latter. Pure and total: any `Retry-After` is safe here.
pub fn retry_delay(
    backoff: &Backoff,
    attempts: i32,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
    rng: &mut impl rand::Rng,
) -> Duration {
    backoff
        .delay(attempts, rng)
        .max(retry_after.unwrap_or_default().min(max_retry_after))
}

fn lock_name(id: TransactionId) -> String {
    paygate_core::lock::transaction_lock(id)
}

/// The gateways this attempt may use, in order.
pub fn candidates(tx: &Transaction, route: &Route) -> Vec<GatewayName> {
    let last_code = tx.failure.as_ref().map(|f| f.code.as_str());
    match (&tx.routed_gateway, last_code) {
        // An attempt may have executed there: only that provider knows our reference, and
        // sending the payment anywhere else could pay it twice.
        (Some(previous), _) if tx.ambiguous_since.is_some() => vec![previous.clone()],
        (Some(previous), Some(codes::AMBIGUOUS | codes::DUPLICATE_REFERENCE)) => {
            vec![previous.clone()]
        }
        // The last gateway failed cleanly: start with the next one, the failed one last.
        (Some(previous), Some(codes::RETRYABLE)) if route.failover => {
            let mut order: Vec<GatewayName> = route.gateways.clone();
            if let Some(at) = order.iter().position(|g| g == previous) {
                order.rotate_left(at + 1);
            }
            order
        }
        _ if route.failover => route.gateways.clone(),
        _ => route.gateways.iter().take(1).cloned().collect(),
    }
}

fn answer_class(answer: &Result<ProviderStatus, GatewayError>) -> &'static str {
    match answer {
        Ok(ProviderStatus::Unsupported) => "unsupported",
        Ok(ProviderStatus::NotFound) => "not_found",
        Ok(ProviderStatus::InProgress) => "in_progress",
        Ok(ProviderStatus::AwaitingCustomer) => "awaiting_customer",
        Ok(ProviderStatus::Final { .. }) => "final",
        Err(_) => "error",
    }
}

/// One attempt at the provider through its breaker, with the breaker-state gauge and the
/// attempt counter updated.
async fn submit(
    claimed: &Transaction,
    gateway_name: &GatewayName,
    entry: &RegisteredGateway,
) -> Result<SubmitOutcome, BreakerError> {
    let result = entry
        .breaker
        .call(|| async {
            match claimed.kind {
                TransactionKind::Deposit => entry.gateway.deposit(claimed).await,
                TransactionKind::Withdrawal => entry.gateway.withdraw(claimed).await,
            }
        })
        .await;
    metrics::gauge!("paygate_breaker_open", "gateway" => gateway_name.to_string()).set(f64::from(
        u8::from(entry.breaker.state() != paygate_gateways::breaker::BreakerState::Closed),
    ));
    metrics::counter!("paygate_processor_attempts_total", "gateway" => gateway_name.to_string(), "outcome" => outcome_class(&result))
        .increment(1);
    result
}

fn outcome_class(result: &Result<SubmitOutcome, BreakerError>) -> &'static str {
    match result {
        Ok(SubmitOutcome {
            status: SubmitStatus::Accepted,
            ..
        }) => "accepted",
        Ok(SubmitOutcome {
            status: SubmitStatus::Succeeded,
            ..
        }) => "succeeded",
        Ok(SubmitOutcome {
            status: SubmitStatus::RequiresAction { .. },
            ..
        }) => "requires_action",
        Err(BreakerError::Rejected { .. }) => "breaker_rejected",
        Err(BreakerError::Gateway(GatewayError::Permanent { .. })) => "permanent",
        Err(BreakerError::Gateway(GatewayError::Retryable { .. })) => "retryable",
        Err(BreakerError::Gateway(GatewayError::Ambiguous { .. })) => "ambiguous",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paygate_core::domain::{CustomerReference, Failure, MerchantId, Money, NewTransaction};

    fn name(n: &str) -> GatewayName {
        GatewayName::parse(n).unwrap_or_else(|e| panic!("{e}"))
    }

    fn tx(routed: Option<&str>, code: Option<&str>) -> Transaction {
        let mut t = Transaction::create(
            NewTransaction {
                merchant_id: MerchantId::new(),
                kind: TransactionKind::Deposit,
                money: Money::from_parts(100, "USD").unwrap_or_else(|e| panic!("{e}")),
                customer: CustomerReference::parse("c").unwrap_or_else(|e| panic!("{e}")),
                gateway: None,
                callback_url: None,
                metadata: serde_json::json!({}),
            },
            Utc::now(),
        );
        t.routed_gateway = routed.map(name);
        t.failure = code.map(|c| Failure {
            code: c.into(),
            message: String::new(),
        });
        t
    }

    fn route(failover: bool) -> Route {
        Route {
            gateways: vec![name("a"), name("b"), name("c")],
            failover,
        }
    }

    #[test]
    fn after_an_ambiguous_attempt_only_the_same_gateway_may_retry() {
        assert_eq!(
            candidates(&tx(Some("b"), Some(codes::AMBIGUOUS)), &route(true)),
            vec![name("b")]
        );
        assert_eq!(
            candidates(&tx(Some("b"), Some(codes::AMBIGUOUS)), &route(false)),
            vec![name("b")]
        );
    }

    #[test]
    fn after_a_clean_failure_failover_starts_at_the_next_gateway() {
        assert_eq!(
            candidates(&tx(Some("a"), Some(codes::RETRYABLE)), &route(true)),
            vec![name("b"), name("c"), name("a")]
        );
        assert_eq!(
            candidates(&tx(Some("c"), Some(codes::RETRYABLE)), &route(true)),
            vec![name("a"), name("b"), name("c")]
        );
        assert_eq!(
            candidates(&tx(Some("a"), Some(codes::RETRYABLE)), &route(false)),
            vec![name("a")]
        );
    }

    #[test]
    fn a_first_attempt_uses_the_route_in_order() {
        assert_eq!(
            candidates(&tx(None, None), &route(true)),
            vec![name("a"), name("b"), name("c")]
        );
        assert_eq!(candidates(&tx(None, None), &route(false)), vec![name("a")]);
        assert_eq!(
            candidates(&tx(Some("a"), Some(codes::BREAKER_OPEN)), &route(true)),
            vec![name("a"), name("b"), name("c")]
        );
    }
}
