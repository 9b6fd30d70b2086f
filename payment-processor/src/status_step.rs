//! What a status answer means for a payment a provider may hold: pure, no I/O.
//!
//! Used after an ambiguous attempt, by reconciliation of a transaction stuck mid-flight, and
//! for `unresolved` transactions. The rules (issue "money safety"):
//! - a final answer is believed only after [`check_outcome`] (money, kind, reference, gateway);
//! - "not found" means "never executed" only once the gateway's settle window has passed
//!   since the ambiguous attempt, and never for a payment the provider acknowledged (we hold
//!   its reference);
//! - a status query that errors is asked again later: never read as "unsupported" or "not
//!   found";
//! - a gateway with no status query gets the same request again, same gateway, same
//!   reference (the provider dedupes it).

use std::time::Duration;

use chrono::{DateTime, Utc};
use paygate_core::domain::clock;
use paygate_core::domain::{GatewayName, Transaction, TransactionStatus};
use paygate_gateways::check::{check_outcome, OutcomeMismatch};
use paygate_gateways::{GatewayError, ProviderStatus, ReportedStatus};

use crate::attempt::codes;

/// How long to wait between status queries about one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskPacing {
    pub min: Duration,
    pub max: Duration,
}

impl AskPacing {
    /// Half the time since the ambiguous attempt, within `min..=max`: prompt at first, then
    /// backing off for a provider that stays silent for hours.
    pub fn next(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        let wait = (clock::elapsed(since, now) / 2).clamp(self.min, self.max.max(self.min));
        clock::after(now, wait)
    }
}

/// Whether the provider refused a resubmit of `tx` as a duplicate reference (recorded as
/// the failure code [`codes::DUPLICATE_REFERENCE`]): it holds the payment.
pub fn holds_reference(tx: &Transaction) -> bool {
    tx.failure
        .as_ref()
        .is_some_and(|f| f.code == codes::DUPLICATE_REFERENCE)
}

/// The next step for a payment after asking its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The provider's verdict, checked: finish the transaction with it.
    Finish {
        status: TransactionStatus,
        failure: Option<(String, String)>,
        provider_reference: Option<String>,
    },
    /// The provider reports something that is not this payment as we recorded it: flag it
    /// for a person (the transaction becomes or stays `unresolved`), never apply it.
    Mismatch(OutcomeMismatch),
    /// The provider holds the payment and is executing it: its callback will tell.
    Executing,
    /// The provider holds the payment and waits for the customer: nothing has moved yet.
    /// Like `Executing` for a payment in flight; fails a `requires_action` one past its
    /// expiry.
    AwaitingCustomer,
    /// Nothing settled yet (not visible yet, or the query failed): ask again at.
    AskAgainAt { at: DateTime<Utc>, why: String },
    /// The provider has no record after its settle window: it never executed. The payment
    /// may go to any gateway of its route again.
    NeverExecuted,
    /// The gateway has no status query: send the same request again to the same gateway
    /// with the same reference.
    Resubmit,
}

