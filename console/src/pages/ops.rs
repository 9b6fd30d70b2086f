//! Operator pages: the review queue of flagged callbacks, payments of unknown outcome with
//! their resolution, gateway health, the dead-letter queue. A merchant user gets 403
//! ([`Operator`]).
//!
//! Resolving a payment is the same version-checked, audited change as `paygate
//! transactions resolve` ([`paygate_core::resolution`]): who (the operator's email), when,
//! why, and the merchant's webhook, in one commit.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use paygate_core::bus::dlq;
use paygate_core::db::review;
use paygate_core::db::transactions::{self, SearchQuery};
use paygate_core::domain::{bounded_text, TransactionId, TransactionStatus};
use paygate_core::gateway_health;
use paygate_core::pipeline_wait;
use paygate_core::resolution::{self, ResolveError, Verdict};
use serde::Deserialize;

use super::{back_with, Flash};
use crate::error::PageError;
use crate::layout::{hidden_csrf, money, when, Page};
use crate::viewer::{CsrfForm, CsrfToken, Operator};
use crate::ConsoleState;

/// Rows per operator list.
const ROWS: i64 = 200;

#[derive(Deserialize)]
pub struct Shown {
    #[serde(default)]
    flash: Option<String>,
}

#[derive(Deserialize)]
pub struct ReviewForm {
    #[serde(default)]
    note: String,
}

#[derive(Deserialize)]
pub struct ResolveForm {
    #[serde(default)]
    verdict: String,
    #[serde(default)]
    reason: String,
}

