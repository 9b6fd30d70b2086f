//! `paygate-sandbox`: fake payment providers. Settings from flags or `SANDBOX_*` variables.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let settings = paygate_sandbox::SandboxArgs::parse().into_settings()?;
    let sandbox = paygate_sandbox::Sandbox::build(settings).await?;
    // SIGINT or SIGTERM (what `docker stop` and `scripts/up down` send).
    sandbox.run(paygate_core::shutdown::on_signal()).await
}
