//! `paygate-callback-dispatcher`: the webhook dispatcher as its own process.

use paygate_callback_dispatcher::Dispatcher;
use paygate_core::service::{self, Metrics};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run(
        "callback dispatcher",
        Metrics::Exporter,
        |config, shutdown| async move {
            Dispatcher::build(config).await?.run(shutdown).await?;
            Ok(())
        },
    )
    .await
}
