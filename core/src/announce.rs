//! The outbox messages that announce a transaction's progress: one place builds them, so
//! the API, the payment processor and the callback processor publish the same shapes.

use std::collections::BTreeMap;

use crate::bus::events::{
    Body, Envelope, RefundCompleted, RefundPending, TransactionCompleted, TransactionPending,
};
use crate::bus::trace::{TraceParent, TRACEPARENT};
use crate::bus::Topic;
use crate::db::outbox::OutboxMessage;
use crate::domain::{Refund, Transaction};

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

/// `transactions.completed`: the transaction reached a terminal state.
pub fn completed(transaction: &Transaction, trace: Option<TraceParent>) -> OutboxMessage {
    let body = Body::TransactionCompleted(TransactionCompleted {
        transaction_id: transaction.id.to_string(),
        merchant_id: transaction.merchant_id.to_string(),
        status: transaction.status.as_str().to_owned(),
        version: transaction.version,
    });
    OutboxMessage {
        topic: Topic::TransactionsCompleted,
        key: transaction.id.to_string(),
        payload: Envelope::new(body).encode_to_bytes(),
        headers: headers(trace),
    }
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

/// `transactions.completed` with a refund body: the refund reached a terminal state.
pub fn refund_completed(refund: &Refund, trace: Option<TraceParent>) -> OutboxMessage {
    let body = Body::RefundCompleted(RefundCompleted {
        refund_id: refund.id.to_string(),
        merchant_id: refund.merchant_id.to_string(),
        status: refund.status.as_str().to_owned(),
        version: refund.version,
    });
    OutboxMessage {
        topic: Topic::TransactionsCompleted,
        key: refund.transaction_id.to_string(),
        payload: Envelope::new(body).encode_to_bytes(),
        headers: headers(trace),
    }
}
