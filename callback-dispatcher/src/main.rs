use std::process::ExitCode;

use paygate_callback_dispatcher::Dispatcher;
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
    let result = match Dispatcher::build(config).await {
        Ok(dispatcher) => dispatcher.run(paygate_core::shutdown::on_signal()).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "callback dispatcher failed");
            ExitCode::FAILURE
        }
    }
}
