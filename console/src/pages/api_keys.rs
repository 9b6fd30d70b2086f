//! `GET /console/api-keys`: the merchant's keys (prefix, scopes, created, revoked);
//! `POST` creates one with the scopes ticked and shows it once, on the page the creation
//! answers with (never in a URL, never again); `POST /console/api-keys/{id}/revoke` revokes
//! one at once (the API re-checks a key in the same statement as every create).
//!
//! The creation form carries a one-time id, stored with the key it makes: a browser reload
//! (or a double click) posts the same id again and makes no second key
//! ([`merchants::create_api_key_once`]).

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use paygate_core::db::merchants;
use paygate_core::domain::{ApiKeyId, MerchantId, Scope};
use serde::Deserialize;

use super::{back_with, merchant_field, merchant_picker, Flash, MerchantForm, Shown};
use crate::error::PageError;
use crate::layout::{hidden_csrf, when, Page};
use crate::viewer::{CsrfForm, CsrfToken, Viewer};
use crate::ConsoleState;

/// Keys listed at most.
const KEYS: i64 = 200;

#[derive(Deserialize)]
pub struct NewKey {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    merchant: Option<String>,
    /// The form's one-time id ([`keys_page`] draws a new one each time).
    #[serde(default)]
    form: Option<String>,
}

/// What a re-posted creation form is answered with.
const ALREADY_SENT: &str = "This form was already sent: the key it made was shown then, \
    once, and is in the list below. To make another key, use the form on this page.";

pub async fn list(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
    Query(shown): Query<Shown>,
) -> Result<Response, PageError> {
    let Some(merchant) = viewer.merchant_scope(shown.merchant.as_deref())? else {
        let page = Page {
            title: "API keys",
            viewer: &viewer,
            csrf: &csrf,
            flash: None,
        };
        return Ok(page
            .render(merchant_picker(&state, "/console/api-keys").await?)
            .into_response());
    };
    let flash = Flash::message_for(shown.flash.as_deref());
    Ok(keys_page(&state, &viewer, &csrf, merchant, flash, None)
        .await?
        .into_response())
}

pub async fn create(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
    CsrfForm(form): CsrfForm<NewKey>,
) -> Result<Response, PageError> {
    let merchant = viewer.required_merchant(form.merchant.as_deref())?;
    let scopes = form
        .scopes
        .iter()
        .map(|s| {
            s.parse::<Scope>()
                .map_err(|_| PageError::BadRequest(format!("{s:?} is not a scope")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if scopes.is_empty() {
        return Err(PageError::BadRequest("tick at least one scope".into()));
    }
    let form_id = form
        .form
        .as_deref()
        .and_then(|f| uuid::Uuid::parse_str(f).ok())
        .ok_or_else(|| {
            PageError::BadRequest("this form is out of date: reload the page and try again".into())
        })?;
    let Some((id, key)) =
        merchants::create_api_key_once(&state.pool, merchant, &scopes, form_id).await?
    else {
        let page = keys_page(&state, &viewer, &csrf, merchant, Some(ALREADY_SENT), None).await?;
        return Ok((axum::http::StatusCode::CONFLICT, page).into_response());
    };
    tracing::info!(key = %id, %merchant, user = %viewer.user.id, "API key created from the console");
    let page = keys_page(&state, &viewer, &csrf, merchant, None, Some(key.expose())).await?;
    Ok(([(axum::http::header::CACHE_CONTROL, "no-store")], page).into_response())
}

pub async fn revoke(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    Path(id): Path<String>,
    CsrfForm(form): CsrfForm<MerchantForm>,
) -> Result<Response, PageError> {
    let merchant = viewer.required_merchant(form.merchant.as_deref())?;
    let id: ApiKeyId = id.parse().map_err(|_| PageError::NotFound)?;
    let revoked = merchants::revoke_merchant_api_key(&state.pool, merchant, id).await?;
    tracing::info!(key = %id, %merchant, user = %viewer.user.id, revoked, "API key revoke from the console");
    let back = format!("/console/api-keys{}", viewer.scope_query(merchant));
    Ok(back_with(
        &back,
        if revoked {
            Flash::KeyRevoked
        } else {
            Flash::NothingChanged
        },
    )
    .into_response())
}

async fn keys_page(
    state: &ConsoleState,
    viewer: &Viewer,
    csrf: &CsrfToken,
    merchant: MerchantId,
    flash: Option<&str>,
    new_key: Option<&str>,
) -> Result<Markup, PageError> {
    let keys = merchants::list_api_keys(&state.pool, merchant, KEYS).await?;
    let page = Page {
        title: "API keys",
        viewer,
        csrf,
        flash,
    };
    let merchant_field = merchant_field(viewer, merchant);
    Ok(page.render(html! {
        @if let Some(key) = new_key {
            p.secret {
                "Your new key. Copy it now: it is shown only this once and cannot be recovered. "
                code data-testid="new-key" { (key) }
            }
        }
        form #create-key .filters method="post" action="/console/api-keys" {
            (hidden_csrf(csrf))
            (merchant_field)
            input type="hidden" name="form" value=(uuid::Uuid::new_v4());
            @for scope in Scope::ALL {
                label { (scope.as_str()) input type="checkbox" name="scopes" value=(scope.as_str()) checked; }
            }
            button type="submit" { "Create key" }
        }
        table {
            thead { tr { th { "Key" } th { "Scopes" } th { "Created" } th { "State" } } }
            tbody {
                @for k in &keys {
                    tr data-testid="key-row" data-prefix=(k.prefix) data-id=(k.id) {
                        td.mono { (k.prefix) "…" }
                        td { (k.scopes.join(", ")) }
                        td { (when(k.created_at)) }
                        td {
                            @if let Some(at) = k.revoked_at {
                                span.status.failed data-testid="revoked" { "revoked " (when(at)) }
                            } @else {
                                form.inline method="post" action={"/console/api-keys/" (k.id) "/revoke"} data-testid="revoke" {
                                    (hidden_csrf(csrf))
                                    (merchant_field)
                                    button.secondary type="submit" { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }))
}
