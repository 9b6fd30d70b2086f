//! One provider call for one refund: claim (version-checked, attempt counted), call the
//! payment's gateway through its breaker with the refund's own id, record the answer.
//!
//! How each answer is taken, and why:
//! - `Succeeded` → `succeeded` (the ledger posts the hold in that commit);
//! - `Pending` → `submitted`: the provider finishes it and says so by callback. There is no
//!   status query for refunds in the gateway trait, so one stuck `submitted` stays visible
//!   as such (never guessed at) until its callback or a person;
//! - `Failed` / `Permanent` → `failed` (the hold is voided);
//! - `Retryable` → stays `pending`, retried after the backoff (at least `Retry-After`);
//! - `Ambiguous` → stays `pending` and the *same* call is repeated later with the same refund
//!   id, which providers dedupe on: it may have executed, so it is never failed automatically.
//!   Retryable answers are not failed after N attempts either, for the same reason: an
//!   earlier attempt of the same refund may have been ambiguous.
//!
//! The claim pushes the due time forward before the call, so a processor that dies in the
//! middle leaves a refund the scheduler re-announces later (the repeat is deduped by the
//! provider on the refund id).

use std::time::Duration;

use chrono::Utc;
use paygate_core::announce;
use paygate_core::db::{refunds, transactions};
use paygate_core::domain::{
    clock, Failure, Refund, RefundId, RefundState, RefundUpdate, Transaction,
};
use paygate_gateways::breaker::BreakerError;
use paygate_gateways::{GatewayError, RefundOutcome, RefundRequest, RefundStatus};

use crate::attempt::{Engine, ProcessError};

/// What handling one refund event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundHandled {
    /// Nothing to do: stale or duplicate event, not pending, or claimed elsewhere.
    Skipped(&'static str),
    /// The provider took it; its callback finishes it.
    Submitted,
    /// Another call is scheduled (retryable, ambiguous, breaker open).
    Retrying,
    /// Terminal now.
    Completed(RefundState),
}

/// How long a claimed refund waits before the scheduler may announce it again (a crashed
/// processor's refund is retried after this, with the same id).
const CLAIM_GRACE: Duration = Duration::from_secs(60);

impl Engine {
    /// Handles one refund event for `id` at `version`.
    pub async fn process_refund(
        &self,
        id: RefundId,
        version: i64,
    ) -> Result<RefundHandled, ProcessError> {
        let lease = self
            .lock
            .acquire(
                &format!("refund:{id}"),
                self.settings.lock_ttl,
                self.settings.lock_wait,
            )
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?
            .ok_or_else(|| ProcessError::Transient(format!("{id} is locked by another worker")))?;
        let result = self.refund_locked(id, version).await;
        if let Err(error) = self.lock.release(lease).await {
            tracing::warn!(%error, %id, "lock release failed; it expires by itself");
        }
        result
    }

    async fn refund_locked(
        &self,
        id: RefundId,
        version: i64,
    ) -> Result<RefundHandled, ProcessError> {
        let refund = refunds::get(&self.pool, id)
            .await?
            .ok_or_else(|| ProcessError::Poison(format!("no refund {id}")))?;
        if refund.status != RefundState::Pending {
            return Ok(RefundHandled::Skipped("not pending"));
        }
        if refund.version != version {
            return Ok(RefundHandled::Skipped("stale event"));
        }
        let payment = transactions::get(&self.pool, refund.transaction_id)
            .await?
            .ok_or_else(|| ProcessError::Poison(format!("refund {id}: no payment")))?;
        let Some(gateway) = payment
            .routed_gateway
            .clone()
            .or_else(|| payment.gateway.clone())
        else {
            let failure = failure("no_gateway", "the payment was never routed to a gateway");
            return self
                .finish_refund(&payment, &refund, RefundState::Failed, None, Some(failure))
                .await;
        };
        let Some(entry) = self.registry.entry(&gateway) else {
            // Configuration may bring it back: wait rather than fail money that may move.
            let failure = failure(
                "gateway_unknown",
                &format!("gateway {gateway} is not configured"),
            );
            return self
                .retry_refund(&refund, self.settings.breaker_deferral, Some(failure))
                .await;
        };
        if !entry.breaker.would_admit() {
            let failure = failure("breaker_open", "the gateway's circuit breaker is open");
            return self
                .retry_refund(&refund, self.settings.breaker_deferral, Some(failure))
                .await;
        }
        let now = Utc::now();
        let mut claim = refund.retry_at(clock::after(now, CLAIM_GRACE), None, now);
        claim.next.attempts = refund.attempts.saturating_add(1);
        let Some(claimed) = refunds::apply_with_event(&self.pool, &claim, None).await? else {
            return Ok(RefundHandled::Skipped("claimed by another worker"));
        };
        let request = RefundRequest {
            id: claimed.id,
            money: claimed.money,
        };
        let result = entry
            .breaker
            .call(|| entry.gateway.refund(&payment, &request))
            .await;
        metrics::counter!("paygate_processor_refund_attempts_total", "gateway" => gateway.to_string(), "outcome" => class(&result))
            .increment(1);
        self.record_refund(&payment, &claimed, result).await
    }