pub async fn review(
    State(state): State<ConsoleState>,
    Operator(viewer): Operator,
    csrf: CsrfToken,
    Query(shown): Query<Shown>,
) -> Result<Response, PageError> {
    let flagged = review::queue(&state.pool, ROWS).await?;
    let page = Page {
        title: "Callbacks flagged for review",
        viewer: &viewer,
        csrf: &csrf,
        flash: Flash::message_for(shown.flash.as_deref()),
    };
    Ok(page.render(html! {
        p.muted { "Callbacks that contradicted our record or reported another amount. They were logged, never applied; record what you found." }
        @if flagged.is_empty() { p.muted { "Nothing flagged." } } @else {
            table {
                thead { tr { th { "Received" } th { "Gateway" } th { "Payment" } th { "Said" } th { "Outcome" } th { "Review" } } }
                tbody {
                    @for f in &flagged {
                        tr data-testid="review-row" data-id=(f.id) {
                            td { (when(f.received_at)) }
                            td { (f.gateway) br; span.mono.muted { (f.provider_event_id) } }
                            td.mono { a href={"/console/transactions/" (f.transaction_id)} { (f.transaction_id) } br; span.muted { "was " (f.status_before) } }
                            td { (f.reported_status) " " (money(f.reported_amount, &f.reported_currency)) }
                            td { (f.outcome) @if let Some(d) = &f.detail { br; span.muted { (d) } } }
                            td {
                                @if let (Some(at), Some(by)) = (f.reviewed_at, &f.reviewed_by) {
                                    span data-testid="reviewed" { "by " (by) ", " (when(at)) } br; (f.review_note.as_deref().unwrap_or(""))
                                } @else {
                                    form.stack method="post" action={"/console/ops/review/" (f.id)} data-testid="mark-reviewed" {
                                        (hidden_csrf(&csrf))
                                        textarea name="note" required maxlength=(review::MAX_NOTE_CHARS) placeholder="What you found" {}
                                        button type="submit" { "Mark reviewed" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }).into_response())
}

pub async fn mark_reviewed(
    State(state): State<ConsoleState>,
    Operator(viewer): Operator,
    Path(id): Path<i64>,
    CsrfForm(form): CsrfForm<ReviewForm>,
) -> Result<Response, PageError> {
    let max = review::MAX_NOTE_CHARS;
    let note = bounded_text(&form.note, max)
        .ok_or_else(|| PageError::BadRequest(format!("the note must be 1 to {max} characters")))?;
    let done = review::mark_reviewed(&state.pool, id, &viewer.user.email, note).await?;
    tracing::info!(callback = id, user = %viewer.user.id, done, "flagged callback reviewed");
    Ok(back_with(
        "/console/ops/review",
        if done {
            Flash::Reviewed
        } else {
            Flash::NothingChanged
        },
    )
    .into_response())
}

pub async fn unresolved(
    State(state): State<ConsoleState>,
    Operator(viewer): Operator,
    csrf: CsrfToken,
    Query(shown): Query<Shown>,
) -> Result<Response, PageError> {
    let query = SearchQuery {
        status: Some(TransactionStatus::Unresolved),
        limit: ROWS,
        ..SearchQuery::default()
    };
    let payments = transactions::search(&state.pool, &query).await?;
    let page = Page {
        title: "Payments of unknown outcome",
        viewer: &viewer,
        csrf: &csrf,
        flash: Flash::message_for(shown.flash.as_deref()),
    };
    Ok(page.render(html! {
        p.muted { "A provider may have executed these and could not say. Ask the provider (its dashboard, its support), then record what it did: the merchant is told at once." }
        @if payments.is_empty() { p.muted { "None." } } @else {
            table {
                thead { tr { th { "Payment" } th { "Merchant" } th { "Amount" } th { "Gateway" } th { "Since" } th { "Resolve" } } }
                tbody {
                    @for t in &payments {
                        tr data-testid="unresolved-row" data-id=(t.id) {
                            td.mono { a href={"/console/transactions/" (t.id)} { (t.id) } br; (t.kind.as_str()) }
                            td.mono { (t.merchant_id) }
                            td.num { (t.money) }
                            td { (t.routed_gateway.as_ref().map(|g| g.as_str()).unwrap_or("—")) br; span.muted.mono { (t.provider_reference.as_deref().unwrap_or("")) } }
                            td { (when(t.updated_at)) }
                            td {
                                form.stack method="post" action={"/console/ops/unresolved/" (t.id) "/resolve"} data-testid="resolve" {
                                    (hidden_csrf(&csrf))
                                    select name="verdict" required {
                                        option value="" { "The provider…" }
                                        option value="succeeded" { "executed it (succeeded)" }
                                        option value="failed" { "did not execute it (failed)" }
                                    }
                                    textarea name="reason" required maxlength=(resolution::MAX_REASON_CHARS) placeholder="What the provider said, and where" {}
                                    button type="submit" { "Resolve" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }).into_response())
}

pub async fn resolve(
    State(state): State<ConsoleState>,
    Operator(viewer): Operator,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<ResolveForm>,
) -> Result<Response, PageError> {
    let id: TransactionId = id.parse().map_err(|_| PageError::NotFound)?;
    let verdict = match form.verdict.as_str() {
        "succeeded" => Verdict::Succeeded,
        "failed" => Verdict::Failed,
        _ => return Err(PageError::BadRequest("choose what the provider did".into())),
    };
    // The reason's bounds are the resolution's own rule (`ResolveError::BadText` → 400).
    match resolution::resolve(&state.pool, id, verdict, &viewer.user.email, &form.reason).await {
        Ok(done) => {
            let mut redis = state.redis.clone();
            paygate_core::cache_keys::invalidate_transaction(
                &mut redis,
                &state.redis_prefix,
                id,
                Some(done.merchant_id),
            )
            .await;
            tracing::info!(transaction = %id, user = %viewer.user.id, status = done.status.as_str(), "payment resolved from the console");
            Ok(back_with("/console/ops/unresolved", Flash::Resolved).into_response())
        }
        Err(ResolveError::NotFound(_)) => Err(PageError::NotFound),
        Err(ResolveError::NotUnresolved { .. } | ResolveError::Changed(_)) => {
            Ok(back_with("/console/ops/unresolved", Flash::NothingChanged).into_response())
        }
        Err(ResolveError::BadText { field, max }) => Err(PageError::BadRequest(format!(
            "{field} must be 1 to {max} characters"
        ))),
        Err(ResolveError::Db(e)) => Err(PageError::Db(e)),
    }
}

/// How far back gateway health counts attempts.
const HEALTH_WINDOW_MINUTES: i64 = 60;
/// Dead letters shown.
const DEAD_LETTERS: usize = 100;

/// `GET /console/ops/gateways`: each gateway's breaker as every payment processor last
/// reported it (Redis, fresh reports only) and its attempts over the last hour (Postgres);
/// above them, how long payments queue in the workers and whether the API is refusing new
/// ones for it ([`paygate_core::pipeline_wait`]).
pub async fn gateways(
    State(state): State<ConsoleState>,
    Operator(viewer): Operator,
    csrf: CsrfToken,
) -> Result<Response, PageError> {
    let since = chrono::Utc::now() - chrono::Duration::minutes(HEALTH_WINDOW_MINUTES);
    let stats = gateway_health::attempt_stats(&state.pool, since).await?;
    let mut redis = state.redis.clone();
    let (breakers, breakers_error) =
        match gateway_health::breakers(&mut redis, &state.redis_prefix).await {
            Ok(breakers) => (breakers, None),
            Err(error) => {
                tracing::warn!(%error, "breaker states unreadable");
                (
                    Vec::new(),
                    Some("Breaker states are unavailable (Redis did not answer)."),
                )
            }
        };
    let pipeline = pipeline_wait::current(&mut redis, &state.redis_prefix)
        .await
        .map_err(|error| tracing::warn!(%error, "pipeline waits unreadable"))
        .ok();
    let mut names: Vec<String> = state.gateways.clone();
    for name in stats
        .iter()
        .map(|s| s.gateway.to_string())
        .chain(breakers.iter().map(|b| b.gateway.to_string()))
    {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let ms = |v: Option<f64>| {
        v.map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "—".into())
    };
    let page = Page {
        title: "Gateway health",
        viewer: &viewer,
        csrf: &csrf,
        flash: None,
    };
    Ok(page.render(html! {
        (pipeline_panel(pipeline.as_ref(), state.shed_after_wait))
        @if let Some(problem) = breakers_error { p.error { (problem) } }
        p.muted { "Breakers as each payment processor reported them in the last 30 s; attempts over the last hour." }
        table {
            thead { tr {
                th { "Gateway" } th { "Breaker (per processor)" } th { "Attempts" } th { "Reached the provider" }
                th { "Failed" } th { "Retried" } th { "Unknown" } th { "p50" } th { "p99" }
            } }
            tbody {
                @for name in &names {
                    @let stat = stats.iter().find(|s| s.gateway.as_str() == name);
                    tr data-testid="gateway-row" data-gateway=(name) {
                        td { (name) }
                        td {
                            @let reports: Vec<_> = breakers.iter().filter(|b| b.gateway.as_str() == name).collect();
                            @if reports.is_empty() { span.muted { "no report" } }
                            @for b in reports {
                                span class={"status " (breaker_class(b.report.state))} data-testid="breaker" { (b.report.state.as_str()) }
                                " " span.muted { (b.report.window_failures) "/" (b.report.window_requests) " failed in window · " (b.instance) } br;
                            }
                        }
                        @if let Some(s) = stat {
                            td.num { (s.attempts) }
                            td.num { (s.reached) " (" (format!("{:.1}", s.success_rate * 100.0)) " %)" }
                            td.num { (s.failed) } td.num { (s.retry_scheduled) } td.num { (s.unresolved) }
                            td.num { (ms(s.p50_ms)) } td.num { (ms(s.p99_ms)) }
                        } @else {
                            td.num { "0" } td { } td { } td { } td { } td { } td { }
                        }
                    }
                }
            }
        }
    }).into_response())
}

/// How long a payment taken now would queue in the workers, each kind's part, and whether
/// the API refuses new payments for it (admission control, `api.shed_after_wait_ms`).
fn pipeline_panel(reading: Option<&pipeline_wait::Reading>, bound: Duration) -> Markup {
    let secs = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    html! {
        section data-testid="pipeline" {
            h2 { "Pipeline" }
            @match reading {
                None => {
                    p.error { "The workers' waits are unavailable (Redis did not answer)." }
                }
                Some(reading) => {
                    p {
                        "A payment taken now would queue "
                        strong data-testid="pipeline-wait" { (secs(reading.wait)) }
                        " in the workers"
                        @if reading.by_group.is_empty() { " (no worker reported in the last 3 s)" }
                        "."
                        @for (group, wait) in &reading.by_group {
                            " " span.muted { (group) ": " (secs(*wait)) }
                        }
                    }
                    @if bound.is_zero() {
                        p.muted { "Admission control is off (api.shed_after_wait_ms = 0)." }
                    } @else if reading.wait > bound {
                        p { span.status.failed data-testid="over-bound" { "above the bound" } " — new deposits and withdrawals get 503 overloaded while the wait stays above " (secs(bound)) " for a second." }
                    } @else {
                        p.muted { "New deposits and withdrawals are refused (503 overloaded) while the wait stays above " (secs(bound)) " for a second." }
                    }
                }
            }
        }
    }
}

fn breaker_class(state: gateway_health::BreakerState) -> &'static str {
    match state {
        gateway_health::BreakerState::Closed => "succeeded",
        gateway_health::BreakerState::Open => "failed",
        gateway_health::BreakerState::HalfOpen => "unresolved",
    }
}

/// `GET /console/ops/dlq`: how many messages the dead-letter topic holds and the newest,
/// decoded (read without joining a consumer group: looking changes nothing).
pub async fn dlq(
    State(state): State<ConsoleState>,
    Operator(viewer): Operator,
    csrf: CsrfToken,
) -> Result<Response, PageError> {
    let page = Page {
        title: "Dead-letter queue",
        viewer: &viewer,
        csrf: &csrf,
        flash: None,
    };
    let view = match dlq::peek(&state.kafka, DEAD_LETTERS).await {
        Ok(view) => view,
        Err(error) => {
            tracing::warn!(%error, "dead-letter queue unreadable");
            return Ok(page.render(html! { p.error data-testid="dlq-unavailable" { "The broker did not answer; try again." } }).into_response());
        }
    };
    Ok(page.render(html! {
        p { span data-testid="dlq-count" { (view.count) } " message(s) held" @if !view.complete { " (the newest ones could not all be read in time)" } "." }
        @for m in &view.messages {
            h2 { "partition " (m.partition) ", offset " (m.offset) @if let Some(at) = m.timestamp { " · " (when(at)) } }
            table data-testid="dlq-message" {
                tbody {
                    @if let Some(reason) = &m.reason { tr { th { "Why" } td { (reason) } } }
                    @if let Some(topic) = &m.source_topic { tr { th { "From" } td.mono { (topic) } } }
                    @if let Some(key) = &m.key { tr { th { "Key" } td.mono { (key) } } }
                    @for (name, value) in &m.headers { tr { th.mono { (name) } td.mono { (value) } } }
                    tr { th { "Payload" } td { pre { (m.payload) } } }
                }
            }
        }
    }).into_response())
}
