//! `GET /console`: the last hour at a glance (the chart) for the merchant, or for every
//! merchant (operator).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::html;
use paygate_core::db::activity;

use crate::chart;
use crate::error::PageError;
use crate::layout::Page;
use crate::viewer::{CsrfToken, Viewer};
use crate::ConsoleState;

pub async fn show(
    State(state): State<ConsoleState>,
    viewer: Viewer,
    csrf: CsrfToken,
) -> Result<Response, PageError> {
    let since = chrono::Utc::now() - chrono::Duration::minutes(59);
    let minutes = activity::per_minute(&state.pool, viewer.user.role.merchant(), since).await?;
    let page = Page {
        title: "Dashboard",
        viewer: &viewer,
        csrf: &csrf,
        flash: None,
    };
    Ok(page
        .render(html! {
            h2 { "Payments per minute, last hour" }
            (chart::render(&minutes))
        })
        .into_response())
}
