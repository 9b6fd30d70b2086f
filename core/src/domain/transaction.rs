//! A transaction and the one state machine every service obeys.
//!
//! ```text
//! pending ──▶ submitting ──▶ submitted ──▶ succeeded | failed
//!    │            │  ▲            │
//!    │            ▼  │            ▼
//!    └──────▶ retry_scheduled ◀───┘   (and retry_scheduled ──▶ succeeded | failed)
//!
//! submitting | submitted | retry_scheduled ──▶ unresolved ──▶ succeeded | failed
//!
//! submitting | retry_scheduled ──▶ requires_action ──▶ submitted | succeeded | failed | unresolved
//! ```
//!
//! `requires_action`: the provider needs the customer first (3-D Secure, a hosted page);
//! nothing has moved. The customer finishes at the provider; its callback or a status
//! query completes the payment, and the gateway's expiry fails one the provider has not
//! completed.
//!
//! `unresolved` is "we do not know yet": a provider may have executed the payment and we
//! cannot learn whether. It is never failed automatically (a merchant told "failed" would
//! re-issue the payment and the customer would be paid twice); only an authentic answer from
//! the provider (callback or status query) or a person ends it.
//!
//! [`TransactionStatus::can_transition_to`] is the single place that says which moves are
//! allowed. Changes are computed here as a pure [`TransactionUpdate`]; the repository then
//! writes it with `UPDATE … WHERE id = $1 AND version = $2`, so a stale writer changes nothing.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CustomerReference, GatewayName, MerchantId, Money, TransactionId};

/// Which way money moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransactionKind {
    /// Money in: the customer pays the merchant (a charge at the provider).
    Deposit,
    /// Money out: the merchant pays the customer (a transfer/payout at the provider).
    Withdrawal,
}

impl TransactionKind {
    pub const ALL: [Self; 2] = [Self::Deposit, Self::Withdrawal];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "deposit",
            Self::Withdrawal => "withdrawal",
        }
    }
}

impl FromStr for TransactionKind {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                kind: "transaction kind",
                value: s.to_owned(),
            })
    }
}

/// A string stored or sent where a known variant was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

/// Where a transaction is in its life. See the module docs for the diagram. `unresolved`:
/// a provider may have executed it and paygate cannot tell yet; do not re-issue it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransactionStatus {
    /// Accepted and committed; waiting for the payment processor.
    Pending,
    /// Claimed by a processor; a provider call is (or may be) in progress.
    Submitting,
    /// The provider accepted it; waiting for its callback with the outcome.
    Submitted,
    /// An attempt failed in a way worth retrying; `next_attempt_at` says when.
    RetryScheduled,
    /// Terminal: the money moved.
    Succeeded,
    /// Terminal: the money did not move and will not.
    Failed,
    /// Not terminal: a provider may have executed it and we cannot yet tell. Reconciliation
    /// keeps asking the provider; a callback, a status answer or a person finishes it. The
    /// payment processor never submits it again, and it is never failed automatically.
    Unresolved,
    /// The customer must act at the provider first (`next_action` says where). Not
    /// terminal: a callback or a status answer completes it; past its gateway's expiry the
    /// provider is asked and, unless it completed the payment, it fails (`action_expired`).
    RequiresAction,
}

