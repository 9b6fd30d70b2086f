//! One payment's timeline for the console: what happened to it, in time order, from every
//! table that records part of it:
//!
//! - `transaction_history` ([`super::history`]): created, each provider attempt (the
//!   payment entering and leaving `submitting`, folded into one entry with its gateway,
//!   attempt number, result and latency), every other state change;
//! - `callback_log`: each provider callback settled, with its outcome and review flag;
//! - `transaction_resolutions`: a person's decisions;
//! - `webhook_events` and `delivery_attempts`: what the merchant was told, and each HTTP
//!   attempt to tell it with the response code or error.
//!
//! Merchant scoping is the caller's: it checks that the payment belongs to the merchant asking
//! before calling [`for_transaction`].

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::history::{self, HistoryEntry};
use super::webhooks::{events_for_transaction, EventType};
use super::{transactions, webhook_endpoints, DbError};
use crate::domain::{EventId, GatewayName, TransactionId, TransactionStatus, WebhookEndpointId};

/// Delivery attempts shown at most (a destination failing for days makes many).
pub const MAX_DELIVERY_ATTEMPTS: i64 = 500;

/// One thing that happened to a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub kind: TimelineKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineKind {
    /// Accepted, in `status` (`pending`).
    Created { status: TransactionStatus },
    /// One provider call: `at` is when it finished (or, in progress, when it started).
    Attempt {
        gateway: Option<GatewayName>,
        /// 1 for the first provider call.
        attempt: i32,
        /// When the payment entered `submitting` for it (`None`: before history was kept).
        started_at: Option<DateTime<Utc>>,
        /// The state the attempt left the payment in; `None` while it is in progress.
        result: Option<TransactionStatus>,
        failure_code: Option<String>,
        /// From entering to leaving `submitting`, in milliseconds.
        latency_ms: Option<i64>,
    },
    /// Any other change of state (a callback applied, reconciliation, a retry coming due…).
    StateChange {
        from: TransactionStatus,
        to: TransactionStatus,
        gateway: Option<GatewayName>,
        failure_code: Option<String>,
    },
    /// A provider callback as the callback processor settled it.
    Callback {
        gateway: GatewayName,
        provider_event_id: String,
        /// `succeeded` or `failed`, as the provider said.
        reported_status: TransactionStatus,
        failure_code: Option<String>,
        /// `applied`, `late`, `conflict`, `mismatch` (see the `callback_log` migration).
        outcome: String,
        needs_review: bool,
        /// Why it was not applied, in words.
        detail: Option<String>,
        received_at: DateTime<Utc>,
    },
    /// A person's resolution.
    Resolution {
        actor: String,
        reason: String,
        previous_status: TransactionStatus,
        /// The verdict: `succeeded` or `failed`.
        resolved_status: TransactionStatus,
    },
    /// An event recorded to tell the merchant.
    Event {
        event_id: EventId,
        event_type: EventType,
    },
    /// One HTTP attempt to deliver an event.
    Delivery {
        event_id: EventId,
        /// `None`: the payment's own `callback_url`.
        endpoint_id: Option<WebhookEndpointId>,
        url: String,
        attempt: i32,
        status_code: Option<i32>,
        latency_ms: Option<i32>,
        response_excerpt: Option<String>,
        error: Option<String>,
    },
}

/// The payment's timeline, oldest first (entries at the same moment keep the order of the
/// list above). Empty for an unknown payment.
pub async fn for_transaction(
    pool: &PgPool,
    id: TransactionId,
) -> Result<Vec<TimelineEntry>, DbError> {
    let (history, callbacks, resolutions, events, attempts, created) = tokio::try_join!(
        history::for_transaction(pool, id),
        callbacks(pool, id),
        transactions::resolutions(pool, id),
        events_for_transaction(pool, id),
        webhook_endpoints::list_attempts(pool, id, MAX_DELIVERY_ATTEMPTS),
        created(pool, id),
    )?;
    let Some((created_at, first_status)) = created else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::new();
    // A payment created before history was kept still shows when it was accepted.
    if !history.iter().any(|h| h.from_status.is_none()) {
        entries.push(TimelineEntry {
            at: created_at,
            kind: TimelineKind::Created {
                status: first_status,
            },
        });
    }
    entries.extend(fold_history(&history));
    entries.extend(callbacks);
    entries.extend(resolutions.into_iter().map(|r| TimelineEntry {
        at: r.created_at,
        kind: TimelineKind::Resolution {
            actor: r.resolution.actor,
            reason: r.resolution.reason,
            previous_status: r.previous_status,
            resolved_status: r.resolved_status,
        },
    }));
    entries.extend(events.into_iter().map(|e| TimelineEntry {
        at: e.created_at,
        kind: TimelineKind::Event {
            event_id: e.id,
            event_type: e.event_type,
        },
    }));
    entries.extend(attempts.into_iter().map(|a| TimelineEntry {
        at: a.created_at,
        kind: TimelineKind::Delivery {
            event_id: a.attempt.event_id,
            endpoint_id: a.attempt.endpoint_id,
            url: a.attempt.url,
            attempt: a.attempt.attempt,
            status_code: a.attempt.status_code,
            latency_ms: a.attempt.latency_ms,
            response_excerpt: a.attempt.response_excerpt,
            error: a.attempt.error,
        },
    }));
    // Stable: equal times keep the order above (created, history, callbacks, …).
    entries.sort_by_key(|e| e.at);
    Ok(entries)
}

