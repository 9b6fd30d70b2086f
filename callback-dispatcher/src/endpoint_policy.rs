//! When the dispatcher gives up on an endpoint: at once when it answers 410 Gone, and when
//! it has been failing (retries or give-ups, no success) for `disable_after`. A disabled
//! endpoint's pending deliveries stop. The repository only runs the queries
//! (`webhooks::finish` with the streak change, `webhook_endpoints::{disable_for,
//! disable_if_failing_since}`); the decision is here.

use std::time::Duration;

use chrono::TimeDelta;
use paygate_core::db::webhook_endpoints::{self, FailingStreak, NewDeliveryAttempt};
use paygate_core::db::webhooks::{self, ClaimedDelivery, DeliveryOutcome, StreakChange};
use paygate_core::db::DbError;
use sqlx::PgPool;

/// The stored `disabled_reason` of an endpoint answering 410 Gone.
pub(crate) const GONE: &str = "gone";
/// The stored `disabled_reason` of an endpoint failing for too long.
pub(crate) const FAILING: &str = "failing";

/// What [`EndpointPolicy::complete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Completed {
    /// False when the lease was lost (another worker re-claimed the delivery): the attempt
    /// was logged but the schedule was left to the newer attempt.
    pub applied: bool,
    /// The endpoint was disabled by this outcome (410, or failing for too long).
    pub endpoint_disabled: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointPolicy {
    /// `dispatcher.disable_after_failing_secs`.
    pub disable_after: Duration,
}

impl EndpointPolicy {
    /// Logs an attempt (when one was made), moves the delivery on and applies the endpoint
    /// policy. An endpoint's failing streak is tracked here: any success clears it.
    ///
    /// Round trips: the common case (any outcome but 410 Gone) is one statement
    /// ([`webhooks::finish`]); an endpoint found failing for too long is then disabled by a
    /// second one, fenced by the streak's start (a crash in between leaves it to the next
    /// failed attempt). A 410 disables the endpoint in the attempt's own commit, durably.
    pub async fn complete(
        &self,
        pool: &PgPool,
        claimed: &ClaimedDelivery,
        attempt: Option<&NewDeliveryAttempt>,
        outcome: DeliveryOutcome,
    ) -> Result<Completed, DbError> {
        if outcome == DeliveryOutcome::Gone {
            return self.complete_gone(pool, claimed, attempt).await;
        }
        let streak = match outcome {
            DeliveryOutcome::Succeeded => StreakChange::Clear,
            DeliveryOutcome::Retry { .. } | DeliveryOutcome::Failed => StreakChange::Mark,
            DeliveryOutcome::Gone | DeliveryOutcome::Skipped => StreakChange::Keep,
        };
        let finished = webhooks::finish(pool, claimed, attempt, outcome, streak).await?;
        let mut endpoint_disabled = false;
        if let (Some(endpoint), Some(streak)) = (claimed.endpoint_id, finished.failing) {
            if self.failing_too_long(&streak) {
                endpoint_disabled = webhook_endpoints::disable_if_failing_since(
                    pool,
                    endpoint,
                    streak.since,
                    FAILING,
                )
                .await?;
            }
        }
        Ok(Completed {
            applied: finished.applied,
            endpoint_disabled,
        })
    }

    /// A 410 Gone: the attempt, the delivery and the endpoint's disabling in one commit, kept
    /// durable.
    async fn complete_gone(
        &self,
        pool: &PgPool,
        claimed: &ClaimedDelivery,
        attempt: Option<&NewDeliveryAttempt>,
    ) -> Result<Completed, DbError> {
        let outcome = DeliveryOutcome::Gone;
        let mut db = pool.begin().await?;
        let applied = webhooks::complete(&mut db, claimed, attempt, outcome).await?;
        let mut endpoint_disabled = false;
        if let (true, Some(endpoint)) = (applied, claimed.endpoint_id) {
            endpoint_disabled = webhook_endpoints::disable_for(&mut db, endpoint, GONE).await?;
        }
        db.commit().await?;
        Ok(Completed {
            applied,
            endpoint_disabled,
        })
    }

    /// Whether a failing streak has lasted `disable_after` (a limit too large for a
    /// `TimeDelta` is never reached).
    pub fn failing_too_long(&self, streak: &FailingStreak) -> bool {
        TimeDelta::from_std(self.disable_after).is_ok_and(|limit| streak.length() >= limit)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn streak(secs: i64) -> FailingStreak {
        let since = Utc
            .timestamp_opt(1_700_000_000, 0)
            .single()
            .expect("a valid instant");
        let now = since + TimeDelta::seconds(secs);
        FailingStreak { since, now }
    }

    #[test]
    fn an_endpoint_is_disabled_once_it_has_failed_for_the_limit() {
        let policy = EndpointPolicy {
            disable_after: Duration::from_secs(3_600),
        };
        assert!(!policy.failing_too_long(&streak(0)));
        assert!(!policy.failing_too_long(&streak(3_599)));
        assert!(policy.failing_too_long(&streak(3_600)));
        assert!(policy.failing_too_long(&streak(86_400)));
    }

    #[test]
    fn a_zero_limit_disables_at_the_first_failure_and_a_huge_one_never() {
        let at_once = EndpointPolicy {
            disable_after: Duration::ZERO,
        };
        assert!(at_once.failing_too_long(&streak(0)));
        let never = EndpointPolicy {
            disable_after: Duration::MAX,
        };
        assert!(!never.failing_too_long(&streak(i64::from(u32::MAX))));
    }
}
