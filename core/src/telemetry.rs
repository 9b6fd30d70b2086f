//! Logging set-up: pretty for a terminal, JSON lines with `PAYGATE_LOG_FORMAT=json`.
//!
//! Secrets never reach a log: API keys and signing secrets are wrapped in types whose
//! `Debug` prints only a prefix, and request bodies are not logged.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Calling it twice (tests, `paygate dev`) is harmless.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match config.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init(),
    };
}

/// Serves Prometheus metrics at `http://<bind>/metrics` from this process, for services
/// without an HTTP server of their own (the processors, the dispatcher). The API renders
/// `/metrics` itself and does not call this. Must run inside the Tokio runtime.
pub fn serve_metrics(bind: &str) -> Result<(), String> {
    let addr: std::net::SocketAddr = bind
        .parse()
        .map_err(|e| format!("PAYGATE_TELEMETRY_METRICS_BIND: {bind:?} is not host:port ({e})"))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("metrics exporter on {addr}: {e}"))?;
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}
