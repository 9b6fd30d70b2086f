//! The Kafka handler: one `CallbackReceived` envelope → parse with the gateway → settle
//! under the Redis lock keyed by transaction id → drop the API's cache entry.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
use paygate_core::bus::events::{Body, CallbackReceived, Envelope};
use paygate_core::bus::{Delivery, Handler, HandlerError};
use paygate_core::config::Config;
use paygate_core::domain::{GatewayName, MerchantId, TransactionId};
use paygate_core::lock::{Lease, RedisLock};
use paygate_gateways::{
    CallbackAuth, CallbackEvent, CallbackRequest, GatewayError, GatewayRegistry, ProviderStatus,
    ReportedStatus,
};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::decide::Outcome;
use crate::settle::{settle, ReceivedCallback, SettleError, SettleWriter, Settled};

/// Reasons sent to the DLQ and logs are cut to this many characters (a connector's error
/// could quote input; a callback body must never reach a log).
const MAX_REASON_CHARS: usize = 200;

/// A callback authenticated and parsed by its gateway.
struct ParsedEvent {
    gateway: GatewayName,
    event: CallbackEvent,
    received_at: DateTime<chrono::Utc>,
}

/// Settles callbacks; the [`Handler`] the consumer runner drives.
pub struct CallbackHandler {
    pool: PgPool,
    /// Settling statements, written by group commit (`settle`).
    writer: SettleWriter,
    registry: GatewayRegistry,
    lock: RedisLock,
    redis: ConnectionManager,
    cache_prefix: String,
    lock_ttl: Duration,
    lock_wait: Duration,
}

/// The lock name (under `<redis.key_prefix>:lock:`) that serialises work on one
/// transaction; the payment processor uses the same name, so a callback and an attempt on
/// one transaction do not run at once.
pub fn lock_name(id: TransactionId) -> String {
    paygate_core::lock::transaction_lock(id)
}

impl CallbackHandler {
    pub fn new(
        pool: PgPool,
        registry: GatewayRegistry,
        redis: ConnectionManager,
        config: &Config,
    ) -> Self {
        Self {
            writer: SettleWriter::start(pool.clone(), config.callbacks.settle_batch_max),
            pool,
            registry,
            lock: RedisLock::new(redis.clone(), config.redis.key_prefix.clone()),
            redis,
            cache_prefix: config.redis.key_prefix.clone(),
            lock_ttl: config.callbacks.lock_ttl,
            lock_wait: config.callbacks.lock_wait,
        }
    }

    /// Handles one delivery and says what became of it. `Reject` for a message that can
    /// never be settled (dead-lettered), `Retry` for a passing failure.
    pub async fn process(&self, delivery: &Delivery) -> Result<Settled, HandlerError> {
        let parsed = self.parse_event(delivery)?;
        self.process_payment(delivery, parsed).await
    }

