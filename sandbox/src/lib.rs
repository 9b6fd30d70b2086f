//! paygate-sandbox: a stand-in for the third-party payment providers, speaking all three
//! built-in protocols (JSON like Paystack, SOAP 1.1, protobuf over HTTP) with
//! fault-injection knobs, for development, tests and benchmarks.
//!
//! - Every provider path starts with an **account**: the paygate gateway name. A gateway
//!   configured with `base_url = "http://<sandbox>/<name>"` talks to its own account, and the
//!   sandbox sends that account's callbacks to `{callback_base_url}/callbacks/<name>`.
//! - A payment is executed at most once per (account, reference); repeats are answered
//!   from the record (or refused as `duplicate_reference`, see
//!   `duplicate_reference_status`) and counted as `duplicates_suppressed`. The same
//!   reference executed by a second account is counted as `executed_elsewhere`: the double
//!   payment paygate must never cause. `GET /_admin/references/{reference}` shows what every
//!   account did with one reference.
//! - Knobs and stats: see [`admin`] for the HTTP API and the knob table, [`knobs::Knobs`]
//!   for every knob, [`admin_client::AdminClient`] for a typed client.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use paygate_sandbox::{Sandbox, SandboxSettings};
//! let sandbox = Sandbox::build(SandboxSettings::default()).await?;
//! println!("providers at {}", sandbox.base_url());
//! sandbox.run(tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

pub mod admin;
pub mod admin_client;
mod delivery;
pub mod emulators;
mod engine;
pub mod knobs;
mod providers;
pub mod references;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use paygate_gateways::Secret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineSettings};
pub use crate::knobs::{Knobs, KnobsReport, Stats, StatsReport};
pub use crate::references::{ExecutionReport, Outcome, ReferenceReport};

/// The sandbox's own settings (not paygate's `Config`).
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// paygate's callback ingress root; callbacks go to `{this}/callbacks/{account}`.
    pub callback_base_url: String,
    /// What clients must present (bearer token / SOAP `ApiKey`): a gateway's `secret_key`.
    pub secret_key: Secret,
    /// What callbacks are signed with: a gateway's `webhook_secret`.
    pub webhook_secret: Secret,
    /// Initial global knobs.
    pub knobs: Knobs,
}

pub const DEFAULT_SECRET_KEY: &str = "sk_sandbox";
pub const DEFAULT_WEBHOOK_SECRET: &str = "whsec_sandbox";

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            callback_base_url: "http://127.0.0.1:8080".into(),
            secret_key: Secret::new(DEFAULT_SECRET_KEY),
            webhook_secret: Secret::new(DEFAULT_WEBHOOK_SECRET),
            knobs: Knobs::default(),
        }
    }
}

/// Command-line / environment settings of the `paygate-sandbox` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "paygate-sandbox",
    about = "Fake payment providers (JSON, SOAP, protobuf) for paygate"
)]
pub struct SandboxArgs {
    #[arg(long, env = "SANDBOX_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    #[arg(
        long,
        env = "SANDBOX_CALLBACK_BASE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub callback_base_url: String,
    #[arg(long, env = "SANDBOX_SECRET_KEY", default_value = DEFAULT_SECRET_KEY, hide_env_values = true)]
    pub secret_key: String,
    #[arg(long, env = "SANDBOX_WEBHOOK_SECRET", default_value = DEFAULT_WEBHOOK_SECRET, hide_env_values = true)]
    pub webhook_secret: String,
    /// Initial knobs as a JSON object (see the admin API), e.g. '{"decline_rate":0.1}'.
    #[arg(long, env = "SANDBOX_KNOBS", default_value = "{}")]
    pub knobs: String,
}

impl SandboxArgs {
    pub fn into_settings(self) -> anyhow::Result<SandboxSettings> {
        let patch: serde_json::Value = serde_json::from_str(&self.knobs)
            .map_err(|e| anyhow::anyhow!("SANDBOX_KNOBS is not JSON: {e}"))?;
        let knobs = Knobs::default()
            .patched(&patch)
            .map_err(|e| anyhow::anyhow!("SANDBOX_KNOBS: {e}"))?;
        Ok(SandboxSettings {
            listen: self.listen,
            callback_base_url: self.callback_base_url,
            secret_key: Secret::new(self.secret_key),
            webhook_secret: Secret::new(self.webhook_secret),
            knobs,
        })
    }
}

/// A bound, not yet serving sandbox.
pub struct Sandbox {
    listener: TcpListener,
    addr: SocketAddr,
    engine: Arc<Engine>,
}

impl Sandbox {
    /// Binds the listener (so the port is known before serving).
    pub async fn build(settings: SandboxSettings) -> anyhow::Result<Self> {
        settings.knobs.validate().map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(settings.listen).await?;
        let addr = listener.local_addr()?;
        let engine = Arc::new(Engine::new(EngineSettings {
            callback_base_url: settings.callback_base_url,
            secret_key: settings.secret_key,
            webhook_secret: settings.webhook_secret,
            knobs: settings.knobs,
        })?);
        Ok(Self {
            listener,
            addr,
            engine,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (the admin API root; gateways append `/<account>`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gateway's `base_url` for `account`.
    pub fn account_url(&self, account: &str) -> String {
        format!("{}/{account}", self.base_url())
    }

    pub fn stats(&self) -> StatsReport {
        self.engine.stats()
    }

    /// Serves until `shutdown`, then cancels pending callbacks and hung requests.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let engine = Arc::clone(&self.engine);
        tracing::info!(addr = %self.addr, "sandbox providers listening");
        let served = axum::serve(self.listener, router(Arc::clone(&engine)))
            .with_graceful_shutdown({
                let engine = Arc::clone(&engine);
                async move {
                    shutdown.cancelled().await;
                    engine.shutdown.cancel();
                }
            })
            .await;
        engine.shutdown.cancel();
        engine.tasks.close();
        engine.tasks.wait().await;
        Ok(served?)
    }

    /// Spawns [`Sandbox::run`] on the current runtime.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        tokio::spawn(self.run(shutdown))
    }
}

fn router(engine: Arc<Engine>) -> Router {
    use axum::routing::MethodRouter;
    let account_knobs: MethodRouter<Arc<Engine>> = get(admin::get_account_knobs)
        .put(admin::put_account_knobs)
        .patch(admin::patch_account_knobs)
        .delete(admin::delete_account_knobs);
    Router::new()
        .route("/_admin/health", get(admin::health))
        .route(
            "/_admin/knobs",
            get(admin::get_knobs)
                .put(admin::put_knobs)
                .patch(admin::patch_knobs),
        )
        .route("/_admin/accounts/{account}/knobs", account_knobs)
        .route("/_admin/stats", get(admin::stats))
        .route(
            "/_admin/accounts/{account}/stats",
            get(admin::account_stats),
        )
        .route("/_admin/reset", post(admin::reset))
        .route("/_admin/references/{reference}", get(admin::reference))
        .route(
            "/{account}/transaction/charge",
            post(providers::json_charge),
        )
        .route("/{account}/transfer", post(providers::json_transfer))
        .route("/{account}/refund", post(providers::json_refund))
        .route(
            "/{account}/transaction/verify/{reference}",
            get(providers::json_verify),
        )
        .route(
            "/{account}/transfer/verify/{reference}",
            get(providers::json_verify),
        )
        .route("/{account}/soap", post(providers::soap))
        .route("/{account}/v1/payments", post(providers::proto_submit))
        .route(
            "/{account}/v1/payments/{reference}",
            get(providers::proto_status),
        )
        .merge(emulators::routes())
        .with_state(engine)
}
