//! `/healthz` (the process answers), `/readyz` (Postgres, Redis, Kafka) and `/metrics`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::resources::{Health, Readiness, ReadinessChecks};
use crate::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a `/readyz` answer is reused: a flood of probes costs at most one round of
/// Postgres, Redis and Kafka checks per this interval (issue 17).
pub const READINESS_CACHE_TTL: Duration = Duration::from_secs(1);

/// One round of checks: `(postgres, redis, kafka)`, each reachable or not.
type Checks = (bool, bool, bool);

/// The last probe's results `(postgres, redis, kafka)` and when they were taken. Held across
/// a probe, so callers arriving meanwhile wait for that probe instead of starting their own.
#[derive(Default)]
pub struct ReadinessCache {
    last: tokio::sync::Mutex<Option<(Instant, Checks)>>,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// Readiness. `ok`; `degraded` (200) when Redis or Kafka is down, since payments are still
/// accepted into the outbox; `unavailable` (503) when Postgres is down.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "ok or degraded", body = Readiness),
    (status = 503, description = "Postgres unreachable", body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (postgres, redis, kafka) = {
        let mut last = state.readiness.last.lock().await;
        match *last {
            Some((at, checks)) if at.elapsed() < READINESS_CACHE_TTL => checks,
            _ => {
                let checks = probe(&state).await;
                *last = Some((Instant::now(), checks));
                checks
            }
        }
    };
    let word = |ok: bool| if ok { "ok" } else { "down" }.to_owned();
    let (status, code) = match (postgres, redis && kafka) {
        (false, _) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
        (true, false) => ("degraded", StatusCode::OK),
        (true, true) => ("ok", StatusCode::OK),
    };
    let body = Readiness {
        status: status.to_owned(),
        checks: ReadinessChecks {
            postgres: word(postgres),
            redis: word(redis),
            kafka: word(kafka),
        },
        outbox_backlog: state.backlog.get(),
    };
    (code, Json(body)).into_response()
}

/// One round of checks: `(postgres, redis, kafka)`.
async fn probe(state: &AppState) -> Checks {
    let postgres = async {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
        matches!(tokio::time::timeout(CHECK_TIMEOUT, ping).await, Ok(Ok(_)))
    };
    let redis = state.cache.ping();
    let kafka = async {
        state.topics_ready.load(Ordering::Relaxed)
            && state.relay_health.broker_ok()
            && state.producer.is_reachable(CHECK_TIMEOUT).await
    };
    tokio::join!(postgres, redis, kafka)
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = match &state.metrics {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
