//! The one way a paygate service process starts: load the config (a bad value stops it with
//! a message naming the variable), set up logging, optionally serve metrics, run until
//! SIGINT/SIGTERM, and turn the outcome into an exit code.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Whether the process needs the standalone Prometheus exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metrics {
    /// The service renders `/metrics` itself (the API).
    OwnEndpoint,
    /// Serve them at `telemetry.metrics_bind`, when configured.
    Exporter,
}

pub type ServiceError = Box<dyn std::error::Error + Send + Sync>;

/// Runs `service(config, shutdown)` as the whole process.
pub async fn run<F, Fut>(name: &str, metrics: Metrics, service: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{name}: {error}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&config.log);
    if metrics == Metrics::Exporter {
        if let Some(bind) = config.telemetry.metrics_bind.clone() {
            let token = config.telemetry.metrics_token.clone();
            if let Err(error) = crate::telemetry::serve_metrics(&bind, token) {
                tracing::error!(%error, "{name}: metrics exporter failed to start");
                return ExitCode::FAILURE;
            }
        }
    }
    match service(config, crate::shutdown::on_signal()).await {
        Ok(()) => {
            tracing::info!("{name} stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "{name} failed");
            ExitCode::FAILURE
        }
    }
}
