//! The Kafka side: a completed transaction becomes one recorded event and its scheduled
//! deliveries, durably, and nothing more (no HTTP here, so a slow merchant never holds up
//! the consumer). Replaying a message changes nothing: the event id is derived from
//! (transaction, status).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use paygate_core::bus::events::{Body, Envelope, RefundCompleted};
use paygate_core::bus::{Delivery, Handler, HandlerError};
use paygate_core::db::webhooks::{self, EventType, NewEvent};
use paygate_core::db::{refunds, transactions};
use paygate_core::domain::{RefundId, RefundState, TransactionId, TransactionStatus};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::metrics;
use crate::payload;

pub(crate) struct CompletedHandler {
    pub pool: PgPool,
    pub wake: Arc<Notify>,
}

#[async_trait]
impl Handler for CompletedHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = Envelope::decode_checked(&delivery.payload)
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        let completed = match envelope.body {
            Some(Body::TransactionCompleted(completed)) => completed,
            Some(Body::RefundCompleted(refund)) => return self.refund(refund).await,
            _ => {
                return Err(HandlerError::Reject(
                    "not a TransactionCompleted or RefundCompleted event".to_owned(),
                ))
            }
        };
        let id = TransactionId::parse(&completed.transaction_id)
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        let status: TransactionStatus =
            completed
                .status
                .parse()
                .map_err(|e: paygate_core::domain::UnknownVariant| {
                    HandlerError::Reject(e.to_string())
                })?;
        let event_type = EventType::for_status(status).ok_or_else(|| {
            HandlerError::Reject(format!("{status} is not a status merchants are told of"))
        })?;
        let transaction = transactions::get(&self.pool, id)
            .await
            .map_err(|e| HandlerError::Retry(e.to_string()))?
            .ok_or_else(|| HandlerError::Reject(format!("transaction {id} does not exist")))?;
        if !status.is_terminal() && transaction.status != status {
            // Moved on since (`unresolved` resolved, `requires_action` completed): its own
            // event follows, and the old state is no longer true, so it is not told.
            tracing::debug!(transaction = %id, now = %transaction.status, "unresolved event outdated; skipped");
            return Ok(());
        }
        if transaction.status != status {
            // Terminal states never change, and the row is written before the event.
            return Err(HandlerError::Reject(format!(
                "transaction {id} is {}, the event says {status}",
                transaction.status
            )));
        }
        let event_id = webhooks::event_id_for(id, status);
        let body = payload::event_body(event_id, event_type, &transaction, Utc::now())
            .map_err(|e| HandlerError::Reject(format!("cannot serialise the event: {e}")))?;
        let recorded = webhooks::record_event(
            &self.pool,
            &NewEvent {
                id: event_id,
                merchant_id: transaction.merchant_id,
                transaction_id: id,
                event_type,
                payload: body,
                callback_url: transaction.callback_url.clone(),
            },
        )
        .await
        .map_err(|e| HandlerError::Retry(e.to_string()))?;
        if recorded.created {
            metrics::event_recorded(event_type.as_str());
            tracing::info!(event = %event_id, transaction = %id, deliveries = recorded.deliveries, "webhook event recorded");
            self.wake.notify_one();
        } else {
            tracing::debug!(event = %event_id, "webhook event already recorded");
        }
        Ok(())
    }
}

impl CompletedHandler {
    /// A refund's final state becomes `refund.succeeded` / `refund.failed`, recorded once
    /// per (refund, status) and delivered like a payment's events (listed under the
    /// refunded payment).
    async fn refund(&self, completed: RefundCompleted) -> Result<(), HandlerError> {
        let id = RefundId::parse(&completed.refund_id)
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        let status: RefundState =
            completed
                .status
                .parse()
                .map_err(|e: paygate_core::domain::UnknownVariant| {
                    HandlerError::Reject(e.to_string())
                })?;
        let event_type = match status {
            RefundState::Succeeded => EventType::RefundSucceeded,
            RefundState::Failed => EventType::RefundFailed,
            other => {
                return Err(HandlerError::Reject(format!(
                    "refund {other} is not a status merchants are told of"
                )))
            }
        };
        let refund = refunds::get(&self.pool, id)
            .await
            .map_err(|e| HandlerError::Retry(e.to_string()))?
            .ok_or_else(|| HandlerError::Reject(format!("refund {id} does not exist")))?;
        if refund.status != status {
            // Terminal states never change, and the row is written before the event.
            return Err(HandlerError::Reject(format!(
                "refund {id} is {}, the event says {status}",
                refund.status
            )));
        }
        let payment = transactions::get(&self.pool, refund.transaction_id)
            .await
            .map_err(|e| HandlerError::Retry(e.to_string()))?
            .ok_or_else(|| HandlerError::Reject(format!("refund {id}: no payment")))?;
        let event_id = webhooks::event_id_for_refund(id, status);
        let body = payload::refund_event_body(event_id, event_type, &refund, Utc::now())
            .map_err(|e| HandlerError::Reject(format!("cannot serialise the event: {e}")))?;
        let recorded = webhooks::record_event(
            &self.pool,
            &NewEvent {
                id: event_id,
                merchant_id: refund.merchant_id,
                transaction_id: refund.transaction_id,
                event_type,
                payload: body,
                callback_url: payment.callback_url.clone(),
            },
        )
        .await
        .map_err(|e| HandlerError::Retry(e.to_string()))?;
        if recorded.created {
            metrics::event_recorded(event_type.as_str());
            tracing::info!(event = %event_id, refund = %id, deliveries = recorded.deliveries, "webhook event recorded");
            self.wake.notify_one();
        }
        Ok(())
    }
}
