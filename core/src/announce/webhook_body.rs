//! The webhook body: `{"type", "id", "created_at", "data": {transaction}}`, the transaction
//! shown as the API shows it (`GET /v1/transactions/{id}`); a refund's event carries the
//! refund as `GET /v1/refunds/{id}` shows it.

use crate::db::webhooks::EventType;
use crate::domain::{
    EventId, Failure, NextAction, Refund, RefundId, RefundState, Transaction, TransactionId,
    TransactionKind, TransactionStatus,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "type")]
    event_type: &'static str,
    id: EventId,
    created_at: String,
    data: TransactionData<'a>,
}

/// Field for field the API's transaction resource.
#[derive(Serialize)]
struct TransactionData<'a> {
    id: TransactionId,
    object: &'static str,
    #[serde(rename = "type")]
    kind: TransactionKind,
    amount: i64,
    currency: &'static str,
    customer: &'a str,
    gateway: Option<&'a str>,
    status: TransactionStatus,
    next_action: Option<NextAction>,
    attempts: i32,
    provider_reference: Option<&'a str>,
    failure: Option<&'a Failure>,
    callback_url: Option<&'a str>,
    metadata: &'a serde_json::Value,
    created_at: String,
    updated_at: String,
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The exact JSON body of an event (recorded once, then sent byte for byte on every attempt).
pub fn event_body(
    id: EventId,
    event_type: EventType,
    transaction: &Transaction,
    created_at: DateTime<Utc>,
) -> Result<String, serde_json::Error> {
    let payload = Payload {
        event_type: event_type.as_str(),
        id,
        created_at: timestamp(created_at),
        data: TransactionData {
            id: transaction.id,
            object: "transaction",
            kind: transaction.kind,
            amount: transaction.money.amount.minor_units(),
            currency: transaction.money.currency.code(),
            customer: transaction.customer.as_str(),
            gateway: transaction
                .routed_gateway
                .as_ref()
                .or(transaction.gateway.as_ref())
                .map(|g| g.as_str()),
            status: transaction.status,
            attempts: transaction.attempts,
            next_action: transaction.next_action(),
            provider_reference: transaction.provider_reference.as_deref(),
            failure: transaction.failure.as_ref(),
            callback_url: transaction.callback_url.as_deref(),
            metadata: &transaction.metadata,
            created_at: timestamp(transaction.created_at),
            updated_at: timestamp(transaction.updated_at),
        },
    };
    serde_json::to_string(&payload)
}

#[derive(Serialize)]
struct RefundPayload<'a> {
    #[serde(rename = "type")]
    event_type: &'static str,
    id: EventId,
    created_at: String,
    data: RefundData<'a>,
}

/// Field for field the API's refund resource.
#[derive(Serialize)]
struct RefundData<'a> {
    id: RefundId,
    object: &'static str,
    transaction: TransactionId,
    amount: i64,
    currency: &'static str,
    status: RefundState,
    reason: Option<&'a str>,
    failure: Option<&'a Failure>,
    created_at: String,
    updated_at: String,
}

/// The exact JSON body of a refund's event.
pub fn refund_event_body(
    id: EventId,
    event_type: EventType,
    refund: &Refund,
    created_at: DateTime<Utc>,
) -> Result<String, serde_json::Error> {
    let payload = RefundPayload {
        event_type: event_type.as_str(),
        id,
        created_at: timestamp(created_at),
        data: RefundData {
            id: refund.id,
            object: "refund",
            transaction: refund.transaction_id,
            amount: refund.money.amount.minor_units(),
            currency: refund.money.currency.code(),
            status: refund.status,
            reason: refund.reason.as_deref(),
            failure: refund
                .failure
                .as_ref()
                .filter(|_| refund.status == RefundState::Failed),
            created_at: timestamp(refund.created_at),
            updated_at: timestamp(refund.updated_at),
        },
    };
    serde_json::to_string(&payload)
}
