//! What one authenticated callback should do to one transaction: pure, no I/O.
//!
//! The transition itself is always computed by [`Transaction::advance`] (the one state
//! machine); this module only chooses between applying it and recording the callback as
//! late, conflicting or mismatched.

use chrono::{DateTime, Utc};
use paygate_core::domain::{GatewayName, Transaction, TransactionStatus, TransactionUpdate};
use paygate_gateways::check::check_outcome;
use paygate_gateways::{CallbackOutcome, ReportedStatus};

/// What became of a callback; the `outcome` column of the callback log and the `outcome`
/// label of `paygate_callbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The callback moved the transaction to its terminal state.
    Applied,
    /// The same provider event was settled before: nothing done.
    Duplicate,
    /// The transaction was already terminal with the same outcome: recorded, not applied.
    Late,
    /// The callback contradicts our record: recorded, flagged for review, never applied.
    Conflict,
    /// The reported money differs from ours: recorded, flagged for review, not applied.
    Mismatch,
}

impl Outcome {
    pub const ALL: [Self; 5] = [
        Self::Applied,
        Self::Duplicate,
        Self::Late,
        Self::Conflict,
        Self::Mismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Late => "late",
            Self::Conflict => "conflict",
            Self::Mismatch => "mismatch",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The decision for one callback against one snapshot of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this update (version-checked) and announce the terminal state.
    Apply(Box<TransactionUpdate>),
    /// Log the callback with this outcome and change nothing.
    Record {
        outcome: Outcome,
        needs_review: bool,
        /// Why, for the log and the callback log's `detail` (never the callback body).
        detail: String,
    },
}

/// The terminal status a reported outcome asks for.
pub fn target_status(status: &ReportedStatus) -> TransactionStatus {
    match status {
        ReportedStatus::Succeeded => TransactionStatus::Succeeded,
        ReportedStatus::Failed { .. } => TransactionStatus::Failed,
    }
}

/// The statuses in which a provider may report an outcome: an attempt is (or was) under
/// way. `submitting` too: the callback can overtake our own `submitted` write;
/// `unresolved`, which a late authentic callback finishes; and `requires_action`, which the
/// customer finished at the provider.
pub fn awaits_outcome(status: TransactionStatus) -> bool {
    matches!(
        status,
        TransactionStatus::Submitting
            | TransactionStatus::Submitted
            | TransactionStatus::RetryScheduled
            | TransactionStatus::Unresolved
            | TransactionStatus::RequiresAction
    )
}

/// Decides what `callback`, received through `gateway`, does to `snapshot`.
///
/// In order:
/// 1. the one outcome check ([`check_outcome`], shared with synchronous and status answers):
///    another gateway than the routed one, or a transaction routed nowhere yet → conflict
///    (after a failover the first provider must neither fail a payment the next one may
///    complete nor pass silently if it says money moved); amount, currency, kind or
///    provider reference that differ from ours → mismatch;
/// 2. transaction already terminal → late (same outcome) or conflict (the other one);
/// 3. a transaction never submitted (`pending`) → conflict (`pending → failed` is a move of
///    ours, for a transaction no gateway can take, not a provider's);
/// 4. otherwise the state machine's move → apply (from `submitting`, `submitted`,
///    `retry_scheduled` or `unresolved`).
pub fn decide(
    snapshot: &Transaction,
    gateway: &GatewayName,
    callback: &CallbackOutcome,
    now: DateTime<Utc>,
) -> Decision {
    let target = target_status(&callback.status);
    let review = |outcome, detail: String| Decision::Record {
        outcome,
        needs_review: true,
        detail,
    };

    if let Err(mismatch) = check_outcome(snapshot, gateway, &callback.reported()) {
        let outcome = if mismatch.is_routing() {
            Outcome::Conflict
        } else {
            Outcome::Mismatch
        };
        return review(outcome, format!("{target} callback: {mismatch}"));
    }
    if snapshot.status.is_terminal() {
        return if snapshot.status == target {
            Decision::Record {
                outcome: Outcome::Late,
                needs_review: false,
                detail: format!("already {}", snapshot.status),
            }
        } else {
            review(
                Outcome::Conflict,
                format!("reported {target} after {}", snapshot.status),
            )
        };
    }
    if !awaits_outcome(snapshot.status) {
        return review(
            Outcome::Conflict,
            format!(
                "reported {target} for a transaction never submitted ({})",
                snapshot.status
            ),
        );
    }
    match snapshot.advance(target, now) {
        Ok(mut update) => {
            if !callback.provider_reference.is_empty() {
                update = update.provider_reference(callback.provider_reference.clone());
            }
            update = match &callback.status {
                ReportedStatus::Failed { code, reason } => {
                    update.failure(code.clone(), reason.clone())
                }
                // A non-terminal transaction's failure is the last attempt's error.
                ReportedStatus::Succeeded => update.clear_failure(),
            };
            Decision::Apply(Box::new(update))
        }
        Err(refused) => review(
            Outcome::Conflict,
            format!("reported {target} while {}: {refused}", snapshot.status),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paygate_core::domain::{
        CustomerReference, MerchantId, Money, NewTransaction, TransactionKind,
    };
    use TransactionStatus::*;

    fn money(amount: i64, currency: &str) -> Money {
        Money::from_parts(amount, currency).unwrap_or_else(|e| panic!("{e}"))
    }

    fn name(s: &str) -> GatewayName {
        GatewayName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn transaction(status: TransactionStatus) -> Transaction {
        let mut tx = Transaction::create(
            NewTransaction {
                merchant_id: MerchantId::new(),
                kind: TransactionKind::Deposit,
                money: money(1050, "USD"),
                customer: CustomerReference::parse("cust_1").unwrap_or_else(|e| panic!("{e}")),
                gateway: Some(name("gw-json")),
                callback_url: None,
                metadata: serde_json::json!({}),
            },
            Utc::now(),
        );
        tx.routed_gateway = Some(name("gw-json"));
        tx.status = status;
        tx.version = 3;
        tx
    }

    fn callback(tx: &Transaction, status: ReportedStatus) -> CallbackOutcome {
        CallbackOutcome {
            transaction_id: tx.id,
            status,
            provider_reference: "pr_1".into(),
            provider_event_id: "ev_1".into(),
            money: tx.money,
            kind: Some(tx.kind),
        }
    }

    fn failed() -> ReportedStatus {
        ReportedStatus::Failed {
            code: "declined".into(),
            reason: "insufficient funds".into(),
        }
    }

    #[test]
    fn applies_from_every_in_flight_state() {
        for from in [Submitting, Submitted, RetryScheduled, Unresolved] {
            for reported in [ReportedStatus::Succeeded, failed()] {
                let tx = transaction(from);
                let cb = callback(&tx, reported.clone());
                let Decision::Apply(update) = decide(&tx, &name("gw-json"), &cb, Utc::now()) else {
                    panic!("{from} + {reported:?} not applied");
                };
                assert_eq!(update.expected_version, 3);
                assert_eq!(update.next.version, 4);
                assert_eq!(update.next.status, target_status(&reported));
                assert_eq!(update.next.provider_reference.as_deref(), Some("pr_1"));
                match reported {
                    ReportedStatus::Succeeded => assert_eq!(update.next.failure, None),
                    ReportedStatus::Failed { .. } => {
                        assert_eq!(
                            update.next.failure.as_ref().map(|f| f.code.as_str()),
                            Some("declined")
                        )
                    }
                }
            }
        }
    }

    #[test]
    fn terminal_same_outcome_is_late_other_outcome_is_conflict() {
        let tx = transaction(Succeeded);
        let late = decide(
            &tx,
            &name("gw-json"),
            &callback(&tx, ReportedStatus::Succeeded),
            Utc::now(),
        );
        assert!(matches!(
            late,
            Decision::Record {
                outcome: Outcome::Late,
                needs_review: false,
                ..
            }
        ));
        let conflict = decide(&tx, &name("gw-json"), &callback(&tx, failed()), Utc::now());
        assert!(matches!(
            conflict,
            Decision::Record {
                outcome: Outcome::Conflict,
                needs_review: true,
                ..
            }
        ));
        let tx = transaction(Failed);
        let conflict = decide(
            &tx,
            &name("gw-json"),
            &callback(&tx, ReportedStatus::Succeeded),
            Utc::now(),
        );
        assert!(matches!(
            conflict,
            Decision::Record {
                outcome: Outcome::Conflict,
                needs_review: true,
                ..
            }
        ));
        let late = decide(&tx, &name("gw-json"), &callback(&tx, failed()), Utc::now());
        assert!(matches!(
            late,
            Decision::Record {
                outcome: Outcome::Late,
                ..
            }
        ));
    }

    #[test]
    fn amount_or_currency_mismatch_is_flagged_never_applied() {
        for reported in [money(1051, "USD"), money(1050, "EUR"), money(105, "USD")] {
            for status in [Submitted, Succeeded] {
                let tx = transaction(status);
                let mut cb = callback(&tx, ReportedStatus::Succeeded);
                cb.money = reported;
                let decision = decide(&tx, &name("gw-json"), &cb, Utc::now());
                assert!(
                    matches!(
                        decision,
                        Decision::Record {
                            outcome: Outcome::Mismatch,
                            needs_review: true,
                            ..
                        }
                    ),
                    "{reported} on {status}: {decision:?}"
                );
            }
        }
    }

    #[test]
    fn a_transaction_never_submitted_or_routed_elsewhere_is_a_conflict() {
        let tx = transaction(Pending);
        let decision = decide(
            &tx,
            &name("gw-json"),
            &callback(&tx, ReportedStatus::Succeeded),
            Utc::now(),
        );
        assert!(matches!(
            decision,
            Decision::Record {
                outcome: Outcome::Conflict,
                needs_review: true,
                ..
            }
        ));
        let tx = transaction(Submitted);
        let decision = decide(&tx, &name("gw-soap"), &callback(&tx, failed()), Utc::now());
        assert!(matches!(
            decision,
            Decision::Record {
                outcome: Outcome::Conflict,
                needs_review: true,
                ..
            }
        ));
    }

    #[test]
    fn an_unrouted_transaction_accepts_no_callback() {
        let mut tx = transaction(Submitting);
        tx.gateway = Some(name("gw-soap"));
        tx.routed_gateway = None;
        let decision = decide(
            &tx,
            &name("gw-soap"),
            &callback(&tx, ReportedStatus::Succeeded),
            Utc::now(),
        );
        assert!(
            matches!(
                decision,
                Decision::Record {
                    outcome: Outcome::Conflict,
                    needs_review: true,
                    ..
                }
            ),
            "{decision:?}"
        );
    }

    #[test]
    fn another_kind_or_provider_reference_is_a_mismatch() {
        let mut tx = transaction(Submitted);
        tx.provider_reference = Some("pr_1".into());
        let mut transfer = callback(&tx, ReportedStatus::Succeeded);
        transfer.kind = Some(TransactionKind::Withdrawal);
        let mut other_reference = callback(&tx, ReportedStatus::Succeeded);
        other_reference.provider_reference = "pr_2".into();
        for cb in [transfer, other_reference] {
            let decision = decide(&tx, &name("gw-json"), &cb, Utc::now());
            assert!(
                matches!(
                    decision,
                    Decision::Record {
                        outcome: Outcome::Mismatch,
                        needs_review: true,
                        ..
                    }
                ),
                "{cb:?}: {decision:?}"
            );
        }
    }

    #[test]
    fn every_status_gets_exactly_one_kind_of_decision() {
        for status in TransactionStatus::ALL {
            for reported in [ReportedStatus::Succeeded, failed()] {
                let tx = transaction(status);
                let decision = decide(
                    &tx,
                    &name("gw-json"),
                    &callback(&tx, reported.clone()),
                    Utc::now(),
                );
                let applied = matches!(decision, Decision::Apply(_));
                assert_eq!(
                    applied,
                    matches!(
                        status,
                        Submitting | Submitted | RetryScheduled | Unresolved | RequiresAction
                    ),
                    "{status} {reported:?}"
                );
            }
        }
    }

    #[test]
    fn outcomes_round_trip_as_text() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::parse("unknown"), None);
    }
}
