//! Delivering one claimed delivery: sign, send, log the attempt, decide what comes next.

use chrono::Utc;
use paygate_core::db::webhook_endpoints::NewDeliveryAttempt;
use paygate_core::db::webhooks::{ClaimedDelivery, DeliveryOutcome};
use sqlx::PgPool;

use crate::endpoint_policy::{self, EndpointPolicy};
use crate::metrics;
use crate::retry::RetryPolicy;
use crate::sender::{AttemptReport, Sender};
use crate::signing;

pub(crate) struct Deliverer {
    pub pool: PgPool,
    pub sender: Sender,
    pub retry: RetryPolicy,
    pub endpoints: EndpointPolicy,
}

impl Deliverer {
    pub async fn deliver(&self, claimed: ClaimedDelivery) {
        if claimed.endpoint_disabled {
            self.finish(&claimed, None, DeliveryOutcome::Skipped).await;
            return;
        }
        let event_id = claimed.event_id.to_string();
        let body = claimed.payload.as_str();
        let signed = match &claimed.secrets {
            Ok(secrets) => {
                signing::sign(secrets, &event_id, Utc::now().timestamp(), body.as_bytes())
                    .map_err(|error| format!("could not sign: {error}"))
            }
            // Never signed with anything else: the attempt fails and is retried on schedule
            // (an operator restoring the key lets the next attempt through).
            Err(error) => {
                tracing::error!(%error, event = %claimed.event_id, destination = %claimed.destination,
                    "webhook signing secret does not open; not delivered");
                Err(format!("signing secret unreadable: {error}"))
            }
        };
        let report = match signed {
            Ok(signed) => self.sender.send(&claimed.url, &signed, body).await,
            Err(error) => AttemptReport {
                error: Some(error),
                ..AttemptReport::default()
            },
        };
        let outcome = match (&report.refused, report.status) {
            (Some(refused), _) if refused.is_permanent() => DeliveryOutcome::Failed,
            (_, Some(status)) if (200..300).contains(&status) => DeliveryOutcome::Succeeded,
            (_, Some(410)) => DeliveryOutcome::Gone,
            _ => match self.retry.next_delay(claimed.attempt, report.retry_after) {
                Some(after) => DeliveryOutcome::Retry { after },
                None => DeliveryOutcome::Failed,
            },
        };
        metrics::attempt(&report);
        tracing::debug!(
            event = %claimed.event_id,
            destination = %claimed.destination,
            attempt = claimed.attempt,
            status = report.status,
            latency_ms = report.latency.as_millis() as u64,
            ?outcome,
            "webhook attempt"
        );
        let attempt = NewDeliveryAttempt {
            event_id: claimed.event_id,
            transaction_id: claimed.transaction_id,
            endpoint_id: claimed.endpoint_id,
            url: claimed.url.clone(),
            attempt: claimed.attempt,
            status_code: report.status.map(i32::from),
            latency_ms: Some(i32::try_from(report.latency.as_millis()).unwrap_or(i32::MAX)),
            response_excerpt: report.excerpt.clone(),
            error: report.error.clone(),
        };
        if report.refused.is_some() {
            metrics::outcome("refused");
        }
        self.finish(&claimed, Some(&attempt), outcome).await;
    }

    async fn finish(
        &self,
        claimed: &ClaimedDelivery,
        attempt: Option<&NewDeliveryAttempt>,
        outcome: DeliveryOutcome,
    ) {
        match self
            .endpoints
            .complete(&self.pool, claimed, attempt, outcome)
            .await
        {
            Ok(done) => {
                if !done.applied {
                    tracing::info!(event = %claimed.event_id, destination = %claimed.destination,
                        "delivery was re-claimed after its lease ran out; outcome left to the newer attempt");
                    return;
                }
                metrics::outcome(match outcome {
                    DeliveryOutcome::Succeeded => "succeeded",
                    DeliveryOutcome::Retry { .. } => "retry_scheduled",
                    DeliveryOutcome::Failed => "failed",
                    DeliveryOutcome::Gone => "gone",
                    DeliveryOutcome::Skipped => "skipped",
                });
                if done.endpoint_disabled {
                    let reason = if outcome == DeliveryOutcome::Gone {
                        endpoint_policy::GONE
                    } else {
                        endpoint_policy::FAILING
                    };
                    metrics::endpoint_disabled(reason);
                    tracing::warn!(endpoint = ?claimed.endpoint_id, reason, "webhook endpoint disabled");
                }
            }
            // The lease runs out and the delivery is attempted again: at least once holds.
            Err(error) => {
                tracing::warn!(%error, event = %claimed.event_id, destination = %claimed.destination,
                "could not record a delivery attempt; it will be retried after its lease")
            }
        }
    }
}
