//! `GET /console/webhooks`: the merchant's endpoints (enabled or why not), enable and
//! disable; `GET /console/webhooks/{id}`: one endpoint's attempt log and secret rotation
//! (the new secret is shown once, on the page the rotation answers with).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use paygate_core::db::webhook_endpoints::{self, EndpointSummary};
use paygate_core::db::webhooks;
use paygate_core::domain::{MerchantId, WebhookEndpointId};

use super::{back_with, merchant_field, merchant_picker, Flash, MerchantForm, Shown};
use crate::error::PageError;
use crate::layout::{hidden_csrf, when, Page};
use crate::viewer::{CsrfForm, CsrfToken, Viewer};
use crate::ConsoleState;

/// Endpoints listed at most (the API allows 16 enabled; disabled ones stay).
const ENDPOINTS: i64 = 200;
/// Attempts shown on an endpoint's page.
const ATTEMPTS: i64 = 100;

pub async fn list(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
    Query(shown): Query<Shown>,
) -> Result<Response, PageError> {
    let page = Page {
        title: "Webhook endpoints",
        viewer: &viewer,
        csrf: &csrf,
        flash: Flash::message_for(shown.flash.as_deref()),
    };
    let Some(merchant) = viewer.merchant_scope(shown.merchant.as_deref())? else {
        return Ok(page
            .render(merchant_picker(&state, "/console/webhooks").await?)
            .into_response());
    };
    let endpoints = webhook_endpoints::summaries(&state.pool, merchant, ENDPOINTS).await?;
    let scope = viewer.scope_query(merchant);
    Ok(page
        .render(html! {
            @if endpoints.is_empty() {
                p.muted { "No endpoint. Register one with " code { "POST /v1/webhook-endpoints" } "." }
            } @else {
                table {
                    thead { tr { th { "URL" } th { "Description" } th { "Created" } th { "State" } th { "" } } }
                    tbody {
                        @for e in &endpoints {
                            tr data-testid="endpoint-row" data-id=(e.id) {
                                td.mono { a href={"/console/webhooks/" (e.id) (scope)} { (e.url) } }
                                td { (e.description.as_deref().unwrap_or("")) }
                                td { (when(e.created_at)) }
                                td { (state_of(e)) }
                                td { (toggle(&viewer, &csrf, merchant, e)) }
                            }
                        }
                    }
                }
            }
        })
        .into_response())
}

fn state_of(e: &EndpointSummary) -> Markup {
    html! {
        @match (e.disabled_at, &e.disabled_reason) {
            (None, _) => {
                span.status.succeeded data-testid="endpoint-state" { "enabled" }
                @if let Some(since) = e.failing_since { " " span.muted { "failing since " (when(since)) } }
            }
            (Some(at), reason) => {
                span.status.failed data-testid="endpoint-state" { "disabled" }
                " " span.muted { (reason.as_deref().unwrap_or("by the merchant")) ", " (when(at)) }
            }
        }
    }
}

fn toggle(viewer: &Viewer, csrf: &CsrfToken, merchant: MerchantId, e: &EndpointSummary) -> Markup {
    let (verb, label) = if e.disabled_at.is_some() {
        ("enable", "Enable")
    } else {
        ("disable", "Disable")
    };
    html! {
        form.inline method="post" action={"/console/webhooks/" (e.id) "/" (verb)} data-testid=(verb) {
            (hidden_csrf(csrf))
            (merchant_field(viewer, merchant))
            button.secondary type="submit" { (label) }
        }
    }
}

async fn endpoint(
    state: &ConsoleState,
    viewer: &Viewer,
    id: &str,
    merchant: Option<&str>,
) -> Result<(MerchantId, EndpointSummary), PageError> {
    let merchant = viewer.required_merchant(merchant)?;
    let id: WebhookEndpointId = id.parse().map_err(|_| PageError::NotFound)?;
    let found = webhook_endpoints::summary(&state.pool, merchant, id).await?;
    Ok((merchant, found.ok_or(PageError::NotFound)?))
}

pub async fn show(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
    Path(id): Path<String>,
    Query(shown): Query<Shown>,
) -> Result<Response, PageError> {
    let (merchant, e) = endpoint(&state, &viewer, &id, shown.merchant.as_deref()).await?;
    let flash = Flash::message_for(shown.flash.as_deref());
    Ok(detail(&state, &viewer, &csrf, merchant, &e, flash, None)
        .await?
        .into_response())
}

