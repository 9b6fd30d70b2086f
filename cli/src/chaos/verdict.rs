//! What one phase's numbers mean: the invariants (accepted = terminal = webhooks delivered
//! = provider executions, none twice, none stuck) and the recovery time. Pure, so the
//! arithmetic is tested without a topology.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

/// What a phase saw, gathered after its drain.
#[derive(Debug, Default)]
pub struct Observed {
    /// Transaction ids answered `202`, with when the answer came.
    pub accepted: HashMap<String, Instant>,
    /// Create requests that got no `202` even after the client's failover (every API
    /// instance refused or was down for its whole give-up time, or a non-retryable answer).
    pub create_errors: u64,
    /// Creates sent again (same Idempotency-Key) after no answer, mostly to another API
    /// instance; each re-send counts.
    pub create_retries: u64,
    /// Every transaction of the phase's merchant in Postgres: id → terminal. Includes creates
    /// that committed although their answer was lost.
    pub rows: HashMap<String, bool>,
    /// Verified webhooks: transaction id → when the first arrived.
    pub first_webhook: HashMap<String, Instant>,
    /// Webhooks that arrived again for a transaction already notified.
    pub repeated_webhooks: u64,
    /// The sandbox's executions and suppressed duplicates over the phase.
    pub executions: u64,
    pub duplicates_suppressed: u64,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub fault: String,
    pub accepted: u64,
    pub create_errors: u64,
    /// Creates sent again with the same Idempotency-Key (see [`Observed::create_retries`]).
    pub create_retries: u64,
    /// Transactions in Postgres (≥ accepted: a create whose answer was lost still counts).
    pub transactions: u64,
    pub terminal: u64,
    pub webhooks: u64,
    pub executions: u64,
    /// Accepted but absent from Postgres, or in Postgres without a webhook by the deadline.
    pub lost: u64,
    /// Provider executions beyond one per transaction.
    pub executed_twice: u64,
    /// Transactions executed by no provider (terminal without an execution).
    pub not_executed: u64,
    /// Not terminal by the deadline.
    pub stuck: u64,
    pub repeated_webhooks: u64,
    /// From the fault to the webhook of the last payment accepted before it (the slowest of
    /// them); `None` when one of them never got its webhook.
    pub recovery_secs: Option<f64>,
    /// The slowest accept→webhook of the phase (payments accepted during the outage
    /// included: the last one before the fault may be done before the fault bites);
    /// `None` when a payment never got its webhook.
    pub slowest_secs: Option<f64>,
    /// Service processes that crashed during the phase and were restarted by their
    /// supervisor (`scripts/up supervise`). Not a failure by itself (the database re-drives
    /// what they held); reported so that a crash is never hidden.
    pub crashes: u64,
}

impl Verdict {
    pub fn of(fault: String, observed: &Observed, fault_at: Instant) -> Self {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let missing_rows = observed
            .accepted
            .keys()
            .filter(|id| !observed.rows.contains_key(*id))
            .count();
        let without_webhook = observed
            .rows
            .keys()
            .filter(|id| !observed.first_webhook.contains_key(*id))
            .count();
        let terminal = observed.rows.values().filter(|t| **t).count();
        let webhooks = observed
            .rows
            .keys()
            .filter(|id| observed.first_webhook.contains_key(*id))
            .count();
        let transactions = count(observed.rows.len());
        let before: HashSet<&String> = observed
            .accepted
            .iter()
            .filter(|(_, at)| **at <= fault_at)
            .map(|(id, _)| id)
            .collect();
        let mut recovery_secs = Some(0.0_f64);
        for id in &before {
            match (observed.first_webhook.get(*id), recovery_secs) {
                (Some(arrived), Some(so_far)) => {
                    let secs = arrived.saturating_duration_since(fault_at).as_secs_f64();
                    recovery_secs = Some(so_far.max(secs));
                }
                _ => recovery_secs = None,
            }
        }
        if before.is_empty() {
            recovery_secs = None;
        }
        let mut slowest_secs = Some(0.0_f64);
        for (id, accepted_at) in &observed.accepted {
            slowest_secs = match (observed.first_webhook.get(id), slowest_secs) {
                (Some(arrived), Some(so_far)) => Some(
                    so_far.max(
                        arrived
                            .saturating_duration_since(*accepted_at)
                            .as_secs_f64(),
                    ),
                ),
                _ => None,
            };
        }
        Verdict {
            fault,
            accepted: count(observed.accepted.len()),
            create_errors: observed.create_errors,
            create_retries: observed.create_retries,
            transactions,
            terminal: count(terminal),
            webhooks: count(webhooks),
            executions: observed.executions,
            lost: count(missing_rows).saturating_add(count(without_webhook)),
            executed_twice: observed.executions.saturating_sub(transactions),
            not_executed: transactions.saturating_sub(observed.executions),
            stuck: transactions.saturating_sub(count(terminal)),
            repeated_webhooks: observed.repeated_webhooks,
            recovery_secs,
            slowest_secs,
            crashes: 0,
        }
    }