/// History rows as timeline entries: entering `submitting` and leaving it become one
/// [`TimelineKind::Attempt`].
fn fold_history(history: &[HistoryEntry]) -> Vec<TimelineEntry> {
    let mut entries = Vec::with_capacity(history.len());
    let mut started: Option<&HistoryEntry> = None;
    for row in history {
        if row.ends_attempt() {
            let started_at = started.take().map(|s| s.at);
            entries.push(TimelineEntry {
                at: row.at,
                kind: TimelineKind::Attempt {
                    gateway: row.gateway.clone(),
                    attempt: row.attempt,
                    started_at,
                    result: Some(row.to_status),
                    failure_code: row.failure_code.clone(),
                    latency_ms: started_at.map(|s| (row.at - s).num_milliseconds()),
                },
            });
            continue;
        }
        if row.to_status == TransactionStatus::Submitting {
            started = Some(row);
            continue;
        }
        let kind = match row.from_status {
            None => TimelineKind::Created {
                status: row.to_status,
            },
            Some(from) => TimelineKind::StateChange {
                from,
                to: row.to_status,
                gateway: row.gateway.clone(),
                failure_code: row.failure_code.clone(),
            },
        };
        entries.push(TimelineEntry { at: row.at, kind });
    }
    if let Some(row) = started {
        entries.push(TimelineEntry {
            at: row.at,
            kind: TimelineKind::Attempt {
                gateway: row.gateway.clone(),
                attempt: row.attempt,
                started_at: Some(row.at),
                result: None,
                failure_code: None,
                latency_ms: None,
            },
        });
    }
    entries
}

/// When the payment was accepted and the status it was accepted in (`None`: no such payment).
async fn created(
    pool: &PgPool,
    id: TransactionId,
) -> Result<Option<(DateTime<Utc>, TransactionStatus)>, DbError> {
    // The first status is `pending` for every payment; read from history when there is one.
    let row: Option<(DateTime<Utc>, Option<String>)> = sqlx::query_as(
        "SELECT t.created_at,
                (SELECT h.to_status FROM transaction_history h
                  WHERE h.transaction_id = t.id AND h.from_status IS NULL LIMIT 1)
         FROM transactions t WHERE t.id = $1",
    )
    .bind(id.as_uuid())
    .fetch_optional(pool)
    .await?;
    row.map(|(at, first)| {
        let status = match first {
            Some(raw) => history::status("transaction_history", &raw)?,
            None => TransactionStatus::Pending,
        };
        Ok((at, status))
    })
    .transpose()
}

/// A `callback_log` row as [`callbacks`] selects it.
#[derive(sqlx::FromRow)]
struct CallbackRow {
    gateway: String,
    provider_event_id: String,
    reported_status: String,
    failure_code: Option<String>,
    outcome: String,
    needs_review: bool,
    detail: Option<String>,
    received_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

/// The callbacks settled for the payment, at the moment each was settled.
async fn callbacks(pool: &PgPool, id: TransactionId) -> Result<Vec<TimelineEntry>, DbError> {
    const TABLE: &str = "callback_log";
    let rows: Vec<CallbackRow> = sqlx::query_as(
        "SELECT gateway, provider_event_id, reported_status, failure_code, outcome, needs_review, detail,
                received_at, created_at
         FROM callback_log WHERE transaction_id = $1 ORDER BY id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|row| {
            let gateway =
                history::gateway(TABLE, Some(row.gateway))?.ok_or_else(|| DbError::Corrupt {
                    table: TABLE,
                    detail: "no gateway".into(),
                })?;
            Ok(TimelineEntry {
                at: row.created_at,
                kind: TimelineKind::Callback {
                    gateway,
                    provider_event_id: row.provider_event_id,
                    reported_status: history::status(TABLE, &row.reported_status)?,
                    failure_code: row.failure_code,
                    outcome: row.outcome,
                    needs_review: row.needs_review,
                    detail: row.detail,
                    received_at: row.received_at,
                },
            })
        })
        .collect()
}
