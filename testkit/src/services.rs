//! Every service in process, each on a [`CancellationToken`] of its own.
//!
//! A spawned service is a [`Running`]: dropping it cancels the service (a test that fails
//! half-way leaves nothing running behind it), [`Running::shutdown`] cancels and waits for it
//! and reports how it ended. The API and the sandbox listen on port 0 and their handles
//! carry the address.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use paygate_core::config::{Config, GatewayConfig};
use paygate_gateways::GatewayRegistry;
use paygate_sandbox::{Sandbox, SandboxSettings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::AdminClient;

/// The API service's error.
pub type ApiError = paygate_api::error::ApiError;
/// The payment processor's error.
pub type PaymentProcessorError = paygate_payment_processor::ProcessorError;
/// The callback processor's error.
pub type CallbackProcessorError = paygate_callback_processor::ProcessorError;
/// The dispatcher's error.
pub type DispatcherError = paygate_callback_dispatcher::DispatcherError;

/// One service running on a tokio task until its token is cancelled. Dropping it cancels
/// the service without waiting.
#[derive(Debug)]
pub struct Running<E> {
    name: &'static str,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E> Running<E>
where
    E: Into<anyhow::Error> + Send + 'static,
{
    /// Spawns `run(token)` on the runtime; `name` is for messages.
    pub fn spawn<F>(name: &'static str, run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone()));
        Self {
            name,
            stop,
            task: Some(task),
        }
    }

    /// The service's token (cancel it to stop the service).
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Cancels the service and waits for it: its error (or panic) if it did not end cleanly.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let name = self.name;
        let ended = task.await.with_context(|| format!("{name} task"))?;
        ended
            .map_err(|error| -> anyhow::Error { error.into() })
            .with_context(|| format!("{name} stopped with an error"))
    }

    /// [`Running::shutdown`], failing when the service takes longer than `within`.
    pub async fn shutdown_within(self, within: Duration) -> anyhow::Result<()> {
        let name = self.name;
        tokio::time::timeout(within, self.shutdown())
            .await
            .with_context(|| format!("{name} did not stop within {within:?}"))?
    }

    /// The token and the task, for a test that drives them itself (nothing is cancelled).
    pub fn into_parts(mut self) -> (CancellationToken, JoinHandle<Result<(), E>>) {
        let task = self
            .task
            .take()
            .unwrap_or_else(|| tokio::spawn(async { Ok(()) }));
        (self.stop.clone(), task)
    }

    /// The token and a task that prints the service's error instead of returning it.
    pub fn into_logged(self) -> (CancellationToken, JoinHandle<()>) {
        let name = self.name;
        let (stop, task) = self.into_parts();
        let logged = tokio::spawn(async move {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    let error: anyhow::Error = error.into();
                    eprintln!("{name} stopped with {error:#}");
                }
                Err(error) => eprintln!("{name} task failed: {error}"),
            }
        });
        (stop, logged)
    }
}

impl<E> Drop for Running<E> {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.stop.cancel();
        }
    }
}

/// The API service on its own port.
#[derive(Debug)]
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub port: u16,
    pub running: Running<ApiError>,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Stops the API and waits (at most 30 s) for it to finish: the relay's last round and
    /// the producer's flush. Errors are printed, not returned, as a test's teardown wants.
    pub async fn stop(self) {
        if let Err(error) = self.running.shutdown_within(Duration::from_secs(30)).await {
            eprintln!("{error:#}");
        }
    }
}

/// Builds the API on `config` (bind it to `127.0.0.1:0`, see [`spawn_api_on_port_zero`]) with
/// `registry`, and runs it.
pub async fn spawn_api(config: Config, registry: GatewayRegistry) -> anyhow::Result<Api> {
    let app = paygate_api::Application::build_with(config, registry)
        .await
        .context("build the API")?;
    let port = app.port();
    let running = Running::spawn("api", move |token| app.run(token));
    Ok(Api {
        address: format!("http://127.0.0.1:{port}"),
        port,
        running,
    })
}

/// [`spawn_api`] with `api.bind` set to `127.0.0.1:0` first.
pub async fn spawn_api_on_port_zero(
    mut config: Config,
    registry: GatewayRegistry,
) -> anyhow::Result<Api> {
    config.api.bind = "127.0.0.1:0".into();
    spawn_api(config, registry).await
}

