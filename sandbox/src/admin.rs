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
//!
//! A bad knob value is a 400 `{"error": "..."}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use paygate_core::domain::GatewayName;

use crate::engine::Engine;
use crate::knobs::{Knobs, Stats};

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