    async fn process_payment(
        &self,
        delivery: &Delivery,
        parsed: ParsedEvent,
    ) -> Result<Settled, HandlerError> {
        let mut callback = self.payment(delivery, parsed)?;
        callback.contradicted = self.confirm_unsigned(&callback).await?;
        let id = callback.outcome.transaction_id;
        let lease = self.lock(id).await?;
        let settled = settle(&self.writer, &callback).await;
        if let Some(lease) = lease {
            match self.lock.release(lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(transaction = %id, "lock lease expired before release; the version check kept the write safe")
                }
                Err(error) => {
                    tracing::warn!(transaction = %id, %error, "could not release lock; it expires by itself")
                }
            }
        }
        let settled = match settled {
            Ok(settled) => settled,
            Err(SettleError::UnknownTransaction(id)) => {
                count("unknown");
                tracing::warn!(gateway = %callback.gateway, transaction = %id, "callback for an unknown transaction; dead-lettering");
                return Err(HandlerError::Reject(format!("unknown transaction {id}")));
            }
            Err(error) => return Err(HandlerError::Retry(error.to_string())),
        };
        // After the commit; also after a duplicate, which covers a crash between a commit
        // and this DEL. A failure only leaves the entry to its short TTL.
        if matches!(settled.outcome, Outcome::Applied | Outcome::Duplicate) {
            // A final state moved money: the merchant's balance changed with it.
            let merchant = settled
                .transaction
                .status
                .is_terminal()
                .then_some(settled.transaction.merchant_id);
            self.invalidate_cache(id, merchant).await;
        }
        report(&callback, &settled);
        Ok(settled)
    }

    /// Decodes the envelope and authenticates and parses the callback with its gateway,
    /// exactly as the API did (freshness is judged against the receipt time, so a queued
    /// callback parses the same later).
    fn parse_event(&self, delivery: &Delivery) -> Result<ParsedEvent, HandlerError> {
        let envelope = Envelope::decode_checked(&delivery.payload)
            .map_err(|e| reject("invalid", format!("undecodable event: {e}")))?;
        let Some(Body::CallbackReceived(received)) = envelope.body else {
            return Err(reject("invalid", "not a CallbackReceived event".to_owned()));
        };
        let CallbackReceived {
            gateway,
            content_type,
            body,
            headers,
            received_at_unix_ms,
            path,
        } = received;
        let name = GatewayName::parse(&gateway)
            .map_err(|_| reject("invalid", "malformed gateway name".to_owned()))?;
        let connector = self
            .registry
            .get(&name)
            .ok_or_else(|| reject("invalid", format!("gateway {name} is not configured")))?;
        let received_at = DateTime::from_timestamp_millis(received_at_unix_ms)
            .ok_or_else(|| reject("invalid", "receipt time out of range".to_owned()))?;
        let request = CallbackRequest {
            body: Bytes::from(body),
            content_type: Some(content_type).filter(|c| !c.is_empty()),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect::<BTreeMap<_, _>>(),
            received_at,
            path: Some(path).filter(|p| !p.is_empty()),
        };
        let event = connector
            .handle_callback(&request)
            .map_err(|e| reject("invalid", format!("callback refused by {name}: {e}")))?;
        Ok(ParsedEvent {
            gateway: name,
            event,
            received_at,
        })
    }

    /// The payment outcome of a parsed callback (anything else is refused here).
    fn payment(
        &self,
        delivery: &Delivery,
        parsed: ParsedEvent,
    ) -> Result<ReceivedCallback, HandlerError> {
        let ParsedEvent {
            gateway: name,
            event,
            received_at,
        } = parsed;
        let outcome = match event {
            CallbackEvent::Payment(outcome) => outcome,
            other => {
                return Err(reject(
                    "invalid",
                    format!("not a payment callback: {other:?}"),
                ))
            }
        };
        if let Some(key) = delivery.key_str() {
            if key != outcome.transaction_id.to_string() {
                tracing::warn!(gateway = %name, transaction = %outcome.transaction_id, "message key is not the callback's transaction id");
            }
        }
        Ok(ReceivedCallback {
            gateway: name,
            outcome,
            received_at,
            traceparent: delivery.traceparent(),
            contradicted: None,
        })
    }

    /// An unsigned provider's callback ([`CallbackAuth::PathToken`]) is believed only when
    /// the provider's status query says the same: `Ok(None)` confirmed (or a signed
    /// provider: nothing to confirm), `Ok(Some(why))` contradicted (flagged, not applied),
    /// `Retry` when the provider cannot say yet (asked again with the message's backoff).
    async fn confirm_unsigned(
        &self,
        callback: &ReceivedCallback,
    ) -> Result<Option<String>, HandlerError> {
        let Some(connector) = self.registry.get(&callback.gateway) else {
            return Ok(None);
        };
        if connector.callback_auth() != CallbackAuth::PathToken {
            return Ok(None);
        }
        let id = callback.outcome.transaction_id;
        let tx = paygate_core::db::transactions::get(&self.pool, id)
            .await
            .map_err(|e| HandlerError::Retry(e.to_string()))?
            .ok_or_else(|| HandlerError::Reject(format!("unknown transaction {id}")))?;
        let answer = connector.status(&tx).await;
        let verdict = confirmation(&callback.outcome.status, &answer);
        metrics::counter!("paygate_callbacks_confirmations_total", "gateway" => callback.gateway.to_string(), "verdict" => match &verdict {
            Confirmation::Confirmed => "confirmed",
            Confirmation::Contradicted(_) => "contradicted",
            Confirmation::Undecided(_) => "undecided",
        })
        .increment(1);
        match verdict {
            Confirmation::Confirmed => Ok(None),
            Confirmation::Contradicted(why) => {
                tracing::warn!(gateway = %callback.gateway, transaction = %id, %why, "unsigned callback contradicted by the provider; flagged");
                Ok(Some(why))
            }
            Confirmation::Undecided(why) => Err(HandlerError::Retry(format!(
                "unsigned callback for {id} not yet confirmed: {why}"
            ))),
        }
    }

    /// The lease on the transaction. Busy past `lock_wait` → retry later. Redis down →
    /// proceed without it: the lock only saves work, the version check and the unique
    /// event id keep the data right, and callbacks keep flowing.
    async fn lock(&self, id: TransactionId) -> Result<Option<Lease>, HandlerError> {
        match self
            .lock
            .acquire(&lock_name(id), self.lock_ttl, self.lock_wait)
            .await
        {
            Ok(Some(lease)) => Ok(Some(lease)),
            Ok(None) => Err(HandlerError::Retry(format!(
                "transaction {id} is locked by another worker"
            ))),
            Err(error) => {
                metrics::counter!("paygate_callbacks_unlocked_total").increment(1);
                tracing::warn!(transaction = %id, %error, "redis lock unavailable; settling without it (the version check is the guarantee)");
                Ok(None)
            }
        }
    }

    async fn invalidate_cache(&self, id: TransactionId, merchant: Option<MerchantId>) {
        let mut conn = self.redis.clone();
        paygate_core::cache_keys::invalidate_transaction(
            &mut conn,
            &self.cache_prefix,
            id,
            merchant,
        )
        .await;
    }
}