impl TransactionStatus {
    pub const ALL: [Self; 8] = [
        Self::Pending,
        Self::Submitting,
        Self::Submitted,
        Self::RetryScheduled,
        Self::Succeeded,
        Self::Failed,
        Self::Unresolved,
        Self::RequiresAction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Submitting => "submitting",
            Self::Submitted => "submitted",
            Self::RetryScheduled => "retry_scheduled",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Unresolved => "unresolved",
            Self::RequiresAction => "requires_action",
        }
    }

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// The state machine: the only place that decides which moves are allowed.
    ///
    /// Why each non-obvious edge exists:
    /// - `pending → failed`: a transaction no gateway can take (no route) fails without an attempt.
    /// - `pending → retry_scheduled`: every route's breaker is open before the first claim.
    /// - `submitting → succeeded | failed`: the provider answered with a final result, or its
    ///   callback overtook our own `submitted` write.
    /// - `submitted → retry_scheduled`: reconciliation of a transaction whose callback never
    ///   came; the retry reuses the same idempotency reference, so it cannot execute twice.
    /// - `retry_scheduled → succeeded | failed`: the callback of an earlier, ambiguous attempt
    ///   arrives while a retry waits, a status query answers, or attempts are exhausted after
    ///   failures that certainly never reached a provider.
    /// - `retry_scheduled → submitted`: the status query after an ambiguous attempt finds
    ///   the provider executing it; its callback (or reconciliation) finishes it.
    /// - `submitting | submitted | retry_scheduled → unresolved`: attempts ran out after an
    ///   ambiguous outcome, status queries keep failing, or a provider's answer does not match
    ///   the payment (wrong amount, currency, kind or reference).
    /// - `unresolved → succeeded | failed`: a late authentic callback, a status answer, or a
    ///   person's resolution (`paygate transactions resolve`).
    /// - `submitting | retry_scheduled → requires_action`: the provider took the payment but
    ///   needs the customer first (an attempt's answer, or the status query after an
    ///   ambiguous one).
    /// - `requires_action → submitted`: the customer finished and the provider is executing;
    ///   `→ succeeded | failed` its outcome (or the expiry); `→ unresolved` a provider answer
    ///   that does not fit the payment.
    pub fn can_transition_to(self, next: Self) -> bool {
        use TransactionStatus::*;
        matches!(
            (self, next),
            (Pending, Submitting | RetryScheduled | Failed)
                | (
                    Submitting,
                    Submitted | RetryScheduled | Succeeded | Failed | Unresolved
                )
                | (Submitted, RetryScheduled | Succeeded | Failed | Unresolved)
                | (
                    RetryScheduled,
                    Submitting | Submitted | Succeeded | Failed | Unresolved | RequiresAction
                )
                | (Submitting, RequiresAction)
                | (RequiresAction, Submitted | Succeeded | Failed | Unresolved)
                | (Unresolved, Succeeded | Failed)
        )
    }
}

impl fmt::Display for TransactionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TransactionStatus {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                kind: "transaction status",
                value: s.to_owned(),
            })
    }
}

/// A move the state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("transaction {id} cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub id: TransactionId,
    pub from: TransactionStatus,
    pub to: TransactionStatus,
}

/// Why a transaction failed, in words a merchant can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failure {
    /// Stable machine-readable code, e.g. `declined`, `max_attempts_exceeded`.
    pub code: String,
    /// Human-readable detail (from the provider where it gave one).
    pub message: String,
}

/// What the merchant must do for a `requires_action` payment: send the customer to `url`
/// (the provider's 3-D Secure or hosted payment page). Stripe's `next_action` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NextAction {
    /// Always `redirect_to_url`.
    #[serde(rename = "type")]
    #[schema(example = "redirect_to_url")]
    pub action_type: String,
    /// Where the customer finishes the payment.
    pub url: String,
}

/// A payment as paygate records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: TransactionId,
    pub merchant_id: MerchantId,
    pub kind: TransactionKind,
    pub money: Money,
    pub customer: CustomerReference,
    /// The gateway the merchant asked for; `None` lets routing rules choose.
    pub gateway: Option<GatewayName>,
    /// The gateway of the latest provider attempt (set by the payment processor).
    pub routed_gateway: Option<GatewayName>,
    pub status: TransactionStatus,
    /// Bumped by every change; the optimistic-concurrency guard.
    pub version: i64,
    /// Provider calls started so far (breaker-open deferrals do not count).
    pub attempts: i32,
    /// `retry_scheduled`: when the next attempt is due; `unresolved`: when the provider is
    /// next asked (`None` once the reconciliation horizon has passed: left for a person).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Since when the provider at `routed_gateway` may hold this payment: set by the first
    /// ambiguous outcome there, cleared only when that provider says it has no record after
    /// its settle window. While set, the payment may go to no other gateway.
    pub ambiguous_since: Option<DateTime<Utc>>,
    pub provider_reference: Option<String>,
    /// `requires_action`: where the customer finishes the payment (the provider's page).
    pub next_action_url: Option<String>,
    pub failure: Option<Failure>,
    /// Where to tell the merchant of the outcome, besides its registered endpoints.
    pub callback_url: Option<String>,
    /// Small merchant-supplied JSON object, returned as given.
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a merchant asks for; everything else about a new transaction is decided here.
#[derive(Debug, Clone)]
pub struct NewTransaction {
    pub merchant_id: MerchantId,
    pub kind: TransactionKind,
    pub money: Money,
    pub customer: CustomerReference,
    pub gateway: Option<GatewayName>,
    pub callback_url: Option<String>,
    pub metadata: serde_json::Value,
}

