//! `paygate-callback-processor`: the callback processor as its own process.

use paygate_callback_processor::CallbackProcessor;
use paygate_core::service::{self, Metrics};
use paygate_gateways::GatewayRegistry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run(
        "callback processor",
        Metrics::Exporter,
        |config, shutdown| async move {
            let registry = GatewayRegistry::from_config(&config.gateways)?;
            CallbackProcessor::build(config, registry)
                .await?
                .run(shutdown)
                .await?;
            Ok(())
        },
    )
    .await
}
