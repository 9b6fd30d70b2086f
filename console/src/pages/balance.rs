//! `GET /console/balance`: the merchant's balance per currency (available, reserved,
//! pending) and its latest ledger entries, each with the balance after it.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use paygate_core::db::ledger;
use paygate_core::domain::MerchantId;

use super::{merchant_picker, Shown};
use crate::error::PageError;
use crate::layout::{money, when, Page};
use crate::viewer::{CsrfToken, Viewer};
use crate::ConsoleState;

/// Entries shown.
const ENTRIES: i64 = 100;

pub async fn show(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
    Query(scope): Query<Shown>,
) -> Result<Response, PageError> {
    let page = Page {
        title: "Balance",
        viewer: &viewer,
        csrf: &csrf,
        flash: None,
    };
    let Some(merchant) = viewer.merchant_scope(scope.merchant.as_deref())? else {
        return Ok(page
            .render(merchant_picker(&state, "/console/balance").await?)
            .into_response());
    };
    let content = balance(&state, merchant).await?;
    Ok(page.render(content).into_response())
}

async fn balance(state: &ConsoleState, merchant: MerchantId) -> Result<Markup, PageError> {
    let balances = ledger::balances(&state.pool, merchant).await?;
    let entries = ledger::entries(&state.pool, merchant, None, ENTRIES).await?;
    Ok(html! {
        @if balances.is_empty() {
            p.muted { "No money yet: the balance appears with the first deposit." }
        }
        .cards data-testid="balances" {
            @for b in &balances {
                .card {
                    div.muted { (b.currency) " available" }
                    div.big data-testid="available" { (money(b.available, &b.currency)) }
                    div.muted { "reserved " (money(b.reserved, &b.currency)) " · pending " (money(b.pending, &b.currency)) }
                }
            }
        }
        h2 { "Ledger entries" }
        @if entries.is_empty() {
            p.muted { "No entries." }
        } @else {
            table {
                thead { tr { th { "When" } th { "Entry" } th { "Payment" } th { "Amount" } th { "Balance after" } } }
                tbody {
                    @for e in &entries {
                        tr data-testid="entry-row" {
                            td { (when(e.created_at)) }
                            td { (e.kind.as_str()) @if let Some(r) = &e.reference { " " span.muted { (r) } } }
                            td.mono { @if let Some(t) = e.transaction { a href={"/console/transactions/" (t)} { (t) } } @else { "—" } }
                            td.num { (money(e.amount, &e.currency)) }
                            td.num { (money(e.balance_after, &e.currency)) }
                        }
                    }
                }
            }
        }
    })
}
