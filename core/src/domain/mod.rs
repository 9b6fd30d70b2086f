//! The payment domain: values that parse and cannot hold an invalid state.

pub mod clock;
mod ids;
mod money;
mod names;
mod refund;
mod scope;
mod transaction;

pub use ids::{
    ApiKeyId, ConsoleUserId, DeliveryAttemptId, EventId, IdError, MerchantId, RefundId,
    TransactionId, WebhookEndpointId,
};
pub use money::{Amount, Currency, MinorUnits, Money, MoneyError};
pub use names::{bounded_text, CustomerReference, GatewayName, NameError};
pub use refund::{InvalidRefundTransition, NewRefund, Refund, RefundState, RefundUpdate};
pub use scope::Scope;
pub use transaction::{
    Failure, InvalidTransition, NewTransaction, NextAction, Transaction, TransactionKind,
    TransactionStatus, TransactionUpdate, UnknownVariant,
};