/// The payment processor on `config`, its registry built from `config.gateways`.
pub async fn spawn_payment_processor(
    config: &Config,
) -> anyhow::Result<Running<PaymentProcessorError>> {
    let registry =
        GatewayRegistry::from_config(&config.gateways).context("payment processor gateways")?;
    let processor = paygate_payment_processor::PaymentProcessor::build(config.clone(), registry)
        .await
        .context("build the payment processor")?;
    Ok(Running::spawn("processor", move |token| {
        processor.run(token)
    }))
}

/// The callback processor on `config` with `registry`.
pub async fn spawn_callback_processor(
    config: &Config,
    registry: GatewayRegistry,
) -> anyhow::Result<Running<CallbackProcessorError>> {
    let processor = paygate_callback_processor::CallbackProcessor::build(config.clone(), registry)
        .await
        .context("build the callback processor")?;
    Ok(Running::spawn("callback processor", move |token| {
        processor.run(token)
    }))
}

/// The webhook dispatcher on `config`.
pub async fn spawn_dispatcher(config: &Config) -> anyhow::Result<Running<DispatcherError>> {
    let dispatcher = paygate_callback_dispatcher::Dispatcher::build(config.clone())
        .await
        .context("build the dispatcher")?;
    Ok(Running::spawn("dispatcher", move |token| {
        dispatcher.run(token)
    }))
}

/// A running sandbox and the typed client of its admin API.
#[derive(Debug)]
pub struct SandboxHandle {
    /// The sandbox root, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    pub admin: AdminClient,
    pub running: Running<anyhow::Error>,
}

/// Sandbox settings on port 0 whose callbacks go to `callback_base_url` (use
/// `http://127.0.0.1:9` or `:1` for "nowhere").
pub fn sandbox_settings(callback_base_url: &str) -> SandboxSettings {
    SandboxSettings {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        callback_base_url: callback_base_url.into(),
        ..SandboxSettings::default()
    }
}

/// Starts a sandbox on `settings` (see [`sandbox_settings`]).
pub async fn spawn_sandbox(settings: SandboxSettings) -> anyhow::Result<SandboxHandle> {
    let sandbox = Sandbox::build(settings)
        .await
        .context("build the sandbox")?;
    let url = sandbox.base_url();
    let stop = CancellationToken::new();
    let task = sandbox.spawn(stop.clone());
    Ok(SandboxHandle {
        admin: AdminClient::new(url.clone()).context("sandbox admin client")?,
        url,
        running: Running {
            name: "sandbox",
            stop,
            task: Some(task),
        },
    })
}

impl SandboxHandle {
    /// A gateway of `kind` (`json`, `soap`, `protobuf`) named `name`, talking to this
    /// sandbox's account `name` with the sandbox's default secrets, plus `settings` (any
    /// further gateway fields, e.g. `timeout_ms`; `{}` for none).
    pub fn gateway(
        &self,
        name: &str,
        kind: &str,
        settings: &serde_json::Value,
    ) -> anyhow::Result<GatewayConfig> {
        sandbox_gateway(&self.url, name, kind, settings)
    }

    /// Stops the sandbox and waits (at most 10 s) for it and its callback tasks.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.running.shutdown_within(Duration::from_secs(10)).await
    }
}

/// A gateway named `name` of `kind` pointed at account `name` of the sandbox at
/// `sandbox_url`, with the sandbox's default secrets, plus `settings`.
pub fn sandbox_gateway(
    sandbox_url: &str,
    name: &str,
    kind: &str,
    settings: &serde_json::Value,
) -> anyhow::Result<GatewayConfig> {
    let mut table = serde_json::json!({
        "kind": kind,
        "base_url": format!("{}/{name}", sandbox_url.trim_end_matches('/')),
        "secret_key": paygate_sandbox::DEFAULT_SECRET_KEY,
        "webhook_secret": paygate_sandbox::DEFAULT_WEBHOOK_SECRET,
    });
    if let (Some(table), Some(extra)) = (table.as_object_mut(), settings.as_object()) {
        table.extend(extra.clone());
    }
    GatewayConfig::from_json(name, table).with_context(|| format!("gateway {name}"))
}
