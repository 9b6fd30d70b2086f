//! `GET /console/transactions/{id}`: one payment and its timeline (created, each provider
//! attempt with its gateway and result, callbacks, state changes, resolutions, webhook
//! events and every delivery attempt with its response code), with a redeliver button per
//! event. Another merchant's payment is 404, exactly like one that does not exist.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use paygate_core::db::transactions;
use paygate_core::db::webhooks::{self, EventType, RedeliveryOutcome, REDELIVERIES_PER_HOUR};
use paygate_core::domain::{EventId, Transaction, TransactionId};
use serde::Deserialize;

use super::{back_with, Flash};
use crate::error::PageError;
use crate::layout::{action_button, when, Page};
use crate::pages::transactions::status_badge;
use crate::timeline;
use crate::viewer::{CsrfForm, CsrfToken, Viewer};
use crate::ConsoleState;

#[derive(Deserialize)]
pub struct Shown {
    #[serde(default)]
    flash: Option<String>,
}

/// The payment `id` if `viewer` may see it (a merchant user: its own only).
pub async fn visible(
    state: &ConsoleState,
    viewer: &Viewer,
    id: &str,
) -> Result<Transaction, PageError> {
    let id: TransactionId = id.parse().map_err(|_| PageError::NotFound)?;
    let found = match viewer.user.role.merchant() {
        Some(merchant) => transactions::get_for_merchant(&state.pool, merchant, id).await?,
        None => transactions::get(&state.pool, id).await?,
    };
    found.ok_or(PageError::NotFound)
}

pub async fn show(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
    Path(id): Path<String>,
    Query(shown): Query<Shown>,
) -> Result<Response, PageError> {
    let payment = visible(&state, &viewer, &id).await?;
    let entries = timeline::load(&state.pool, payment.id).await?;
    let title = format!("{} {}", payment.kind.as_str(), payment.money);
    let page = Page {
        title: &title,
        viewer: &viewer,
        csrf: &csrf,
        flash: Flash::message_for(shown.flash.as_deref()),
    };
    Ok(page
        .render(html! {
            (summary(&payment))
            h2 { "Timeline" }
            (timeline::render(&entries))
            h2 { "Webhook events" }
            (events_table(&payment, &entries, &csrf))
        })
        .into_response())
}

fn summary(t: &Transaction) -> Markup {
    html! {
        table.summary {
            tbody {
                tr { th { "Id" } td.mono { (t.id) } }
                tr { th { "Status" } td { span data-testid="status" { (status_badge(t.status)) } } }
                tr { th { "Merchant" } td.mono { (t.merchant_id) } }
                tr { th { "Customer" } td { (t.customer.as_str()) } }
                tr { th { "Gateway" } td { (t.routed_gateway.as_ref().or(t.gateway.as_ref()).map(|g| g.as_str()).unwrap_or("not routed yet")) } }
                tr { th { "Attempts" } td { (t.attempts) } }
                @if let Some(reference) = &t.provider_reference { tr { th { "Provider reference" } td.mono { (reference) } } }
                @if let Some(failure) = &t.failure { tr { th { "Failure" } td { code { (failure.code) } " " (failure.message) } } }
                tr { th { "Created" } td { (when(t.created_at)) } }
                tr { th { "Updated" } td { (when(t.updated_at)) " (version " (t.version) ")" } }
            }
        }
    }
}

fn events_table(payment: &Transaction, entries: &[timeline::Item], csrf: &CsrfToken) -> Markup {
    let events: Vec<(EventId, EventType, DateTime<Utc>)> = entries
        .iter()
        .filter_map(|item| item.event.map(|(id, event_type)| (id, event_type, item.at)))
        .collect();
    html! {
        @if events.is_empty() {
            p.muted { "No webhook event yet: the merchant is told when the payment is final (or of unknown outcome)." }
        } @else {
            table {
                thead { tr { th { "Event" } th { "Type" } th { "Created" } th { "" } } }
                tbody {
                    @for (id, event_type, at) in &events {
                        tr data-testid="event-row" data-id=(id) {
                            td.mono { (id) }
                            td { (event_type.as_str()) }
                            td { (when(*at)) }
                            td { (action_button(csrf, &format!("/console/transactions/{}/events/{id}/redeliver", payment.id), "Redeliver", "redeliver")) }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /console/transactions/{id}/events/{event}/redeliver`: a fresh delivery of the
/// event to the merchant's destinations, limited like the API's (per event per hour).
pub async fn redeliver(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path((id, event)): Path<(String, String)>,
    CsrfForm(_): CsrfForm<serde::de::IgnoredAny>,
) -> Result<Response, PageError> {
    let payment = visible(&state, &viewer, &id).await?;
    let event: EventId = event.parse().map_err(|_| PageError::NotFound)?;
    let found = webhooks::get_event(&state.pool, payment.merchant_id, event).await?;
    if found.is_none_or(|e| e.transaction_id != payment.id) {
        return Err(PageError::NotFound);
    }
    let outcome = webhooks::redeliver_within(
        &state.pool,
        payment.merchant_id,
        event,
        REDELIVERIES_PER_HOUR,
    )
    .await?;
    let flash = match outcome {
        RedeliveryOutcome::Scheduled(_) => {
            tracing::info!(%event, user = %viewer.user.id, "event redelivered from the console");
            Flash::Redelivered
        }
        RedeliveryOutcome::Limited { .. } => Flash::RedeliveryLimited,
        RedeliveryOutcome::NotFound => return Err(PageError::NotFound),
    };
    Ok(back_with(&format!("/console/transactions/{}", payment.id), flash).into_response())
}
