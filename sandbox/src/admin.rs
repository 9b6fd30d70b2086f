//! The admin API, under `/_admin` (no gateway name starts with `_`, so it cannot clash with
//! an account):
//!
//! | method | path | body / answer |
//! | --- | --- | --- |
//! | GET | `/_admin/health` | `ok` |
//! | GET | `/_admin/knobs` | `{"global": Knobs, "accounts": {name: Knobs}}` |
//! | PUT / PATCH | `/_admin/knobs` | Knobs (PUT: missing fields = defaults; PATCH: = current) → Knobs |
//! | GET | `/_admin/accounts/{account}/knobs` | the knobs in force for the account |
//! | PUT / PATCH | `/_admin/accounts/{account}/knobs` | as above; PATCH starts from the knobs in force |
//! | DELETE | `/_admin/accounts/{account}/knobs` | back to the global knobs |
//! | GET | `/_admin/stats` | `{"total": Stats, "accounts": {name: Stats}}` |
//! | GET | `/_admin/accounts/{account}/stats` | Stats (all zero for an unseen account) |
//! | POST | `/_admin/reset` | forgets records, counters and account knobs |
//! | GET | `/_admin/references/{reference}` | [`ReferenceReport`]: every account's record of a transaction id (400 if not one) |
//!
//! A bad knob value is a 400 `{"error": "..."}`. [`crate::admin_client::AdminClient`] (from
//! `paygate-sandbox-admin`) is a
//! typed client of this API.
//!
//! Knobs (all per account; see [`Knobs`] for each one's exact meaning):
//!
//! | knob | default | effect |
//! | --- | --- | --- |
//! | `latency_min_ms`, `latency_max_ms` | 0, 0 | random wait before every request |
//! | `error_rate` | 0 | 500 in the protocol's error shape, not executed |
//! | `rate_limit_rate` | 0 | 429 + `Retry-After: 1`, not executed |
//! | `timeout_rate`, `hang_ms` | 0, 30000 | hang, then 504, not executed |
//! | `lost_response_rate` | 0 | executed, then hang and 504 |
//! | `execute_then_error_rate` | 0 | a fresh payment is executed, then answered `execute_then_error_status` as bare `text/plain` (`502 Bad Gateway`); counter `executed_then_errored` |
//! | `execute_then_error_status` | 502 | `500..=599` |
//! | `decline_rate` | 0 | synchronous decline (recorded) |
//! | `duplicate_reference_status` | null | when set (`400..=499`), a repeated reference is refused with it and code `duplicate_reference` in the protocol's error shape instead of replayed; counters `duplicates_suppressed`, `duplicate_references_refused` |
//! | `status_not_found_for_ms` | 0 | status queries answer "not found" until this long after execution |
//! | `mismatched_status_rate` | 0 | JSON verify answers one minor unit more than executed; counter `statuses_mismatched` |
//! | `outage` | false | 503 to everything, status queries too |
//! | `callbacks_enabled`, `callback_delay_ms` | true, 50 | callbacks and their delay |
//! | `callback_failure_rate` | 0 | executed, callback says `insufficient_funds` |
//! | `duplicate_callback_rate`, `out_of_order_rate`, `out_of_order_delay_ms` | 0, 0, 500 | callback copies and reordering |
//! | `malformed_callback_rate`, `mismatched_callback_rate` | 0, 0 | signed but unparseable / one unit too much |
//! | `callback_max_attempts` | 10 | attempts while paygate answers non-2xx |
//! | `callback_backoff_ms`, `callback_backoff_max_ms` | 1000, 60000 | first retry delay, doubling up to the cap (~4 min in all by default) |
//! | `callback_base_url` | null | where this account's callbacks go |
//!
//! Counters beyond the obvious: `executed_elsewhere` counts fresh executions of a reference
//! that another account had already executed (the same payment paid on two gateways).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use paygate_core::domain::GatewayName;

use crate::engine::Engine;
use crate::knobs::{Knobs, Stats};
use crate::references::ReferenceReport;

type Shared = State<Arc<Engine>>;

fn bad_request(message: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

fn account(raw: &str) -> Result<GatewayName, Box<Response>> {
    GatewayName::parse(raw).map_err(|e| Box::new(bad_request(e.to_string())))
}

pub async fn health() -> &'static str {
    "ok"
}

pub async fn get_knobs(State(engine): Shared) -> Response {
    Json(engine.knobs_report()).into_response()
}

pub async fn put_knobs(State(engine): Shared, Json(patch): Json<serde_json::Value>) -> Response {
    match Knobs::default().patched(&patch) {
        Ok(knobs) => {
            engine.set_global_knobs(knobs.clone());
            Json(knobs).into_response()
        }
        Err(e) => bad_request(e),
    }
}

pub async fn patch_knobs(State(engine): Shared, Json(patch): Json<serde_json::Value>) -> Response {
    match engine.knobs_report().global.patched(&patch) {
        Ok(knobs) => {
            engine.set_global_knobs(knobs.clone());
            Json(knobs).into_response()
        }
        Err(e) => bad_request(e),
    }
}

pub async fn get_account_knobs(State(engine): Shared, Path(raw): Path<String>) -> Response {
    match account(&raw) {
        Ok(name) => Json(engine.knobs(name.as_str())).into_response(),
        Err(response) => *response,
    }
}

pub async fn put_account_knobs(
    State(engine): Shared,
    Path(raw): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Response {
    set_account(&engine, &raw, &Knobs::default(), &patch)
}

pub async fn patch_account_knobs(
    State(engine): Shared,
    Path(raw): Path<String>,
    Json(patch): Json<serde_json::Value>,
) -> Response {
    let base = engine.knobs(&raw);
    set_account(&engine, &raw, &base, &patch)
}

fn set_account(engine: &Engine, raw: &str, base: &Knobs, patch: &serde_json::Value) -> Response {
    let name = match account(raw) {
        Ok(name) => name,
        Err(response) => return *response,
    };
    match base.patched(patch) {
        Ok(knobs) => {
            engine.set_account_knobs(name.as_str(), Some(knobs.clone()));
            Json(knobs).into_response()
        }
        Err(e) => bad_request(e),
    }
}

pub async fn delete_account_knobs(State(engine): Shared, Path(raw): Path<String>) -> Response {
    match account(&raw) {
        Ok(name) => {
            engine.set_account_knobs(name.as_str(), None);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(response) => *response,
    }
}

pub async fn stats(State(engine): Shared) -> Response {
    Json(engine.stats()).into_response()
}

pub async fn account_stats(State(engine): Shared, Path(raw): Path<String>) -> Response {
    let stats: Stats = engine
        .stats()
        .accounts
        .get(&raw)
        .copied()
        .unwrap_or_default();
    Json(stats).into_response()
}

pub async fn reset(State(engine): Shared) -> StatusCode {
    engine.reset();
    StatusCode::NO_CONTENT
}

pub async fn reference(State(engine): Shared, Path(raw): Path<String>) -> Response {
    if raw.is_empty() || raw.len() > 256 {
        return bad_request("a reference is 1-256 characters".to_owned());
    }
    let reference = raw;
    let executions = engine
        .records_of(&reference)
        .iter()
        .map(crate::references::execution_report)
        .collect();
    Json(ReferenceReport {
        reference,
        executions,
    })
    .into_response()
}