async fn detail(
    state: &ConsoleState,
    viewer: &Viewer,
    csrf: &CsrfToken,
    merchant: MerchantId,
    e: &EndpointSummary,
    flash: Option<&str>,
    new_secret: Option<&str>,
) -> Result<Markup, PageError> {
    let attempts = webhook_endpoints::attempts_for_endpoint(&state.pool, e.id, ATTEMPTS).await?;
    let page = Page {
        title: "Webhook endpoint",
        viewer,
        csrf,
        flash,
    };
    Ok(page.render(html! {
        p.mono { (e.url) } p { (state_of(e)) " " (toggle(viewer, csrf, merchant, e)) }
        @if let Some(secret) = new_secret {
            p.secret data-testid="new-secret" {
                "New signing secret (shown once; the previous one keeps signing for 24 hours): "
                code { (secret) }
            }
        }
        @if e.disabled_at.is_none() {
            form.inline method="post" action={"/console/webhooks/" (e.id) "/rotate"} data-testid="rotate" {
                (hidden_csrf(csrf))
                (merchant_field(viewer, merchant))
                button.secondary type="submit" { "Rotate signing secret" }
            }
        }
        h2 { "Attempts" }
        @if attempts.is_empty() {
            p.muted { "No delivery attempt yet." }
        } @else {
            table {
                thead { tr { th { "When" } th { "Event" } th { "Payment" } th { "Try" } th { "Response" } th { "Latency" } } }
                tbody {
                    @for d in &attempts {
                        tr data-testid="attempt-row" {
                            td { (when(d.created_at)) }
                            td.mono { (d.attempt.event_id) }
                            td.mono { a href={"/console/transactions/" (d.attempt.transaction_id)} { (d.attempt.transaction_id) } }
                            td.num { (d.attempt.attempt) }
                            td {
                                @match (d.attempt.status_code, &d.attempt.error) {
                                    (Some(code), _) => span.status data-testid="response-code" { (code) },
                                    (None, Some(error)) => span.error { (error) },
                                    (None, None) => "—",
                                }
                            }
                            td.num { @if let Some(ms) = d.attempt.latency_ms { (ms) " ms" } }
                        }
                    }
                }
            }
        }
    }))
}

async fn act(
    state: &ConsoleState,
    viewer: &Viewer,
    id: &str,
    form: &MerchantForm,
    enable: bool,
) -> Result<Response, PageError> {
    let (merchant, e) = endpoint(state, viewer, id, form.merchant.as_deref()).await?;
    let changed = if enable {
        webhook_endpoints::enable(&state.pool, merchant, e.id).await?
    } else {
        webhook_endpoints::disable(&state.pool, merchant, e.id).await?
    };
    let flash = match (changed, enable) {
        (false, _) => Flash::NothingChanged,
        (true, true) => Flash::EndpointEnabled,
        (true, false) => Flash::EndpointDisabled,
    };
    tracing::info!(endpoint = %e.id, user = %viewer.user.id, enable, changed, "webhook endpoint toggled from the console");
    Ok(back_with(
        &format!("/console/webhooks{}", viewer.scope_query(merchant)),
        flash,
    )
    .into_response())
}

pub async fn enable(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<MerchantForm>,
) -> Result<Response, PageError> {
    act(&state, &viewer, &id, &form, true).await
}

pub async fn disable(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<MerchantForm>,
) -> Result<Response, PageError> {
    act(&state, &viewer, &id, &form, false).await
}

/// `POST /console/webhooks/{id}/rotate`: answers with the endpoint's page showing the new
/// secret once (not a redirect: the secret must not travel in a URL).
pub async fn rotate(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<MerchantForm>,
) -> Result<Response, PageError> {
    let (merchant, e) = endpoint(&state, &viewer, &id, form.merchant.as_deref()).await?;
    let secret = webhooks::rotate_endpoint_secret(
        &state.pool,
        &state.keyring,
        merchant,
        e.id,
        webhooks::ROTATION_OVERLAP,
    )
    .await?
    .ok_or(PageError::NotFound)?;
    tracing::info!(endpoint = %e.id, user = %viewer.user.id, "webhook endpoint secret rotated from the console");
    let page = detail(
        &state,
        &viewer,
        &csrf,
        merchant,
        &e,
        None,
        Some(secret.expose()),
    )
    .await?;
    Ok(([(axum::http::header::CACHE_CONTROL, "no-store")], page).into_response())
}
