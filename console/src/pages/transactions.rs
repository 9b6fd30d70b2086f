//! `GET /console/transactions`: payments filtered by status, kind, gateway and creation
//! date, found by id or customer reference, newest first in keyset pages. A merchant user
//! sees its own; an operator everyone's (or one merchant's, `?merchant=`).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, Utc};
use maud::{html, Markup};
use paygate_core::db::transactions::{self, SearchQuery};
use paygate_core::domain::{Transaction, TransactionId, TransactionKind, TransactionStatus};
use serde::Deserialize;

use super::Flash;
use crate::error::PageError;
use crate::layout::{when, Page};
use crate::viewer::{CsrfToken, Viewer};
use crate::ConsoleState;

/// Rows per page.
const PAGE_SIZE: i64 = 50;

/// The filter form's fields, as typed (empty = no filter).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    /// `YYYY-MM-DD`, inclusive.
    #[serde(default)]
    pub from: Option<String>,
    /// `YYYY-MM-DD`, inclusive.
    #[serde(default)]
    pub to: Option<String>,
    /// A transaction id (`txn_…`) or a customer reference.
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub merchant: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub flash: Option<String>,
}

fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parsed<T: std::str::FromStr>(
    field: &Option<String>,
    what: &str,
) -> Result<Option<T>, PageError> {
    given(field)
        .map(|text| {
            text.parse()
                .map_err(|_| PageError::BadRequest(format!("{text:?} is not a {what}")))
        })
        .transpose()
}

fn day(field: &Option<String>, what: &str, next: bool) -> Result<Option<DateTime<Utc>>, PageError> {
    let Some(date) = parsed::<NaiveDate>(field, what)? else {
        return Ok(None);
    };
    let date = if next {
        date.succ_opt().unwrap_or(date)
    } else {
        date
    };
    Ok(date.and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
}

impl Filters {
    /// The search these filters ask for, within what `viewer` may see.
    fn query(&self, viewer: &Viewer) -> Result<SearchQuery, PageError> {
        Ok(SearchQuery {
            merchant: viewer.merchant_scope(self.merchant.as_deref())?,
            status: parsed::<TransactionStatus>(&self.status, "status")?,
            kind: parsed::<TransactionKind>(&self.kind, "kind")?,
            gateway: given(&self.gateway).map(str::to_owned),
            created_from: day(&self.from, "date (YYYY-MM-DD)", false)?,
            created_before: day(&self.to, "date (YYYY-MM-DD)", true)?,
            customer: None,
            limit: PAGE_SIZE,
            starting_after: parsed::<TransactionId>(&self.after, "transaction id")?,
        })
    }

    /// This query string with `after` replaced (the next page's link).
    fn next_page(&self, after: TransactionId) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for (name, value) in [
            ("status", &self.status),
            ("kind", &self.kind),
            ("gateway", &self.gateway),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.q),
            ("merchant", &self.merchant),
        ] {
            if let Some(value) = given(value) {
                pairs.push((name, value));
            }
        }
        let after = after.to_string();
        pairs.push(("after", &after));
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", super::url_encode(v)))
            .collect();
        format!("/console/transactions?{}", query.join("&"))
    }
}

pub async fn list(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
    Query(filters): Query<Filters>,
) -> Result<Response, PageError> {
    let mut query = filters.query(&viewer)?;
    if let Some(q) = given(&filters.q) {
        // An id goes straight to its payment (if this viewer may see it).
        if let Ok(id) = q.parse::<TransactionId>() {
            return Ok(Redirect::to(&format!("/console/transactions/{id}")).into_response());
        }
        query.customer = Some(q.to_owned());
    }
    let rows = transactions::search(&state.pool, &query).await?;
    let next = (rows.len() as i64 == PAGE_SIZE)
        .then(|| rows.last().map(|t| filters.next_page(t.id)))
        .flatten();
    let page = Page {
        title: "Transactions",
        viewer: &viewer,
        csrf: &csrf,
        flash: Flash::message_for(filters.flash.as_deref()),
    };
    Ok(page
        .render(html! {
            (filter_form(&filters, &state.gateways, viewer.is_operator()))
            (table(&rows, viewer.is_operator()))
            @if let Some(next) = next {
                p { a data-testid="next-page" href=(next) { "Older →" } }
            }
        })
        .into_response())
}

fn selected_options(current: Option<&str>, choices: &[&str]) -> Markup {
    html! {
        option value="" { "any" }
        @for choice in choices {
            option value=(choice) selected[current == Some(*choice)] { (choice) }
        }
    }
}

fn filter_form(filters: &Filters, gateways: &[String], operator: bool) -> Markup {
    let statuses: Vec<&str> = TransactionStatus::ALL.iter().map(|s| s.as_str()).collect();
    let kinds: Vec<&str> = TransactionKind::ALL.iter().map(|k| k.as_str()).collect();
    let gateways: Vec<&str> = gateways.iter().map(String::as_str).collect();
    html! {
        form #filters .filters method="get" action="/console/transactions" {
            label { "Status" select name="status" { (selected_options(given(&filters.status), &statuses)) } }
            label { "Kind" select name="kind" { (selected_options(given(&filters.kind), &kinds)) } }
            label { "Gateway" select name="gateway" { (selected_options(given(&filters.gateway), &gateways)) } }
            label { "From" input type="date" name="from" value=[given(&filters.from)]; }
            label { "To" input type="date" name="to" value=[given(&filters.to)]; }
            label { "Id or customer" input type="search" name="q" value=[given(&filters.q)] placeholder="txn_… or customer reference"; }
            @if operator {
                label { "Merchant" input type="text" name="merchant" value=[given(&filters.merchant)] placeholder="mer_…"; }
            }
            button type="submit" { "Filter" }
        }
    }
}

/// The status word with its colour.
pub fn status_badge(status: TransactionStatus) -> Markup {
    html! { span class={"status " (status.as_str())} { (status.as_str()) } }
}

fn table(rows: &[Transaction], operator: bool) -> Markup {
    html! {
        @if rows.is_empty() {
            p.muted { "No transactions match." }
        } @else {
            table {
                thead { tr {
                    th { "Created" } th { "Id" }
                    @if operator { th { "Merchant" } }
                    th { "Kind" } th { "Amount" } th { "Status" } th { "Gateway" } th { "Customer" }
                } }
                tbody {
                    @for t in rows {
                        tr data-testid="txn-row" data-id=(t.id) {
                            td { (when(t.created_at)) }
                            td.mono { a href={"/console/transactions/" (t.id)} { (t.id) } }
                            @if operator { td.mono { (t.merchant_id) } }
                            td { (t.kind.as_str()) }
                            td.num { (t.money) }
                            td { (status_badge(t.status)) }
                            td { (t.routed_gateway.as_ref().or(t.gateway.as_ref()).map(|g| g.as_str()).unwrap_or("—")) }
                            td { (t.customer.as_str()) }
                        }
                    }
                }
            }
        }
    }
}
