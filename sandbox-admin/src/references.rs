//! The references report (`GET /_admin/references/{reference}`): what every account (every
//! gateway) did with one of paygate's transaction ids, so a money-safety test can compare,
//! per payment, what the providers did with paygate's final state.

use chrono::{DateTime, Utc};
use paygate_core::domain::TransactionKind;
use serde::{Deserialize, Serialize};

/// Every account's record of one reference (an empty list when no provider saw it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceReport {
    /// The reference as providers received it (paygate's transaction id for the
    /// sandbox protocols; each emulated provider's own encoding of it).
    pub reference: String,
    /// In execution order. More than one entry with `outcome != failed` means the payment was
    /// executed by two gateways (see the `executed_elsewhere` counter).
    pub executions: Vec<ExecutionReport>,
}

/// One account's record of the reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionReport {
    /// The account (paygate gateway name).
    pub account: String,
    pub provider_reference: String,
    pub kind: TransactionKind,
    /// Minor units, as executed (never the knob-altered amount of a mismatched callback).
    pub amount: i64,
    pub currency: String,
    /// What the provider's status endpoint reports now: `pending` until the outcome is
    /// announced by callback (a synchronous decline is `failed` at once).
    pub outcome: Outcome,
    /// Whether the outcome is final and told (by callback, or by the synchronous answer).
    pub announced: bool,
    /// The outcome decided at execution, announced or not: what will happen to the money.
    pub decided: Outcome,
    pub executed_at: DateTime<Utc>,
}

/// A record's outcome as a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pending,
    Succeeded,
    Failed,
}
