//! One provider attempt for one transaction: claim, route, call through the breaker,
//! record the outcome. Also the reconciliation of a transaction stuck mid-flight.
//!
//! Safety rests on two things, in this order:
//! 1. every write is version-checked (`db::transactions::apply`), so a second worker that
//!    read the same row cannot claim it again, and a stale worker cannot overwrite;
//! 2. every provider call carries our transaction id as its idempotency reference, so a
//!    retry after an ambiguous outcome cannot execute the payment twice.
//!
//! The Redis lock only keeps two workers from doing the same work at once.

use std::time::Duration;

use chrono::Utc;
use paygate_core::announce;
use paygate_core::bus::trace::TraceParent;
use paygate_core::db::transactions;
use paygate_core::db::DbError;
use paygate_core::domain::{
    GatewayName, InvalidTransition, Transaction, TransactionId, TransactionKind, TransactionStatus,
};
use paygate_core::lock::RedisLock;
use paygate_gateways::breaker::BreakerError;
use paygate_gateways::registry::RegisteredGateway;
use paygate_gateways::{
    GatewayError, GatewayRegistry, ProviderStatus, ReportedStatus, SubmitOutcome, SubmitStatus,
};
use sqlx::PgPool;

use crate::backoff::Backoff;
use crate::routing::{Route, RouteError, Router};

/// `failure.code` values the processor writes. On a non-terminal transaction `failure` is
/// the last attempt's error (like Stripe's `last_payment_error`); the codes also drive the
/// next attempt's routing.
pub mod codes {
    /// The provider may have executed the last attempt: retry only on the same gateway.
    pub const AMBIGUOUS: &str = "ambiguous";
    /// The provider certainly did not execute it: any gateway of the route may retry.
    pub const RETRYABLE: &str = "retryable";
    pub const BREAKER_OPEN: &str = "breaker_open";
    pub const MAX_ATTEMPTS: &str = "max_attempts_exceeded";
    pub const NO_ROUTE: &str = "no_route";
    pub const UNKNOWN_GATEWAY: &str = "unknown_gateway";
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub lock_ttl: Duration,
    pub lock_wait: Duration,
    pub backoff: Backoff,
    pub max_attempts: i32,
    pub breaker_deferral: Duration,
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
    /// A retry is scheduled.
    RetryScheduled,
    /// Terminal now.
    Completed(TransactionStatus),
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
    pub(crate) registry: GatewayRegistry,
    pub(crate) router: Router,
    pub(crate) lock: RedisLock,
    pub(crate) cache: Option<redis::aio::ConnectionManager>,
    pub(crate) cache_prefix: String,
    pub(crate) settings: Settings,
}

impl Engine {
    /// Handles one `transactions.pending` event for `id` at `version`.
    pub async fn process(
        &self,
        id: TransactionId,
        version: i64,
        trace: Option<TraceParent>,
    ) -> Result<Outcome, ProcessError> {
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
        let result = self.process_locked(id, version, trace).await;
        if let Err(error) = self.lock.release(lease).await {
            tracing::warn!(%error, %id, "lock release failed; it expires by itself");
        }
        if matches!(
            result,
            Ok(Outcome::Submitted
                | Outcome::RetryScheduled
                | Outcome::Completed(_)
                | Outcome::Deferred)
        ) {
            self.invalidate_cache(id).await;
        }
        result
    }

