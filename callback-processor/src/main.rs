//! The callback processor service: `Config::load`, then run until SIGINT/SIGTERM.

use std::process::ExitCode;

use paygate_callback_processor::CallbackProcessor;
use paygate_core::config::Config;
use paygate_gateways::GatewayRegistry;

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
    let result = async {
        let registry = GatewayRegistry::from_config(&config.gateways)?;
        let processor = CallbackProcessor::build(config, registry).await?;
        processor.run(paygate_core::shutdown::on_signal()).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "callback processor failed");
            ExitCode::FAILURE
        }
    }
}