/// Decides what `answer` (from `gateway`, about `tx`) means. `since` is when the provider
/// may first have received the payment; `settle_window` its status query's lag allowance.
pub fn after_asking(
    tx: &Transaction,
    gateway: &GatewayName,
    answer: Result<ProviderStatus, GatewayError>,
    since: DateTime<Utc>,
    settle_window: Duration,
    pacing: AskPacing,
    now: DateTime<Utc>,
) -> Step {
    let ask_again = |why: String| Step::AskAgainAt {
        at: pacing.next(since, now),
        why,
    };
    match answer {
        Err(error) => ask_again(format!("status query failed: {error}")),
        Ok(ProviderStatus::Unsupported) => Step::Resubmit,
        Ok(ProviderStatus::InProgress) => Step::Executing,
        Ok(ProviderStatus::AwaitingCustomer) => Step::AwaitingCustomer,
        Ok(ProviderStatus::NotFound) => {
            let settled_at = clock::after(since, settle_window);
            if tx.provider_reference.is_some() || holds_reference(tx) {
                // It acknowledged the payment once (answered with its reference, or refused
                // a resubmit as a duplicate): "not found" now is the provider's
                // inconsistency, not proof that nothing moved.
                ask_again("the provider acknowledged it but now reports no record".into())
            } else if now >= settled_at {
                Step::NeverExecuted
            } else {
                Step::AskAgainAt {
                    at: pacing.next(since, now).min(settled_at),
                    why: format!(
                        "not found yet; inside the {}s settle window",
                        settle_window.as_secs()
                    ),
                }
            }
        }
        Ok(ProviderStatus::Final { status, reported }) => {
            if let Err(mismatch) = check_outcome(tx, gateway, &reported) {
                return Step::Mismatch(mismatch);
            }
            let (target, failure) = match status {
                ReportedStatus::Succeeded => (TransactionStatus::Succeeded, None),
                ReportedStatus::Failed { code, reason } => {
                    (TransactionStatus::Failed, Some((code, reason)))
                }
            };
            Step::Finish {
                status: target,
                failure,
                provider_reference: reported.provider_reference,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paygate_core::domain::{
        CustomerReference, MerchantId, Money, NewTransaction, TransactionKind,
    };
    use paygate_gateways::Reported;

    fn name(s: &str) -> GatewayName {
        GatewayName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn tx() -> Transaction {
        let mut t = Transaction::create(
            NewTransaction {
                merchant_id: MerchantId::new(),
                kind: TransactionKind::Withdrawal,
                money: Money::from_parts(500, "USD").unwrap_or_else(|e| panic!("{e}")),
                customer: CustomerReference::parse("c").unwrap_or_else(|e| panic!("{e}")),
                gateway: None,
                callback_url: None,
                metadata: serde_json::json!({}),
            },
            Utc::now(),
        );
        t.routed_gateway = Some(name("a"));
        t
    }

    const PACING: AskPacing = AskPacing {
        min: Duration::from_secs(1),
        max: Duration::from_secs(600),
    };
    const WINDOW: Duration = Duration::from_secs(60);

    fn step(t: &Transaction, answer: Result<ProviderStatus, GatewayError>, age: i64) -> Step {
        let now = Utc::now();
        after_asking(
            t,
            &name("a"),
            answer,
            now - chrono::Duration::seconds(age),
            WINDOW,
            PACING,
            now,
        )
    }

    #[test]
    fn not_found_means_never_executed_only_after_the_settle_window() {
        assert!(matches!(
            step(&tx(), Ok(ProviderStatus::NotFound), 10),
            Step::AskAgainAt { .. }
        ));
        assert_eq!(
            step(&tx(), Ok(ProviderStatus::NotFound), 61),
            Step::NeverExecuted
        );
        let mut acknowledged = tx();
        acknowledged.provider_reference = Some("pr_1".into());
        assert!(matches!(
            step(&acknowledged, Ok(ProviderStatus::NotFound), 3_600),
            Step::AskAgainAt { .. }
        ));
    }

    #[test]
    fn inside_the_window_the_next_question_comes_no_later_than_its_end() {
        let now = Utc::now();
        let since = now - chrono::Duration::seconds(50);
        let Step::AskAgainAt { at, .. } = after_asking(
            &tx(),
            &name("a"),
            Ok(ProviderStatus::NotFound),
            since,
            WINDOW,
            PACING,
            now,
        ) else {
            panic!("not asked again");
        };
        assert!(at <= clock::after(since, WINDOW));
        assert!(at > now);
    }

    #[test]
    fn an_error_is_asked_again_never_read_as_unsupported_or_not_found() {
        for error in [
            GatewayError::Ambiguous {
                reason: "502".into(),
            },
            GatewayError::Retryable {
                reason: "refused".into(),
                retry_after: None,
            },
            GatewayError::Permanent {
                code: "x".into(),
                reason: "y".into(),
            },
        ] {
            assert!(matches!(
                step(&tx(), Err(error), 3_600),
                Step::AskAgainAt { .. }
            ));
        }
        assert_eq!(
            step(&tx(), Ok(ProviderStatus::Unsupported), 0),
            Step::Resubmit
        );
    }

    #[test]
    fn a_final_answer_is_checked_before_it_is_believed() {
        let good = Reported {
            money: Some(Money::from_parts(500, "USD").unwrap_or_else(|e| panic!("{e}"))),
            ..Reported::default()
        };
        let finished = step(
            &tx(),
            Ok(ProviderStatus::Final {
                status: ReportedStatus::Succeeded,
                reported: good,
            }),
            5,
        );
        assert!(matches!(
            finished,
            Step::Finish {
                status: TransactionStatus::Succeeded,
                ..
            }
        ));
        let wrong = Reported {
            money: Some(Money::from_parts(501, "USD").unwrap_or_else(|e| panic!("{e}"))),
            ..Reported::default()
        };
        let flagged = step(
            &tx(),
            Ok(ProviderStatus::Final {
                status: ReportedStatus::Succeeded,
                reported: wrong,
            }),
            5,
        );
        assert!(matches!(
            flagged,
            Step::Mismatch(OutcomeMismatch::Money { .. })
        ));
    }

    #[test]
    fn pacing_grows_with_the_wait_within_its_bounds() {
        let now = Utc::now();
        assert_eq!(PACING.next(now, now), clock::after(now, PACING.min));
        let day_ago = now - chrono::Duration::days(1);
        assert_eq!(PACING.next(day_ago, now), clock::after(now, PACING.max));
        let ten_min = now - chrono::Duration::minutes(10);
        assert_eq!(
            PACING.next(ten_min, now),
            clock::after(now, Duration::from_secs(300))
        );
    }
}
