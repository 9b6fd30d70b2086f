//! `paygate-payment-processor`: the payment processor as its own process.

use paygate_core::config::Config;
use paygate_gateways::GatewayRegistry;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load()?;
    paygate_core::telemetry::init(&config.log);
    let registry = GatewayRegistry::from_config(&config.gateways)?;
    let processor = paygate_payment_processor::PaymentProcessor::build(config, registry).await?;
    processor.run(paygate_core::shutdown::on_signal()).await?;
    Ok(())
}