impl Transaction {
    /// The customer's step, while the payment waits for it.
    pub fn next_action(&self) -> Option<NextAction> {
        let url = self.next_action_url.as_ref()?;
        (self.status == TransactionStatus::RequiresAction).then(|| NextAction {
            action_type: "redirect_to_url".to_owned(),
            url: url.clone(),
        })
    }

    /// A freshly accepted transaction: `pending`, version 0, no attempts.
    pub fn create(new: NewTransaction, now: DateTime<Utc>) -> Self {
        Self {
            id: TransactionId::new(),
            merchant_id: new.merchant_id,
            kind: new.kind,
            money: new.money,
            customer: new.customer,
            gateway: new.gateway,
            routed_gateway: None,
            status: TransactionStatus::Pending,
            version: 0,
            attempts: 0,
            next_attempt_at: None,
            ambiguous_since: None,
            provider_reference: None,
            next_action_url: None,
            failure: None,
            callback_url: new.callback_url,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
        }
    }

    /// Starts a change to `to`, refused when the state machine forbids it. The returned
    /// update carries the version it expects to replace.
    pub fn advance(
        &self,
        to: TransactionStatus,
        now: DateTime<Utc>,
    ) -> Result<TransactionUpdate, InvalidTransition> {
        if !self.status.can_transition_to(to) {
            return Err(InvalidTransition {
                id: self.id,
                from: self.status,
                to,
            });
        }
        let mut next = self.clone();
        next.status = to;
        next.version = self.version + 1;
        next.updated_at = now;
        // A due time belongs to the state that set it; the caller sets the new one. So does
        // the customer's step.
        next.next_attempt_at = None;
        next.next_action_url = None;
        Ok(TransactionUpdate {
            expected_version: self.version,
            next,
        })
    }
}

/// A computed change to one transaction, to be written only if the row still has
/// `expected_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an update does nothing until the repository applies it"]
pub struct TransactionUpdate {
    pub expected_version: i64,
    pub next: Transaction,
}

impl TransactionUpdate {
    /// Counts a provider call that is about to start.
    pub fn start_attempt(mut self) -> Self {
        self.next.attempts += 1;
        self
    }

    /// Gives back an attempt that never reached the provider (its breaker refused at the
    /// last moment): breaker deferrals do not use up attempts.
    pub fn refund_attempt(mut self) -> Self {
        self.next.attempts = self.next.attempts.saturating_sub(1).max(0);
        self
    }

    /// Clears the last attempt's error (a success, or a new attempt under way).
    pub fn clear_failure(mut self) -> Self {
        self.next.failure = None;
        self
    }

    /// Records the gateway this attempt goes to.
    pub fn routed_to(mut self, gateway: GatewayName) -> Self {
        self.next.routed_gateway = Some(gateway);
        self
    }

    /// When the next attempt (`retry_scheduled`) or the next status query (`unresolved`) is due.
    pub fn retry_at(mut self, at: DateTime<Utc>) -> Self {
        self.next.next_attempt_at = Some(at);
        self
    }

    /// Notes that the provider at the routed gateway may now hold this payment (an ambiguous
    /// outcome). The first such moment is kept: the settle window counts from it.
    pub fn pin_ambiguous(mut self, at: DateTime<Utc>) -> Self {
        self.next.ambiguous_since.get_or_insert(at);
        self
    }

    /// The provider said, after its settle window, that it never received the payment: it
    /// may go to another gateway again.
    pub fn unpin(mut self) -> Self {
        self.next.ambiguous_since = None;
        self
    }

    pub fn provider_reference(mut self, reference: impl Into<String>) -> Self {
        self.next.provider_reference = Some(reference.into());
        self
    }

    /// Where the customer finishes the payment (`requires_action`).
    pub fn next_action(mut self, url: impl Into<String>) -> Self {
        self.next.next_action_url = Some(url.into());
        self
    }

