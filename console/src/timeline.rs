//! A payment's timeline as the console shows it: one time-ordered list of what happened,
//! each item marked with its kind (`data-kind`) so a reader (or a test) can find the
//! attempts, the callbacks and the deliveries.

use chrono::{DateTime, Utc};
use maud::{html, Markup};
use paygate_core::db::timeline::{self, TimelineEntry, TimelineKind};
use paygate_core::db::webhooks::EventType;
use paygate_core::db::DbError;
use paygate_core::domain::EventId;
use paygate_core::domain::TransactionId;
use sqlx::PgPool;

use crate::layout::when;

/// What an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Attempt,
    StateChange,
    Callback,
    Resolution,
    Event,
    Delivery,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Attempt => "attempt",
            Self::StateChange => "state_change",
            Self::Callback => "callback",
            Self::Resolution => "resolution",
            Self::Event => "event",
            Self::Delivery => "delivery",
        }
    }
}

/// One item.
#[derive(Debug, Clone)]
pub struct Item {
    pub at: DateTime<Utc>,
    pub kind: Kind,
    pub text: String,
    /// A delivery's HTTP status (`None`: no response, see the text).
    pub response_code: Option<i32>,
    /// A webhook event item's event (the page's redeliver buttons are drawn from these, so
    /// the events are read once, with the timeline).
    pub event: Option<(EventId, EventType)>,
}

/// Everything recorded about payment `id`, oldest first ([`timeline::for_transaction`]),
/// in words. The caller has checked the viewer may see it.
pub async fn load(pool: &PgPool, id: TransactionId) -> Result<Vec<Item>, DbError> {
    Ok(timeline::for_transaction(pool, id)
        .await?
        .into_iter()
        .map(item)
        .collect())
}

fn or_dash(text: Option<&str>) -> &str {
    text.unwrap_or("—")
}

fn item(entry: TimelineEntry) -> Item {
    let event = match &entry.kind {
        TimelineKind::Event {
            event_id,
            event_type,
        } => Some((*event_id, *event_type)),
        _ => None,
    };
    let (kind, text, response_code) = match entry.kind {
        TimelineKind::Created { status } => (
            Kind::Created,
            format!("accepted ({})", status.as_str()),
            None,
        ),
        TimelineKind::Attempt {
            gateway,
            attempt,
            result,
            failure_code,
            latency_ms,
            ..
        } => {
            let result = match (result, failure_code) {
                (None, _) => "in progress".to_owned(),
                (Some(result), Some(code)) => format!("{} ({code})", result.as_str()),
                (Some(result), None) => result.as_str().to_owned(),
            };
            let took = latency_ms
                .map(|ms| format!(" in {ms} ms"))
                .unwrap_or_default();
            let gateway = or_dash(gateway.as_ref().map(|g| g.as_str())).to_owned();
            (
                Kind::Attempt,
                format!("attempt {attempt} via {gateway}: {result}{took}"),
                None,
            )
        }
        TimelineKind::StateChange {
            from,
            to,
            gateway,
            failure_code,
        } => {
            let via = gateway.map(|g| format!(" at {g}")).unwrap_or_default();
            let code = failure_code.map(|c| format!(" ({c})")).unwrap_or_default();
            (
                Kind::StateChange,
                format!("{} → {}{code}{via}", from.as_str(), to.as_str()),
                None,
            )
        }
        TimelineKind::Callback {
            gateway,
            provider_event_id,
            reported_status,
            outcome,
            needs_review,
            detail,
            ..
        } => {
            let flag = if needs_review {
                ", flagged for review"
            } else {
                ""
            };
            let detail = detail.map(|d| format!(": {d}")).unwrap_or_default();
            (
                Kind::Callback,
                format!("callback from {gateway} ({provider_event_id}) said {}: {outcome}{flag}{detail}", reported_status.as_str()),
                None,
            )
        }
        TimelineKind::Resolution {
            actor,
            reason,
            previous_status,
            resolved_status,
        } => (
            Kind::Resolution,
            format!(
                "resolved {} → {} by {actor}: {reason}",
                previous_status.as_str(),
                resolved_status.as_str()
            ),
            None,
        ),
        TimelineKind::Event {
            event_id,
            event_type,
        } => (
            Kind::Event,
            format!("webhook event {} ({event_id})", event_type.as_str()),
            None,
        ),
        TimelineKind::Delivery {
            event_id,
            url,
            attempt,
            status_code,
            latency_ms,
            error,
            ..
        } => {
            let outcome = match (status_code, error) {
                (Some(code), _) => format!("answered {code}"),
                (None, Some(error)) => format!("no answer: {error}"),
                (None, None) => "no answer".to_owned(),
            };
            let took = latency_ms
                .map(|ms| format!(" in {ms} ms"))
                .unwrap_or_default();
            (
                Kind::Delivery,
                format!("delivery {attempt} of {event_id} to {url}: {outcome}{took}"),
                status_code,
            )
        }
    };
    Item {
        at: entry.at,
        kind,
        text,
        response_code,
        event,
    }
}

pub fn render(items: &[Item]) -> Markup {
    html! {
        ol.timeline data-testid="timeline" {
            @for item in items {
                li data-kind=(item.kind.as_str()) {
                    span.at { (when(item.at)) }
                    (item.text)
                    @if let Some(code) = item.response_code {
                        " " span.status data-testid="response-code" { (code) }
                    }
                }
            }
        }
    }
}