    async fn process_locked(
        &self,
        id: TransactionId,
        version: i64,
        trace: Option<TraceParent>,
    ) -> Result<Outcome, ProcessError> {
        let Some(tx) = transactions::get(&self.pool, id).await? else {
            return Err(ProcessError::Poison(format!("unknown transaction {id}")));
        };
        if !matches!(
            tx.status,
            TransactionStatus::Pending | TransactionStatus::RetryScheduled
        ) {
            return Ok(Outcome::Skipped("not claimable"));
        }
        if tx.version != version {
            // A replay of an older event: acting on it would retry before the backoff is over.
            return Ok(Outcome::Skipped("stale event"));
        }
        if tx.attempts >= self.settings.max_attempts {
            let reason = format!("gave up after {} attempts", tx.attempts);
            return self
                .finish(
                    &tx,
                    TransactionStatus::Failed,
                    Some((codes::MAX_ATTEMPTS, reason)),
                    None,
                    trace,
                )
                .await;
        }
        let route = match self.router.route(&tx) {
            Ok(route) => route,
            Err(RouteError::NoRoute) => {
                let reason = "no routing rule matches this transaction".to_owned();
                return self
                    .finish(
                        &tx,
                        TransactionStatus::Failed,
                        Some((codes::NO_ROUTE, reason)),
                        None,
                        trace,
                    )
                    .await;
            }
            Err(error @ RouteError::UnknownGateway(_)) => {
                // Terminal for the merchant, and dead-lettered for the operator to see.
                self.finish(
                    &tx,
                    TransactionStatus::Failed,
                    Some((codes::UNKNOWN_GATEWAY, error.to_string())),
                    None,
                    trace,
                )
                .await?;
                return Err(ProcessError::Poison(error.to_string()));
            }
        };

        let Some((gateway_name, entry)) = self.first_admitting(&candidates(&tx, &route)) else {
            return self.defer(&tx).await;
        };

        let claim = tx
            .advance(TransactionStatus::Submitting, Utc::now())?
            .start_attempt()
            .routed_to(gateway_name.clone());
        let Some(claimed) = transactions::apply(&self.pool, &claim).await? else {
            return Ok(Outcome::Skipped("claimed by another worker"));
        };
        let result = entry
            .breaker
            .call(|| async {
                match claimed.kind {
                    TransactionKind::Deposit => entry.gateway.deposit(&claimed).await,
                    TransactionKind::Withdrawal => entry.gateway.withdraw(&claimed).await,
                }
            })
            .await;
        metrics::gauge!("paygate_breaker_open", "gateway" => gateway_name.to_string()).set(
            f64::from(u8::from(
                entry.breaker.state() != paygate_gateways::breaker::BreakerState::Closed,
            )),
        );
        metrics::counter!("paygate_processor_attempts_total", "gateway" => gateway_name.to_string(), "outcome" => outcome_class(&result))
            .increment(1);
        self.record(&claimed, &route, result, trace).await
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
        let at = Utc::now() + self.settings.breaker_deferral;
        let update = tx
            .advance(TransactionStatus::RetryScheduled, Utc::now())?
            .retry_at(at)
            .failure(
                codes::BREAKER_OPEN,
                "every gateway for this transaction has an open circuit breaker",
            );
        match transactions::apply(&self.pool, &update).await? {
            Some(_) => Ok(Outcome::Deferred),
            None => Ok(Outcome::Skipped("changed while deferring")),
        }
    }

