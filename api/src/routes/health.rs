//! `/healthz` (the process answers), `/readyz` (Postgres, Redis, Kafka) and `/metrics`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use paygate_core::config::TelemetryConfig;
use paygate_core::secret::Secret;
use paygate_core::telemetry::bearer_matches;

use crate::error::HttpError;
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

/// Who may read `/metrics` on the API's public listener. Metrics name merchants'
/// destinations, gateways and volumes, so they are not for anyone who can reach the API:
/// with `telemetry.metrics_bind` they move to their own (private) listener and the public
/// route answers 404; with `telemetry.metrics_token` they answer only its bearer. Config
/// load refuses an API bound beyond loopback with neither.
#[derive(Debug, Clone)]
pub struct MetricsGate {
    public: bool,
    token: Option<Secret>,
}

impl MetricsGate {
    pub fn from_config(telemetry: &TelemetryConfig) -> Self {
        Self {
            public: telemetry.metrics_bind.is_none(),
            token: telemetry.metrics_token.clone(),
        }
    }

    fn admit(&self, headers: &HeaderMap) -> Result<(), HttpError> {
        if !self.public {
            return Err(HttpError::not_found("route"));
        }
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if bearer_matches(presented, token) {
            Ok(())
        } else {
            Err(HttpError::unauthenticated(
                "/metrics needs Authorization: Bearer <telemetry.metrics_token>",
            ))
        }
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    (status = 401, description = "`telemetry.metrics_token` is set and the request does not carry it as a bearer token", body = crate::error::ErrorBody),
    (status = 404, description = "`telemetry.metrics_bind` serves metrics on a listener of their own", body = crate::error::ErrorBody),
))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refused) = state.metrics_gate.admit(&headers) {
        return refused.into_response();
    }
    let text = match &state.metrics {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
