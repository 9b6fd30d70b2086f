//! The API service binary: load config, set up logging, build, run until SIGINT/SIGTERM.

use std::process::ExitCode;

use paygate_api::Application;
use paygate_core::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    paygate_core::telemetry::init(&config.log);
    let shutdown = paygate_core::shutdown::on_signal();
    let result = match Application::build(config).await {
        Ok(app) => app.run(shutdown).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "paygate API failed");
            ExitCode::FAILURE
        }
    }
}