    async fn record(
        &self,
        claimed: &Transaction,
        route: &Route,
        result: Result<SubmitOutcome, BreakerError>,
        trace: Option<TraceParent>,
    ) -> Result<Outcome, ProcessError> {
        let now = Utc::now();
        match result {
            Ok(SubmitOutcome {
                provider_reference,
                status: SubmitStatus::Accepted,
            }) => {
                let update = claimed
                    .advance(TransactionStatus::Submitted, now)?
                    .provider_reference(provider_reference)
                    .clear_failure();
                Ok(match transactions::apply(&self.pool, &update).await? {
                    Some(_) => Outcome::Submitted,
                    // The provider's callback overtook us and already finished it: fine.
                    None => Outcome::Skipped("callback arrived first"),
                })
            }
            Ok(SubmitOutcome {
                provider_reference,
                status: SubmitStatus::Succeeded,
            }) => {
                self.finish(
                    claimed,
                    TransactionStatus::Succeeded,
                    None,
                    Some(provider_reference),
                    trace,
                )
                .await
            }
            Ok(SubmitOutcome {
                provider_reference,
                status: SubmitStatus::Failed { code, reason },
            }) => {
                self.finish(
                    claimed,
                    TransactionStatus::Failed,
                    Some((&code, reason)),
                    Some(provider_reference),
                    trace,
                )
                .await
            }
            Err(BreakerError::Rejected { rejection, .. }) => {
                // Refused at the last moment (another worker took the half-open probe): the
                // provider was not called, so the attempt is given back.
                let update = claimed
                    .advance(TransactionStatus::RetryScheduled, now)?
                    .refund_attempt()
                    .retry_at(now + self.settings.breaker_deferral)
                    .failure(codes::BREAKER_OPEN, rejection.to_string());
                self.schedule(update).await
            }
            Err(BreakerError::Gateway(GatewayError::Permanent { code, reason })) => {
                self.finish(
                    claimed,
                    TransactionStatus::Failed,
                    Some((&code, reason)),
                    None,
                    trace,
                )
                .await
            }
            Err(BreakerError::Gateway(GatewayError::Retryable {
                reason,
                retry_after,
            })) => {
                // Fail over at once when another gateway of the route can take it; else back off.
                let failover_ready = route.failover
                    && route.gateways.iter().any(|g| {
                        Some(g) != claimed.routed_gateway.as_ref()
                            && self.registry.breaker(g).is_some_and(|b| b.would_admit())
                    });
                let delay = if failover_ready {
                    Duration::ZERO
                } else {
                    self.settings
                        .backoff
                        .delay(claimed.attempts, &mut rand::rng())
                        .max(retry_after.unwrap_or_default())
                };
                self.retry_or_give_up(claimed, codes::RETRYABLE, reason, delay, trace)
                    .await
            }
            Err(BreakerError::Gateway(GatewayError::Ambiguous { reason })) => {
                let delay = self
                    .settings
                    .backoff
                    .delay(claimed.attempts, &mut rand::rng());
                self.retry_or_give_up(claimed, codes::AMBIGUOUS, reason, delay, trace)
                    .await
            }
        }
    }

    /// Schedules the next attempt after `delay`, recording the last error under `code`
    /// (which steers the next attempt's routing), or fails the transaction with
    /// `max_attempts_exceeded` once its attempts are used up.
    async fn retry_or_give_up(
        &self,
        tx: &Transaction,
        code: &str,
        reason: String,
        delay: Duration,
        trace: Option<TraceParent>,
    ) -> Result<Outcome, ProcessError> {
        if tx.attempts >= self.settings.max_attempts {
            let reason = format!("gave up after {} attempts; last: {reason}", tx.attempts);
            return self
                .finish(
                    tx,
                    TransactionStatus::Failed,
                    Some((codes::MAX_ATTEMPTS, reason)),
                    None,
                    trace,
                )
                .await;
        }
        let now = Utc::now();
        let update = tx
            .advance(TransactionStatus::RetryScheduled, now)?
            .retry_at(now + delay)
            .failure(code, reason);
        self.schedule(update).await
    }

    async fn schedule(
        &self,
        update: paygate_core::domain::TransactionUpdate,
    ) -> Result<Outcome, ProcessError> {
        Ok(match transactions::apply(&self.pool, &update).await? {
            Some(_) => Outcome::RetryScheduled,
            None => Outcome::Skipped("changed while scheduling a retry"),
        })
    }

    /// Moves to a terminal state and announces it, in one commit.
    async fn finish(
        &self,
        tx: &Transaction,
        status: TransactionStatus,
        failure: Option<(&str, String)>,
        provider_reference: Option<String>,
        trace: Option<TraceParent>,
    ) -> Result<Outcome, ProcessError> {
        let mut update = tx.advance(status, Utc::now())?;
        update = match failure {
            Some((code, reason)) => update.failure(code, reason),
            None => update.clear_failure(),
        };
        if let Some(reference) = provider_reference {
            update = update.provider_reference(reference);
        }
        let message = announce::completed(&update.next, trace);
        Ok(
            match transactions::apply_and_announce(&self.pool, &update, Some(&message)).await? {
                Some(done) => {
                    metrics::counter!("paygate_processor_completed_total", "status" => done.status.as_str()).increment(1);
                    Outcome::Completed(done.status)
                }
                None => Outcome::Skipped("changed while finishing"),
            },
        )
    }

