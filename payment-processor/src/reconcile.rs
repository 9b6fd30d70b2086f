//! Reconciliation: transactions stuck mid-flight (a crashed processor, a callback that never
//! came) and `unresolved` ones, settled by asking the provider — the same decision
//! ([`crate::status_step`]) the attempt engine uses after an ambiguous attempt.
//!
//! Cancel-safe (the scheduler drops a pass at shutdown): it only reads the provider (a
//! status query, never a submit), and every write is one version-checked statement, so a
//! dropped reconciliation leaves either no write or a complete one. Its lease then expires.

use chrono::{DateTime, Utc};
use paygate_core::db::transactions;
use paygate_core::domain::clock;
use paygate_core::domain::{Transaction, TransactionId, TransactionStatus};

use crate::attempt::{changed_state, codes, Engine, Outcome, ProcessError};
use crate::status_step::Step;

impl Engine {
    /// Reconciles one transaction stuck in `submitting`/`submitted`: a conclusive, checked
    /// status answer finishes it; anything else hands it to the attempt engine as a payment
    /// pinned to its gateway (`retry_scheduled`, code `ambiguous`), which asks again with
    /// backoff and resubmits only there, with the same reference.
    pub async fn reconcile(&self, id: TransactionId) -> Result<Outcome, ProcessError> {
        self.with_lease(id, |tx| async move {
            if !matches!(
                tx.status,
                TransactionStatus::Submitting | TransactionStatus::Submitted
            ) {
                return Ok(Outcome::Skipped("no longer in flight"));
            }
            // The attempt began (or the provider answered) at the last write.
            let since = tx.ambiguous_since.unwrap_or(tx.updated_at);
            let now = Utc::now();
            if now < clock::after(tx.updated_at, self.reconcile_after(&tx)) {
                // The scan uses the shortest gateway bound; this gateway's is longer.
                return Ok(Outcome::Skipped("not yet due for its gateway"));
            }
            metrics::counter!("paygate_processor_reconciled_total").increment(1);
            let step = match self.status_of(&tx, since, now).await {
                Some(step) => step,
                None => Step::AskAgainAt {
                    at: now,
                    why: "its gateway is not configured here".into(),
                },
            };
            match step {
                Step::Finish { .. } | Step::Mismatch(_) => self.settle(&tx, step).await,
                Step::Executing | Step::AwaitingCustomer => {
                    // Still executing at the provider: look again after `stuck_after`.
                    transactions::touch(&self.pool, tx.id, tx.version).await?;
                    Ok(Outcome::Skipped("provider still executing"))
                }
                Step::AskAgainAt { at, why } => self.hand_back(&tx, since, at, why).await,
                Step::Resubmit => {
                    let why = "stuck mid-flight; resending with the same reference".into();
                    self.hand_back(&tx, since, now, why).await
                }
                // A `submitting` one whose request never arrived: any gateway may take it.
                Step::NeverExecuted => self.hand_back_unpinned(&tx).await,
            }
        })
        .await
    }

    /// One status query about an `unresolved` transaction whose time has come: a
    /// conclusive answer ends it, "never executed" (past the settle window) fails it, and
    /// anything else asks again later — until the horizon, then a person decides.
    pub async fn check_unresolved(&self, id: TransactionId) -> Result<Outcome, ProcessError> {
        self.with_lease(id, |tx| async move {
            if tx.status != TransactionStatus::Unresolved {
                return Ok(Outcome::Skipped("no longer unresolved"));
            }
            let now = Utc::now();
            let since = tx.ambiguous_since.unwrap_or(tx.updated_at);
            let step = self.status_of(&tx, since, now).await;
            metrics::counter!("paygate_processor_unresolved_checks_total").increment(1);
            match step {
                Some(step @ (Step::Finish { .. } | Step::Mismatch(_))) => {
                    self.settle(&tx, step).await
                }
                Some(Step::NeverExecuted) => {
                    let reason = "the provider confirmed, past its settle window, that it never received the payment".to_owned();
                    self.finish(
                        &tx,
                        TransactionStatus::Failed,
                        Some((codes::NOT_EXECUTED, reason)),
                        None,
                    )
                    .await
                }
                Some(Step::AskAgainAt { at, why }) => self.ask_again(&tx, since, now, at, &why).await,
                Some(Step::Executing | Step::AwaitingCustomer) => {
                    let at = self.settings.pacing.next(since, now);
                    self.ask_again(&tx, since, now, at, "the provider is still executing it")
                        .await
                }
                // No status query (or no gateway): only a callback or a person can end it.
                Some(Step::Resubmit) | None => {
                    transactions::reschedule(&self.pool, tx.id, tx.version, None, None).await?;
                    tracing::warn!(id = %tx.id, "unresolved and its provider cannot be asked: left for a callback or a person");
                    Ok(Outcome::StillUnresolved)
                }
            }
        })
        .await
    }

