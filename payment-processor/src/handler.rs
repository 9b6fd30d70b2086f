//! The Kafka side: decode a `transactions.pending` event and hand it to the engine.

use std::sync::Arc;

use async_trait::async_trait;
use paygate_core::bus::events::{Body, Envelope};
use paygate_core::bus::{Delivery, Handler, HandlerError};
use paygate_core::domain::TransactionId;

use crate::attempt::{Engine, ProcessError};

pub struct PendingHandler {
    pub(crate) engine: Arc<Engine>,
}

#[async_trait]
impl Handler for PendingHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = Envelope::decode_checked(&delivery.payload)
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        let Some(Body::TransactionPending(pending)) = envelope.body else {
            return Err(HandlerError::Reject(
                "not a transaction-pending event".into(),
            ));
        };
        let id = TransactionId::parse(&pending.transaction_id)
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        match self
            .engine
            .process(id, pending.version, delivery.traceparent())
            .await
        {
            Ok(outcome) => {
                tracing::debug!(%id, ?outcome, "pending event handled");
                Ok(())
            }
            Err(ProcessError::Transient(reason)) => Err(HandlerError::Retry(reason)),
            Err(ProcessError::Poison(reason)) => Err(HandlerError::Reject(reason)),
        }
    }
}