    async fn record_refund(
        &self,
        payment: &Transaction,
        claimed: &Refund,
        result: Result<RefundOutcome, BreakerError>,
    ) -> Result<RefundHandled, ProcessError> {
        match result {
            Ok(RefundOutcome {
                provider_reference,
                status,
            }) => {
                let (to, failed) = match status {
                    RefundStatus::Succeeded => (RefundState::Succeeded, None),
                    RefundStatus::Pending => (RefundState::Submitted, None),
                    RefundStatus::Failed { code, reason } => {
                        (RefundState::Failed, Some(failure(&code, &reason)))
                    }
                };
                self.finish_refund(payment, claimed, to, Some(provider_reference), failed)
                    .await
            }
            Err(BreakerError::Gateway(GatewayError::Permanent { code, reason })) => {
                self.finish_refund(
                    payment,
                    claimed,
                    RefundState::Failed,
                    None,
                    Some(failure(&code, &reason)),
                )
                .await
            }
            Err(BreakerError::Gateway(GatewayError::Retryable {
                reason,
                retry_after,
            })) => {
                let delay = self.retry_delay(claimed.attempts, retry_after);
                self.retry_refund(claimed, delay, Some(failure("retryable", &reason)))
                    .await
            }
            Err(BreakerError::Gateway(GatewayError::Ambiguous { reason })) => {
                let delay = self.retry_delay(claimed.attempts, None);
                self.retry_refund(claimed, delay, Some(failure("ambiguous", &reason)))
                    .await
            }
            Err(BreakerError::Rejected { .. }) => {
                let delay = self.settings.breaker_deferral;
                self.retry_refund(
                    claimed,
                    delay,
                    Some(failure(
                        "breaker_open",
                        "the gateway's circuit breaker is open",
                    )),
                )
                .await
            }
        }
    }

    /// A state change with its announcement (terminal ones tell the merchant, at the refunded
    /// `payment`'s `callback_url` too) and the ledger's posting or void, in one commit.
    async fn finish_refund(
        &self,
        payment: &Transaction,
        refund: &Refund,
        to: RefundState,
        provider_reference: Option<String>,
        failed: Option<Failure>,
    ) -> Result<RefundHandled, ProcessError> {
        let mut update: RefundUpdate = refund
            .transition(to, Utc::now())
            .map_err(|e| ProcessError::Poison(e.to_string()))?;
        if provider_reference.is_some() {
            update.next.provider_reference = provider_reference;
        }
        update.next.failure = if to == RefundState::Failed {
            failed
        } else {
            None
        };
        let event = announce::refund_event(&update.next, payment.callback_url.as_deref())?;
        match refunds::apply_with_event(&self.pool, &update, event.as_ref()).await? {
            None => Ok(RefundHandled::Skipped("changed by another writer")),
            Some(done) if done.status.is_terminal() => {
                tracing::info!(refund = %done.id, status = %done.status, "refund finished");
                // The hold was posted or voided: the merchant's cached balance is stale.
                if let Some(mut cache) = self.cache.clone() {
                    paygate_core::cache_keys::invalidate_balance(
                        &mut cache,
                        &self.cache_prefix,
                        done.merchant_id,
                    )
                    .await;
                }
                Ok(RefundHandled::Completed(done.status))
            }
            Some(_) => Ok(RefundHandled::Submitted),
        }
    }

    /// Stays pending; the scheduler announces it again after `delay`.
    async fn retry_refund(
        &self,
        refund: &Refund,
        delay: Duration,
        why: Option<Failure>,
    ) -> Result<RefundHandled, ProcessError> {
        let now = Utc::now();
        let update = refund.retry_at(clock::after(now, delay), why, now);
        match refunds::apply_with_event(&self.pool, &update, None).await? {
            None => Ok(RefundHandled::Skipped("changed by another writer")),
            Some(_) => Ok(RefundHandled::Retrying),
        }
    }
}

fn failure(code: &str, message: &str) -> Failure {
    Failure {
        code: code.to_owned(),
        message: message.chars().take(500).collect(),
    }
}

fn class(result: &Result<RefundOutcome, BreakerError>) -> &'static str {
    match result {
        Ok(RefundOutcome {
            status: RefundStatus::Succeeded,
            ..
        }) => "succeeded",
        Ok(RefundOutcome {
            status: RefundStatus::Pending,
            ..
        }) => "pending",
        Ok(RefundOutcome {
            status: RefundStatus::Failed { .. },
            ..
        }) => "failed",
        Err(BreakerError::Rejected { .. }) => "breaker_rejected",
        Err(BreakerError::Gateway(GatewayError::Permanent { .. })) => "permanent",
        Err(BreakerError::Gateway(GatewayError::Retryable { .. })) => "retryable",
        Err(BreakerError::Gateway(GatewayError::Ambiguous { .. })) => "ambiguous",
    }
}
