//! `paygate-api`: the merchant API, callback ingress and outbox relay as their own process.

use paygate_api::Application;
use paygate_core::service::{self, Metrics};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run(
        "paygate API",
        Metrics::OwnEndpoint,
        |config, shutdown| async move {
            Application::build(config).await?.run(shutdown).await?;
            Ok(())
        },
    )
    .await
}
