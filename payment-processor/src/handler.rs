//! The Kafka side: decode a `transactions.pending` event (a payment's or a refund's) and
//! hand it to the engine.

use std::sync::Arc;

use async_trait::async_trait;
use paygate_core::bus::events::RefundPending;
use paygate_core::bus::events::{Body, Envelope};
use paygate_core::bus::{Delivery, Handler, HandlerError};
use paygate_core::domain::{RefundId, TransactionId};

use crate::attempt::{Engine, ProcessError};

pub struct PendingHandler {
    pub(crate) engine: Arc<Engine>,
}

#[async_trait]
impl Handler for PendingHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = Envelope::decode_checked(&delivery.payload)
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        let pending = match envelope.body {
            Some(Body::TransactionPending(pending)) => pending,
            Some(Body::RefundPending(refund)) => return self.refund(refund).await,
            _ => {
                return Err(HandlerError::Reject(
                    "not a transaction-pending or refund-pending event".into(),
                ))
            }
        };
        let id = TransactionId::parse(&pending.transaction_id)
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        match self.engine.process(id, pending.version).await {
            Ok(outcome) => {
                tracing::debug!(%id, ?outcome, "pending event handled");
                Ok(())
            }
            Err(ProcessError::Transient(reason)) => Err(HandlerError::Retry(reason)),
            Err(ProcessError::Poison(reason)) => Err(HandlerError::Reject(reason)),
        }
    }
}

impl PendingHandler {
    /// A refund rides the same topic: same consumer, same DLQ for what can never work.
    async fn refund(&self, event: RefundPending) -> Result<(), HandlerError> {
        let id =
            RefundId::parse(&event.refund_id).map_err(|e| HandlerError::Reject(e.to_string()))?;
        match self.engine.process_refund(id, event.version).await {
            Ok(outcome) => {
                tracing::debug!(%id, ?outcome, "refund event handled");
                Ok(())
            }
            Err(ProcessError::Transient(reason)) => Err(HandlerError::Retry(reason)),
            Err(ProcessError::Poison(reason)) => Err(HandlerError::Reject(reason)),
        }
    }
}
