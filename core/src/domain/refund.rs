//! A refund of a succeeded deposit and its state machine.
//!
//! ```text
//! pending ──▶ submitted ──▶ succeeded | failed
//!    │
//!    └──────▶ succeeded | failed
//! ```
//!
//! `pending`: accepted (its amount is held on the merchant's balance), no provider has said
//! yes yet; a retryable or ambiguous provider answer keeps it here with a new due time, and
//! the retry repeats the same refund id (providers dedupe on it). `submitted`: the provider
//! took it and finishes it later (callback). The two rules that keep money right, "at most
//! the payment in total" and "the ledger follows the state", are the database's (migration
//! `20261204000200_refunds.sql`); this module only says which moves exist.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::transaction::{Failure, UnknownVariant};
use super::{MerchantId, Money, RefundId, TransactionId};

/// Where a refund is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundState {
    /// Accepted and held; the provider has not taken it yet (retries wait here).
    Pending,
    /// The provider took it; its callback finishes it.
    Submitted,
    /// Terminal: the money went back to the customer.
    Succeeded,
    /// Terminal: it did not and will not; the hold is released.
    Failed,
}

impl RefundState {
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Submitted,
        Self::Succeeded,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Submitted => "submitted",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// The only moves: `pending → submitted | succeeded | failed` (a provider's first answer;
    /// `failed` only when it certainly refused), `submitted → succeeded | failed` (its
    /// callback).
    pub fn can_transition_to(self, next: Self) -> bool {
        use RefundState::*;
        matches!(
            (self, next),
            (Pending, Submitted | Succeeded | Failed) | (Submitted, Succeeded | Failed)
        )
    }
}

impl fmt::Display for RefundState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundState {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                kind: "refund status",
                value: s.to_owned(),
            })
    }
}

/// A move the refund state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("refund {id} cannot go from {from} to {to}")]
pub struct InvalidRefundTransition {
    pub id: RefundId,
    pub from: RefundState,
    pub to: RefundState,
}

/// A refund as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub id: RefundId,
    pub transaction_id: TransactionId,
    pub merchant_id: MerchantId,
    pub money: Money,
    pub status: RefundState,
    pub version: i64,
    /// Provider calls made so far.
    pub attempts: i32,
    /// When a pending refund's next provider call is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub provider_reference: Option<String>,
    pub failure: Option<Failure>,
    /// The merchant's words, as given (at most 500 characters).
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A refund to create. `amount: None` is "all that is left", settled by the database.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRefund {
    pub transaction_id: TransactionId,
    pub merchant_id: MerchantId,
    pub amount: Option<i64>,
    pub reason: Option<String>,
}

/// A computed change, written only if the row still has `expected_version`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundUpdate {
    pub expected_version: i64,
    pub next: Refund,
}

impl Refund {
    /// Moves to `to` if the state machine allows it: a new version, the due time cleared
    /// (the caller sets a new one), `now` as the update time.
    pub fn transition(
        &self,
        to: RefundState,
        now: DateTime<Utc>,
    ) -> Result<RefundUpdate, InvalidRefundTransition> {
        if !self.status.can_transition_to(to) {
            return Err(InvalidRefundTransition {
                id: self.id,
                from: self.status,
                to,
            });
        }
        let mut next = self.clone();
        next.status = to;
        next.version = self.version.saturating_add(1);
        next.next_attempt_at = None;
        next.updated_at = now;
        Ok(RefundUpdate {
            expected_version: self.version,
            next,
        })
    }

    /// Stays `pending` with a new due time and one more attempt counted: a provider answer
    /// worth repeating (the same refund id, so it cannot execute twice). Version-checked and
    /// bumped like a transition, so two processors never both schedule it.
    pub fn retry_at(
        &self,
        at: DateTime<Utc>,
        failure: Option<Failure>,
        now: DateTime<Utc>,
    ) -> RefundUpdate {
        let mut next = self.clone();
        next.version = self.version.saturating_add(1);
        next.next_attempt_at = Some(at);
        next.failure = failure.or_else(|| self.failure.clone());
        next.updated_at = now;
        RefundUpdate {
            expected_version: self.version,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RefundState::*;
    use super::*;

    fn refund(status: RefundState) -> Refund {
        let now = Utc::now();
        Refund {
            id: RefundId::new(),
            transaction_id: TransactionId::new(),
            merchant_id: MerchantId::new(),
            money: Money::from_parts(100, "USD").unwrap_or_else(|e| panic!("{e}")),
            status,
            version: 1,
            attempts: 0,
            next_attempt_at: None,
            provider_reference: None,
            failure: None,
            reason: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Every pair of states: exactly the five edges of the diagram are allowed.
    #[test]
    fn every_edge_of_the_state_machine() {
        let allowed = [
            (Pending, Submitted),
            (Pending, Succeeded),
            (Pending, Failed),
            (Submitted, Succeeded),
            (Submitted, Failed),
        ];
        for from in RefundState::ALL {
            for to in RefundState::ALL {
                let expected = allowed.contains(&(from, to));
                assert_eq!(from.can_transition_to(to), expected, "{from} -> {to}");
                let r = refund(from);
                let now = Utc::now();
                match r.transition(to, now) {
                    Ok(update) => {
                        assert!(expected, "{from} -> {to} applied");
                        assert_eq!(update.expected_version, 1);
                        assert_eq!(update.next.version, 2);
                        assert_eq!(update.next.status, to);
                    }
                    Err(e) => {
                        assert!(!expected, "{from} -> {to} refused");
                        assert_eq!(e.from, from);
                        assert_eq!(e.to, to);
                    }
                }
            }
        }
    }

    #[test]
    fn terminal_states_never_move() {
        for s in [Succeeded, Failed] {
            assert!(s.is_terminal());
            assert!(RefundState::ALL.iter().all(|t| !s.can_transition_to(*t)));
        }
    }

    #[test]
    fn states_round_trip_as_text() {
        for s in RefundState::ALL {
            assert_eq!(s.as_str().parse::<RefundState>(), Ok(s));
        }
        assert!("refunded".parse::<RefundState>().is_err());
    }

    #[test]
    fn a_retry_stays_pending_with_a_new_version() {
        let r = refund(Pending);
        let at = Utc::now();
        let update = r.retry_at(at, None, at);
        assert_eq!(update.next.status, Pending);
        assert_eq!(update.next.version, 2);
        assert_eq!(update.next.next_attempt_at, Some(at));
    }
}