    /// A `requires_action` payment whose customer's time is up: the provider is asked
    /// first, and only what it shows never moved fails.
    /// - a final (checked) answer finishes it, whatever the clock says;
    /// - waiting for the customer, or no record past the settle window: fails with
    ///   `action_expired` (a withdrawal's hold is voided by the ledger in the same commit);
    /// - executing (the customer finished, the provider is at work): `submitted`, for its
    ///   callback or reconciliation;
    /// - the query failed: asked again later, never failed blind;
    /// - no status query: `unresolved` (the customer may have paid), for a person.
    ///
    /// A success reported after the expiry is a conflict with `failed`, flagged for review
    /// by the callback processor: the merchant refunds the customer.
    pub async fn expire_action(&self, id: TransactionId) -> Result<Outcome, ProcessError> {
        self.with_lease(id, |tx| async move {
            if tx.status != TransactionStatus::RequiresAction {
                return Ok(Outcome::Skipped("no longer awaiting the customer"));
            }
            let now = Utc::now();
            let since = tx.updated_at;
            metrics::counter!("paygate_processor_actions_expired_checks_total").increment(1);
            match self.status_of(&tx, since, now).await {
                Some(step @ (Step::Finish { .. } | Step::Mismatch(_))) => {
                    self.settle(&tx, step).await
                }
                Some(Step::AwaitingCustomer | Step::NeverExecuted) => {
                    let reason = "the customer did not finish the payment at the provider in time";
                    self.finish(
                        &tx,
                        TransactionStatus::Failed,
                        Some((codes::ACTION_EXPIRED, reason.to_owned())),
                        None,
                    )
                    .await
                }
                Some(Step::Executing) => {
                    let update = tx.advance(TransactionStatus::Submitted, now)?;
                    Ok(match self.store.apply(&update).await? {
                        Some(_) => Outcome::Submitted,
                        None => Outcome::Skipped("changed while asking the provider"),
                    })
                }
                Some(Step::AskAgainAt { at, why }) => {
                    tracing::info!(id = %tx.id, %why, "expired action: the provider could not say; asking again");
                    transactions::reschedule(&self.pool, tx.id, tx.version, Some(at), None).await?;
                    Ok(Outcome::Skipped("provider could not say"))
                }
                Some(Step::Resubmit) | None => {
                    let reason = "the customer's time is up and the provider cannot be asked whether they paid".to_owned();
                    self.unresolve(&tx, codes::STATUS_UNKNOWN, reason)
                        .await
                }
            }
        })
        .await
    }

    /// How long `tx`'s gateway is given before a stuck payment is asked about.
    fn reconcile_after(&self, tx: &Transaction) -> std::time::Duration {
        tx.routed_gateway
            .as_ref()
            .and_then(|g| self.registry.entry(g))
            .and_then(|e| e.timings.reconcile_after)
            .unwrap_or(self.settings.stuck_after)
    }