    /// Whether the phase kept every promise, recovering within `max_recovery_secs`.
    pub fn problems(&self, max_recovery_secs: f64) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |bad: u64, what: &str| {
            if bad > 0 {
                problems.push(format!("{bad} {what}"));
            }
        };
        check(self.lost, "lost");
        check(self.executed_twice, "executed twice");
        check(self.not_executed, "never executed");
        check(self.stuck, "stuck");
        if self.accepted == 0 {
            problems.push("no payment accepted".into());
        }
        match self.recovery_secs {
            Some(secs) if secs > max_recovery_secs => {
                problems.push(format!("recovery {secs:.1} s > {max_recovery_secs} s"))
            }
            Some(_) => {}
            None => problems.push(
                "no recovery time (a payment accepted before the fault never got its webhook)"
                    .into(),
            ),
        }
        if let Some(secs) = self.slowest_secs.filter(|s| *s > max_recovery_secs) {
            problems.push(format!(
                "a payment waited {secs:.1} s for its webhook (> {max_recovery_secs} s)"
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn observed(now: Instant) -> Observed {
        let mut o = Observed::default();
        for (n, offset) in [(1, 0), (2, 2), (3, 4)] {
            let id = format!("txn_{n}");
            o.accepted
                .insert(id.clone(), now + Duration::from_secs(offset));
            o.rows.insert(id.clone(), true);
            o.first_webhook
                .insert(id, now + Duration::from_secs(offset + 1));
        }
        o.executions = 3;
        o
    }

    #[test]
    fn a_clean_phase_has_no_problems_and_measures_recovery_from_the_fault() {
        let now = Instant::now();
        let o = observed(now);
        // Fault at +3 s: txn_1 and txn_2 were accepted before it; txn_2's webhook at +3 s.
        let v = Verdict::of("f".into(), &o, now + Duration::from_secs(3));
        assert_eq!(
            (v.accepted, v.terminal, v.webhooks, v.executions),
            (3, 3, 3, 3)
        );
        assert_eq!(v.recovery_secs, Some(0.0));
        assert_eq!(v.slowest_secs, Some(1.0));
        assert!(v.problems(30.0).is_empty(), "{:?}", v.problems(30.0));
        let v = Verdict::of("f".into(), &o, now + Duration::from_millis(2500));
        assert_eq!(v.recovery_secs, Some(0.5));
    }

    #[test]
    fn a_missing_webhook_is_lost_and_leaves_no_recovery_time() {
        let now = Instant::now();
        let mut o = observed(now);
        o.first_webhook.remove("txn_1");
        o.rows.insert("txn_1".into(), false);
        let v = Verdict::of("f".into(), &o, now + Duration::from_secs(3));
        assert_eq!((v.lost, v.stuck, v.recovery_secs), (1, 1, None));
        assert_eq!(v.problems(30.0).len(), 3, "{:?}", v.problems(30.0));
    }

    #[test]
    fn an_accepted_payment_absent_from_postgres_is_lost() {
        let now = Instant::now();
        let mut o = observed(now);
        o.accepted
            .insert("txn_9".into(), now + Duration::from_secs(9));
        let v = Verdict::of("f".into(), &o, now + Duration::from_secs(3));
        assert_eq!(v.lost, 1);
    }

    #[test]
    fn executions_beyond_one_per_transaction_are_counted_twice() {
        let now = Instant::now();
        let mut o = observed(now);
        o.executions = 5;
        let v = Verdict::of("f".into(), &o, now + Duration::from_secs(3));
        assert_eq!((v.executed_twice, v.not_executed), (2, 0));
        o.executions = 2;
        let v = Verdict::of("f".into(), &o, now + Duration::from_secs(3));
        assert_eq!((v.executed_twice, v.not_executed), (0, 1));
    }

    #[test]
    fn a_slow_recovery_is_a_problem() {
        let now = Instant::now();
        let mut o = observed(now);
        o.first_webhook
            .insert("txn_1".into(), now + Duration::from_secs(40));
        let v = Verdict::of("f".into(), &o, now + Duration::from_secs(3));
        assert_eq!(v.recovery_secs, Some(37.0));
        assert_eq!(v.slowest_secs, Some(40.0));
        assert_eq!(v.problems(30.0).len(), 2);
    }
}