#[async_trait]
impl Handler for CallbackHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let parsed = self.parse_event(delivery)?;
        if let CallbackEvent::Refund(report) = parsed.event {
            let settled = crate::refund::settle(&self.pool, &parsed.gateway, &report).await;
            return match settled {
                Ok((outcome, merchant)) => {
                    count(outcome.as_str());
                    if let Some(merchant) = merchant {
                        let mut conn = self.redis.clone();
                        paygate_core::cache_keys::invalidate_balance(
                            &mut conn,
                            &self.cache_prefix,
                            merchant,
                        )
                        .await;
                    }
                    tracing::info!(gateway = %parsed.gateway, transaction = %report.transaction_id, outcome = outcome.as_str(), "refund callback settled");
                    Ok(())
                }
                Err(crate::refund::RefundSettleError::Unknown) => Err(reject(
                    "unknown",
                    format!(
                        "refund callback for an unknown refund of {}",
                        report.transaction_id
                    ),
                )),
                Err(crate::refund::RefundSettleError::Db(error)) => {
                    Err(HandlerError::Retry(error.to_string()))
                }
                Err(crate::refund::RefundSettleError::Raced) => Err(HandlerError::Retry(
                    "the refund changed while its callback was settled".to_owned(),
                )),
            };
        }
        self.process_payment(delivery, parsed).await.map(|_| ())
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("paygate_callbacks_total", "outcome" => outcome).increment(1);
}

fn reject(outcome: &'static str, reason: String) -> HandlerError {
    count(outcome);
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    HandlerError::Reject(reason)
}

fn report(callback: &ReceivedCallback, settled: &Settled) {
    count(settled.outcome.as_str());
    let gateway = &callback.gateway;
    let transaction = settled.transaction.id;
    let event = &callback.outcome.provider_event_id;
    let detail = settled.detail.as_deref().unwrap_or("");
    match settled.outcome {
        Outcome::Applied => tracing::info!(%gateway, %transaction, provider_event_id = %event,
            status = %settled.transaction.status, version = settled.transaction.version, "callback applied"),
        Outcome::Duplicate if settled.needs_review => tracing::warn!(%gateway, %transaction,
            provider_event_id = %event, needs_review = true, detail, "duplicate callback with different content"),
        Outcome::Duplicate => {
            tracing::debug!(%gateway, %transaction, provider_event_id = %event, "duplicate callback acknowledged")
        }
        Outcome::Late => tracing::info!(%gateway, %transaction, provider_event_id = %event, detail,
            "late callback recorded, not applied"),
        Outcome::Conflict | Outcome::Mismatch => tracing::warn!(%gateway, %transaction,
            provider_event_id = %event, outcome = %settled.outcome, needs_review = settled.needs_review, detail,
            "callback flagged for review, not applied"),
    }
}

