//! What a transaction's progress tells the rest of the world, built in one place so every
//! service writes the same shapes:
//!
//! - to the payment processor, through the outbox and Kafka: [`pending`], [`refund_pending`];
//! - to the merchant, as a webhook event recorded with its deliveries in the same statement
//!   as the state change ([`completed`], [`refund_completed`]; the body is
//!   [`webhook_body`]). There is no Kafka hop between a settled payment and its webhook: the
//!   dispatcher takes due deliveries from Postgres (docs/ARCHITECTURE.md, change 27).

pub mod webhook_body;

use std::collections::BTreeMap;

use crate::bus::events::{Body, Envelope, RefundPending, TransactionPending};
use crate::bus::trace::{TraceParent, TRACEPARENT};
use crate::bus::Topic;
use crate::db::outbox::OutboxMessage;
use crate::db::webhooks::{self, EventType, NewEvent};
use crate::db::DbError;
use crate::domain::{Refund, RefundState, Transaction};

fn headers(trace: Option<TraceParent>) -> BTreeMap<String, String> {
    let trace = trace
        .map(|t| t.child())
        .unwrap_or_else(TraceParent::new_root);
    BTreeMap::from([(TRACEPARENT.to_owned(), trace.to_string())])
}

/// `transactions.pending`: the transaction is ready for a provider attempt at `version`.
/// The processor acts only if the row still has that version, so a replayed old message
/// cannot trigger an early retry.
pub fn pending(transaction: &Transaction, trace: Option<TraceParent>) -> OutboxMessage {
    let body = Body::TransactionPending(TransactionPending {
        transaction_id: transaction.id.to_string(),
        version: transaction.version,
    });
    OutboxMessage {
        topic: Topic::TransactionsPending,
        key: transaction.id.to_string(),
        payload: Envelope::new(body).encode_to_bytes(),
        headers: headers(trace),
    }
}

/// The `transaction.*` webhook event telling the merchant the state `transaction` is in
/// (terminal, `unresolved` or `requires_action`), to record in the commit that puts it
/// there. Its id is deterministic per (transaction, status), so recording it again (the
/// healer) changes nothing and the merchant sees one `webhook-id`; its `created_at` is the
/// change's time.
pub fn completed(transaction: &Transaction) -> Result<NewEvent, DbError> {
    let status = transaction.status;
    let event_type = EventType::for_status(status)
        .ok_or_else(|| DbError::Event(format!("{status} is not a status merchants are told of")))?;
    let id = webhooks::event_id_for(transaction.id, status);
    let payload = webhook_body::event_body(id, event_type, transaction, transaction.updated_at)
        .map_err(|e| DbError::Event(e.to_string()))?;
    Ok(NewEvent {
        id,
        merchant_id: transaction.merchant_id,
        transaction_id: transaction.id,
        event_type,
        payload,
        callback_url: transaction.callback_url.clone(),
    })
}

/// `transactions.pending` with a refund body: the refund is ready for a provider call.
/// Keyed by the payment, so it follows its payment's messages on one partition.
pub fn refund_pending(refund: &Refund, trace: Option<TraceParent>) -> OutboxMessage {
    let body = Body::RefundPending(RefundPending {
        refund_id: refund.id.to_string(),
        version: refund.version,
    });
    OutboxMessage {
        topic: Topic::TransactionsPending,
        key: refund.transaction_id.to_string(),
        payload: Envelope::new(body).encode_to_bytes(),
        headers: headers(trace),
    }
}

/// What a refund writer records with `refund`'s change: its [`refund_completed`] event when
/// the change is final, sent to the refunded payment's `callback_url` too; nothing otherwise.
/// One place for the rule both refund writers follow.
pub fn refund_event(
    refund: &Refund,
    callback_url: Option<&str>,
) -> Result<Option<NewEvent>, DbError> {
    if !refund.status.is_terminal() {
        return Ok(None);
    }
    refund_completed(refund, callback_url).map(Some)
}

/// [`refund_event`] for a writer that has not read the refunded payment: its `callback_url`
/// is read through `exec`, and only when the change is final.
pub async fn refund_event_if_final<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    refund: &Refund,
) -> Result<Option<NewEvent>, DbError> {
    if !refund.status.is_terminal() {
        return Ok(None);
    }
    let callback_url =
        crate::db::transactions::callback_url_of(exec, refund.transaction_id).await?;
    refund_event(refund, callback_url.as_deref())
}

/// The `refund.succeeded` / `refund.failed` webhook event of a refund in its final state,
/// listed under the refunded payment and sent to the payment's `callback_url` too, to
/// record in the commit that finishes the refund. Deterministic id per (refund, status).
pub fn refund_completed(refund: &Refund, callback_url: Option<&str>) -> Result<NewEvent, DbError> {
    let event_type = match refund.status {
        RefundState::Succeeded => EventType::RefundSucceeded,
        RefundState::Failed => EventType::RefundFailed,
        other => {
            return Err(DbError::Event(format!(
                "refund {other} is not a status merchants are told of"
            )))
        }
    };
    let id = webhooks::event_id_for_refund(refund.id, refund.status);
    let payload = webhook_body::refund_event_body(id, event_type, refund, refund.updated_at)
        .map_err(|e| DbError::Event(e.to_string()))?;
    Ok(NewEvent {
        id,
        merchant_id: refund.merchant_id,
        transaction_id: refund.transaction_id,
        event_type,
        payload,
        callback_url: callback_url.map(str::to_owned),
    })
}
