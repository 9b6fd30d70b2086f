//! The one outcome check: before paygate believes what a provider says about a payment —
//! in a callback, in a synchronous answer, or in a status answer — the report must be about
//! *this* payment, as we recorded it, from the gateway it was routed to.
//!
//! A mismatch is recorded and flagged for a person, never applied: a callback from the
//! gateway we failed over from must not decide the payment, and a success for another amount,
//! currency or kind (a charge's success settling a payout) is not our payment's success.

use paygate_core::domain::{GatewayName, Money, Transaction, TransactionKind};

use crate::Reported;

/// Why a provider's report does not fit our record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeMismatch {
    /// The transaction went to no gateway yet: no provider can know it.
    #[error("reported by gateway {reported}, but the transaction was never routed to a gateway")]
    NotRouted { reported: GatewayName },
    /// Another gateway than the one the latest attempt went to.
    #[error("reported by gateway {reported}, but the transaction is routed to {ours}")]
    Gateway {
        reported: GatewayName,
        ours: GatewayName,
    },
    #[error("reported {reported}, recorded {ours}")]
    Money { reported: Money, ours: Money },
    #[error("reported a {} for a {}", reported.as_str(), ours.as_str())]
    Kind {
        reported: TransactionKind,
        ours: TransactionKind,
    },
    #[error("reported provider reference {reported:?}, recorded {ours:?}")]
    ProviderReference { reported: String, ours: String },
}

impl OutcomeMismatch {
    /// Wrong gateway (or none): a routing conflict, not a disagreement about the payment.
    pub fn is_routing(&self) -> bool {
        matches!(self, Self::NotRouted { .. } | Self::Gateway { .. })
    }
}

/// Checks `reported`, received from `gateway`, against `ours`. Each fact is compared where
/// the report carries it; the gateway always.
pub fn check_outcome(
    ours: &Transaction,
    gateway: &GatewayName,
    reported: &Reported,
) -> Result<(), OutcomeMismatch> {
    match &ours.routed_gateway {
        None => {
            return Err(OutcomeMismatch::NotRouted {
                reported: gateway.clone(),
            })
        }
        Some(routed) if routed != gateway => {
            return Err(OutcomeMismatch::Gateway {
                reported: gateway.clone(),
                ours: routed.clone(),
            })
        }
        Some(_) => {}
    }
    if let Some(money) = reported.money {
        if money != ours.money {
            return Err(OutcomeMismatch::Money {
                reported: money,
                ours: ours.money,
            });
        }
    }
    if let Some(kind) = reported.kind {
        if kind != ours.kind {
            return Err(OutcomeMismatch::Kind {
                reported: kind,
                ours: ours.kind,
            });
        }
    }
    if let (Some(theirs), Some(recorded)) = (&reported.provider_reference, &ours.provider_reference)
    {
        if theirs != recorded {
            return Err(OutcomeMismatch::ProviderReference {
                reported: theirs.clone(),
                ours: recorded.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use paygate_core::domain::{CustomerReference, MerchantId, NewTransaction};

    fn name(s: &str) -> GatewayName {
        GatewayName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn money(amount: i64, currency: &str) -> Money {
        Money::from_parts(amount, currency).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ours() -> Transaction {
        let mut tx = Transaction::create(
            NewTransaction {
                merchant_id: MerchantId::new(),
                kind: TransactionKind::Withdrawal,
                money: money(1050, "USD"),
                customer: CustomerReference::parse("c").unwrap_or_else(|e| panic!("{e}")),
                gateway: None,
                callback_url: None,
                metadata: serde_json::json!({}),
            },
            Utc::now(),
        );
        tx.routed_gateway = Some(name("a"));
        tx.provider_reference = Some("pr_1".into());
        tx
    }

    fn report() -> Reported {
        Reported {
            money: Some(money(1050, "USD")),
            kind: Some(TransactionKind::Withdrawal),
            provider_reference: Some("pr_1".into()),
        }
    }

    #[test]
    fn a_matching_report_passes_and_missing_facts_are_not_compared() {
        assert_eq!(check_outcome(&ours(), &name("a"), &report()), Ok(()));
        assert_eq!(
            check_outcome(&ours(), &name("a"), &Reported::default()),
            Ok(())
        );
        let mut fresh = ours();
        fresh.provider_reference = None;
        assert_eq!(check_outcome(&fresh, &name("a"), &report()), Ok(()));
    }

    /// A report and the mismatch it must produce.
    type Case = (Reported, fn(&OutcomeMismatch) -> bool);

    #[test]
    fn each_fact_that_differs_is_named() {
        let tx = ours();
        let cases: Vec<Case> = vec![
            (
                Reported {
                    money: Some(money(1051, "USD")),
                    ..report()
                },
                |m| matches!(m, OutcomeMismatch::Money { .. }),
            ),
            (
                Reported {
                    money: Some(money(1050, "EUR")),
                    ..report()
                },
                |m| matches!(m, OutcomeMismatch::Money { .. }),
            ),
            (
                Reported {
                    kind: Some(TransactionKind::Deposit),
                    ..report()
                },
                |m| matches!(m, OutcomeMismatch::Kind { .. }),
            ),
            (
                Reported {
                    provider_reference: Some("pr_2".into()),
                    ..report()
                },
                |m| matches!(m, OutcomeMismatch::ProviderReference { .. }),
            ),
        ];
        for (reported, expected) in cases {
            let Err(mismatch) = check_outcome(&tx, &name("a"), &reported) else {
                panic!("{reported:?} passed");
            };
            assert!(expected(&mismatch), "{mismatch}");
            assert!(!mismatch.is_routing());
        }
    }

    #[test]
    fn only_the_routed_gateway_may_report() {
        let Err(wrong) = check_outcome(&ours(), &name("b"), &report()) else {
            panic!("another gateway's report passed");
        };
        assert!(wrong.is_routing());
        let mut unrouted = ours();
        unrouted.routed_gateway = None;
        assert_eq!(
            check_outcome(&unrouted, &name("a"), &report()),
            Err(OutcomeMismatch::NotRouted {
                reported: name("a")
            })
        );
    }
}