    /// Reconciles one transaction stuck in `submitting`/`submitted`: asks the provider where
    /// it can, else schedules a retry on the same gateway with the same reference.
    ///
    /// Cancel-safe (the scheduler drops it at shutdown): it only reads the provider (a
    /// status query, never a submit), and every write is one version-checked statement
    /// (`transactions::apply`, `apply_and_announce`, `touch`), so a dropped reconciliation
    /// leaves either no write or a complete one. Its lease is then left to expire.
    pub async fn reconcile(&self, id: TransactionId) -> Result<Outcome, ProcessError> {
        let Some(lease) = self
            .lock
            .try_acquire(&lock_name(id), self.settings.lock_ttl)
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?
        else {
            return Ok(Outcome::Skipped("in progress elsewhere"));
        };
        let result = self.reconcile_locked(id).await;
        let _ = self.lock.release(lease).await;
        if matches!(result, Ok(Outcome::RetryScheduled | Outcome::Completed(_))) {
            self.invalidate_cache(id).await;
        }
        result
    }

    async fn reconcile_locked(&self, id: TransactionId) -> Result<Outcome, ProcessError> {
        let Some(tx) = transactions::get(&self.pool, id).await? else {
            return Ok(Outcome::Skipped("gone"));
        };
        if !matches!(
            tx.status,
            TransactionStatus::Submitting | TransactionStatus::Submitted
        ) {
            return Ok(Outcome::Skipped("no longer in flight"));
        }
        let entry = tx
            .routed_gateway
            .as_ref()
            .and_then(|g| self.registry.entry(g));
        let report = match &entry {
            Some(entry) => entry
                .breaker
                .call(|| entry.gateway.status(&tx))
                .await
                .unwrap_or(ProviderStatus::Unsupported),
            None => ProviderStatus::Unsupported,
        };
        metrics::counter!("paygate_processor_reconciled_total").increment(1);
        match report {
            ProviderStatus::Final(ReportedStatus::Succeeded) => {
                self.finish(&tx, TransactionStatus::Succeeded, None, None, None)
                    .await
            }
            ProviderStatus::Final(ReportedStatus::Failed { code, reason }) => {
                self.finish(
                    &tx,
                    TransactionStatus::Failed,
                    Some((&code, reason)),
                    None,
                    None,
                )
                .await
            }
            ProviderStatus::InProgress => {
                transactions::touch(&self.pool, tx.id, tx.version).await?;
                Ok(Outcome::Skipped("provider still executing"))
            }
            // Never executed: any gateway may take it, no backoff needed.
            ProviderStatus::NotFound => {
                let reason = "the provider has no record of the stuck attempt".to_owned();
                self.retry_or_give_up(&tx, codes::RETRYABLE, reason, Duration::ZERO, None)
                    .await
            }
            ProviderStatus::Unsupported => {
                let reason =
                    "stuck mid-flight; retrying with the same idempotency reference".to_owned();
                self.retry_or_give_up(&tx, codes::AMBIGUOUS, reason, Duration::ZERO, None)
                    .await
            }
        }
    }

    async fn invalidate_cache(&self, id: TransactionId) {
        if let Some(mut cache) = self.cache.clone() {
            paygate_core::cache_keys::invalidate_transaction(&mut cache, &self.cache_prefix, id)
                .await;
        }
    }
}

fn lock_name(id: TransactionId) -> String {
    paygate_core::lock::transaction_lock(id)
}

/// The gateways this attempt may use, in order.
pub fn candidates(tx: &Transaction, route: &Route) -> Vec<GatewayName> {
    let last_code = tx.failure.as_ref().map(|f| f.code.as_str());
    match (&tx.routed_gateway, last_code) {
        // The last attempt may have executed: only that provider knows our reference.
        (Some(previous), Some(codes::AMBIGUOUS)) => vec![previous.clone()],
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
            status: SubmitStatus::Failed { .. },
            ..
        }) => "declined",
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
