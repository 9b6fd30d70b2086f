//! `paygate-payment-processor`: the payment processor as its own process.

use paygate_core::service::{self, Metrics};
use paygate_gateways::GatewayRegistry;
use paygate_payment_processor::PaymentProcessor;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run(
        "payment processor",
        Metrics::Exporter,
        |config, shutdown| async move {
            let registry = GatewayRegistry::from_config(&config.gateways)?;
            PaymentProcessor::build(config, registry)
                .await?
                .run(shutdown)
                .await?;
            Ok(())
        },
    )
    .await
}