    /// Takes the transaction's lease (skipping it when another worker holds it), loads it
    /// and runs `work` on it.
    async fn with_lease<F, Fut>(&self, id: TransactionId, work: F) -> Result<Outcome, ProcessError>
    where
        F: FnOnce(Transaction) -> Fut,
        Fut: std::future::Future<Output = Result<Outcome, ProcessError>>,
    {
        let Some(lease) = self
            .lock
            .try_acquire(
                &paygate_core::lock::transaction_lock(id),
                self.settings.lock_ttl,
            )
            .await
            .map_err(|e| ProcessError::Transient(e.to_string()))?
        else {
            return Ok(Outcome::Skipped("in progress elsewhere"));
        };
        let result = match transactions::get(&self.pool, id).await {
            Ok(Some(tx)) => work(tx).await,
            Ok(None) => Ok(Outcome::Skipped("gone")),
            Err(e) => Err(e.into()),
        };
        let _ = self.lock.release(lease).await;
        if changed_state(&result) {
            self.invalidate_cache(id, &result).await;
        }
        result
    }

    /// Asks the routed gateway; `None` when the transaction has no configured gateway.
    async fn status_of(
        &self,
        tx: &Transaction,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Step> {
        let gateway = tx.routed_gateway.clone()?;
        let entry = self.registry.entry(&gateway)?;
        Some(self.ask(tx, &gateway, &entry, since, now).await)
    }

    /// Applies a conclusive step: the checked verdict, or the flag for a mismatch. The one
    /// place both the attempt engine and reconciliation turn a status answer into a write.
    pub(crate) async fn settle(
        &self,
        tx: &Transaction,
        step: Step,
    ) -> Result<Outcome, ProcessError> {
        match step {
            Step::Finish {
                status,
                failure,
                provider_reference,
            } => {
                let failure = failure.as_ref().map(|(c, r)| (c.as_str(), r.clone()));
                self.finish(tx, status, failure, provider_reference).await
            }
            Step::Mismatch(mismatch) => {
                let gateway = tx.routed_gateway.clone().ok_or_else(|| {
                    ProcessError::Poison("mismatch reported for an unrouted transaction".into())
                })?;
                self.flag_mismatch(tx, &gateway, "status", &mismatch.to_string())
                    .await
            }
            _ => Ok(Outcome::Skipped("not conclusive")),
        }
    }

    /// A stuck transaction goes back to the attempt engine pinned to its gateway, due at `at`.
    async fn hand_back(
        &self,
        tx: &Transaction,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
        why: String,
    ) -> Result<Outcome, ProcessError> {
        let update = tx
            .advance(TransactionStatus::RetryScheduled, Utc::now())?
            .pin_ambiguous(since)
            .retry_at(at)
            .failure(codes::AMBIGUOUS, why);
        Ok(match self.store.apply(&update).await? {
            Some(_) => Outcome::RetryScheduled,
            None => Outcome::Skipped("changed while reconciling"),
        })
    }

    /// A stuck transaction whose provider confirmed, past its settle window, that it never
    /// received it: back to the attempt engine at once, free to fail over.
    async fn hand_back_unpinned(&self, tx: &Transaction) -> Result<Outcome, ProcessError> {
        let now = Utc::now();
        let update = tx
            .advance(TransactionStatus::RetryScheduled, now)?
            .unpin()
            .retry_at(now)
            .failure(
                codes::RETRYABLE,
                "stuck mid-flight; the provider has no record of it after its settle window",
            );
        Ok(match self.store.apply(&update).await? {
            Some(_) => Outcome::RetryScheduled,
            None => Outcome::Skipped("changed while reconciling"),
        })
    }

    /// Schedules the next question about an unresolved transaction, or stops asking once
    /// the reconciliation horizon has passed since its ambiguous attempt.
    async fn ask_again(
        &self,
        tx: &Transaction,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
        at: DateTime<Utc>,
        why: &str,
    ) -> Result<Outcome, ProcessError> {
        let horizon = clock::after(since, self.settings.reconcile_horizon);
        let next = (at < horizon).then_some(at);
        transactions::reschedule(&self.pool, tx.id, tx.version, next, None).await?;
        match next {
            Some(at) => {
                tracing::info!(id = %tx.id, %at, why, "unresolved; asking the provider again later")
            }
            None => {
                metrics::counter!("paygate_processor_unresolved_abandoned_total").increment(1);
                tracing::warn!(id = %tx.id, %now, why, "unresolved past the reconciliation horizon: left for a person (paygate transactions resolve)");
            }
        }
        Ok(Outcome::StillUnresolved)
    }
}
