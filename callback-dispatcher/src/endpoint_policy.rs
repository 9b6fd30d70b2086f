//! When the dispatcher gives up on an endpoint: at once when it answers 410 Gone, and when
//! it has been failing (retries or give-ups, no success) for `disable_after`. A disabled
//! endpoint's pending deliveries stop. The repository only runs the queries
//! (`webhook_endpoints::{clear_failing, mark_failing, disable_for}`); the decision is here.

use std::time::Duration;

use chrono::TimeDelta;
use paygate_core::db::webhook_endpoints::{self, FailingStreak, NewDeliveryAttempt};
use paygate_core::db::webhooks::{self, ClaimedDelivery, DeliveryOutcome};
use paygate_core::db::{relax_durability, DbError};
use paygate_core::domain::WebhookEndpointId;
use sqlx::{PgPool, Postgres, Transaction};

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
    /// policy, in one commit. An endpoint's failing streak is tracked here: any success
    /// clears it.
    pub async fn complete(
        &self,
        pool: &PgPool,
        claimed: &ClaimedDelivery,
        attempt: Option<&NewDeliveryAttempt>,
        outcome: DeliveryOutcome,
    ) -> Result<Completed, DbError> {
        let mut db = pool.begin().await?;
        // A lost result only sends the webhook again, with the same `webhook-id`; disabling
        // a gone endpoint is kept durable.
        if outcome != DeliveryOutcome::Gone {
            relax_durability(&mut db).await?;
        }
        let applied = webhooks::complete(&mut db, claimed, attempt, outcome).await?;
        let mut endpoint_disabled = false;
        if let (true, Some(endpoint)) = (applied, claimed.endpoint_id) {
            if let Some(reason) = self.disable_reason(&mut db, endpoint, outcome).await? {
                endpoint_disabled =
                    webhook_endpoints::disable_for(&mut db, endpoint, reason).await?;
            }
        }
        db.commit().await?;
        Ok(Completed {
            applied,
            endpoint_disabled,
        })
    }

    /// Updates the endpoint's failing streak for `outcome`; the reason to disable it now,
    /// if any.
    async fn disable_reason(
        &self,
        db: &mut Transaction<'_, Postgres>,
        endpoint: WebhookEndpointId,
        outcome: DeliveryOutcome,
    ) -> Result<Option<&'static str>, DbError> {
        Ok(match outcome {
            DeliveryOutcome::Succeeded => {
                webhook_endpoints::clear_failing(&mut **db, endpoint).await?;
                None
            }
            DeliveryOutcome::Retry { .. } | DeliveryOutcome::Failed => {
                let streak = webhook_endpoints::mark_failing(&mut **db, endpoint).await?;
                streak
                    .filter(|streak| self.failing_too_long(streak))
                    .map(|_| FAILING)
            }
            DeliveryOutcome::Gone => Some(GONE),
            DeliveryOutcome::Skipped => None,
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