/// What a provider's status answer says of an unsigned callback's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// The provider's final answer is the callback's.
    Confirmed,
    /// The provider says otherwise: why.
    Contradicted(String),
    /// The provider cannot say yet (executing, lagging, unreachable): why.
    Undecided(String),
}

/// Compares an unsigned callback's reported outcome with the provider's status answer.
/// Only a final answer with the same verdict confirms; a final answer with the other
/// verdict contradicts; a provider without a status query for the payment confirms a
/// success only; anything else decides nothing yet.
pub fn confirmation(
    reported: &ReportedStatus,
    answer: &Result<ProviderStatus, GatewayError>,
) -> Confirmation {
    let same = |a: &ReportedStatus, b: &ReportedStatus| {
        matches!(
            (a, b),
            (ReportedStatus::Succeeded, ReportedStatus::Succeeded)
                | (ReportedStatus::Failed { .. }, ReportedStatus::Failed { .. })
        )
    };
    match answer {
        Ok(ProviderStatus::Final { status, .. }) if same(status, reported) => {
            Confirmation::Confirmed
        }
        Ok(ProviderStatus::Final { status, .. }) => Confirmation::Contradicted(format!(
            "the callback reports {reported:?}, the status query {status:?}"
        )),
        // The provider has no status query for this payment (M-Pesa's B2C payouts): a
        // success is believed on the secret path token, a failure never (believing a forged
        // one would release a payout the merchant may then pay again): flagged for a person.
        Ok(ProviderStatus::Unsupported) => match reported {
            ReportedStatus::Succeeded => Confirmation::Confirmed,
            ReportedStatus::Failed { .. } => Confirmation::Contradicted(
                "a failure the provider offers no status query to confirm".into(),
            ),
        },
        Ok(other) => Confirmation::Undecided(format!("status query answered {other:?}")),
        Err(error) => Confirmation::Undecided(format!("status query failed: {error}")),
    }
}

#[cfg(test)]
mod confirmation_tests {
    use super::*;

    #[test]
    fn only_the_same_final_verdict_confirms() {
        let failed = ReportedStatus::Failed {
            code: "cancelled".into(),
            reason: "1032".into(),
        };
        let fin = |status: ReportedStatus| {
            Ok(ProviderStatus::Final {
                status,
                reported: Default::default(),
            })
        };
        assert_eq!(
            confirmation(&ReportedStatus::Succeeded, &fin(ReportedStatus::Succeeded)),
            Confirmation::Confirmed
        );
        assert_eq!(
            confirmation(&failed, &fin(failed.clone())),
            Confirmation::Confirmed
        );
        assert!(matches!(
            confirmation(&ReportedStatus::Succeeded, &fin(failed.clone())),
            Confirmation::Contradicted(_)
        ));
        assert!(matches!(
            confirmation(&failed, &fin(ReportedStatus::Succeeded)),
            Confirmation::Contradicted(_)
        ));
        assert_eq!(
            confirmation(&ReportedStatus::Succeeded, &Ok(ProviderStatus::Unsupported)),
            Confirmation::Confirmed
        );
        assert!(matches!(
            confirmation(&failed, &Ok(ProviderStatus::Unsupported)),
            Confirmation::Contradicted(_)
        ));
        for answer in [
            Ok(ProviderStatus::InProgress),
            Ok(ProviderStatus::NotFound),
            Ok(ProviderStatus::AwaitingCustomer),
            Err(GatewayError::Ambiguous {
                reason: "timeout".into(),
            }),
        ] {
            assert!(matches!(
                confirmation(&ReportedStatus::Succeeded, &answer),
                Confirmation::Undecided(_)
            ));
        }
    }
}