    pub fn failure(mut self, code: impl Into<String>, message: impl Into<String>) -> Self {
        self.next.failure = Some(Failure {
            code: code.into(),
            message: message.into(),
        });
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransactionStatus::*;

    fn sample() -> Transaction {
        let new = NewTransaction {
            merchant_id: MerchantId::new(),
            kind: TransactionKind::Deposit,
            money: Money::from_parts(1050, "USD").unwrap_or_else(|e| panic!("{e}")),
            customer: CustomerReference::parse("cust_1").unwrap_or_else(|e| panic!("{e}")),
            gateway: None,
            callback_url: None,
            metadata: serde_json::json!({}),
        };
        Transaction::create(new, Utc::now())
    }

    /// Every (from, to) pair, against the table docs/ARCHITECTURE.md gives.
    #[test]
    fn state_machine_is_exactly_the_designed_one() {
        let allowed: &[(TransactionStatus, TransactionStatus)] = &[
            (Pending, Submitting),
            (Pending, RetryScheduled),
            (Pending, Failed),
            (Submitting, Submitted),
            (Submitting, RetryScheduled),
            (Submitting, Succeeded),
            (Submitting, Failed),
            (Submitted, RetryScheduled),
            (Submitted, Succeeded),
            (Submitted, Failed),
            (RetryScheduled, Submitting),
            (RetryScheduled, Submitted),
            (RetryScheduled, Succeeded),
            (RetryScheduled, Failed),
            (Submitting, Unresolved),
            (Submitted, Unresolved),
            (RetryScheduled, Unresolved),
            (Unresolved, Succeeded),
            (Unresolved, Failed),
            (Submitting, RequiresAction),
            (RetryScheduled, RequiresAction),
            (RequiresAction, Submitted),
            (RequiresAction, Succeeded),
            (RequiresAction, Failed),
            (RequiresAction, Unresolved),
        ];
        let mut checked = 0;
        for from in TransactionStatus::ALL {
            for to in TransactionStatus::ALL {
                let expected = allowed.contains(&(from, to));
                assert_eq!(from.can_transition_to(to), expected, "{from} -> {to}");
                checked += 1;
            }
        }
        assert_eq!(checked, 64);
    }

    #[test]
    fn terminal_states_never_change_and_self_moves_are_not_transitions() {
        for from in TransactionStatus::ALL {
            assert!(!from.can_transition_to(from), "{from} -> {from}");
            if from.is_terminal() {
                for to in TransactionStatus::ALL {
                    assert!(!from.can_transition_to(to), "{from} -> {to}");
                }
            }
        }
        assert_eq!(
            TransactionStatus::ALL
                .iter()
                .filter(|s| s.is_terminal())
                .count(),
            2
        );
    }

    #[test]
    fn advance_bumps_version_and_refuses_forbidden_moves() {
        let tx = sample();
        let update = tx
            .advance(Submitting, Utc::now())
            .map(|u| u.start_attempt());
        let Ok(update) = update else {
            panic!("pending -> submitting refused")
        };
        assert_eq!(update.expected_version, 0);
        assert_eq!(update.next.version, 1);
        assert_eq!(update.next.attempts, 1);
        assert_eq!(update.next.status, Submitting);

        let err = tx.advance(Succeeded, Utc::now()).map(|_| ()).err();
        assert_eq!(
            err,
            Some(InvalidTransition {
                id: tx.id,
                from: Pending,
                to: Succeeded
            })
        );
    }

    #[test]
    fn statuses_round_trip_as_text() {
        for s in TransactionStatus::ALL {
            assert_eq!(s.as_str().parse::<TransactionStatus>(), Ok(s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.as_str()))
            );
        }
        assert!("done".parse::<TransactionStatus>().is_err());
        for k in TransactionKind::ALL {
            assert_eq!(k.as_str().parse::<TransactionKind>(), Ok(k));
        }
    }

    #[test]
    fn retry_time_is_cleared_when_leaving_retry_scheduled() {
        let tx = sample();
        let Ok(scheduled) = tx
            .advance(RetryScheduled, Utc::now())
            .map(|u| u.retry_at(Utc::now()))
        else {
            panic!("pending -> retry_scheduled refused")
        };
        assert!(scheduled.next.next_attempt_at.is_some());
        let Ok(resumed) = scheduled.next.advance(Submitting, Utc::now()) else {
            panic!("retry_scheduled -> submitting refused")
        };
        assert_eq!(resumed.next.next_attempt_at, None);
    }
}
