//! paygate-callback-dispatcher: recorded webhook events become signed merchant webhooks,
//! delivered at least once.
//!
//! ```text
//! payment / callback processor: state change + webhook event + deliveries, one PG commit
//!                                                                                    │
//!        scheduler: due deliveries, FOR UPDATE SKIP LOCKED, leased ◀── polls ────────┘
//!            │ bounded worker pool, ≤ per_endpoint_concurrency per destination
//!            ▼
//!        SSRF guard ─▶ sign (Standard Webhooks) ─▶ POST ─▶ attempt row ─▶ next state
//! ```
//!
//! - [`check_destination`] (re-exported from `paygate_core::destination`): the SSRF guard,
//!   shared with the API, which applies it at registration;
//! - [`signing`]: Standard Webhooks signatures (with rotation);
//! - the event and its delivery rows are written by whoever changes the transaction, in the
//!   same statement (`paygate_core::announce`); the dispatcher needs Postgres alone: no
//!   broker, no Redis, so webhooks flow while Kafka is down;
//! - the repository is `paygate_core::db::webhooks` (`redeliver` for the API) and
//!   `paygate_core::db::webhook_endpoints`; when an endpoint is disabled is decided here.
//!
//! Config (`[dispatcher]`): `concurrency`, `per_endpoint_concurrency`, `request_timeout_ms`,
//! `retry_schedule_secs` (one entry per attempt; the first, the delay before attempt 1, is
//! 0: deliveries are due when recorded), `jitter_percent`, `retry_after_max_secs`,
//! `disable_after_failing_secs`, `scheduler_poll_ms` (how soon a new event's deliveries are
//! seen: 20 ms); which URLs it delivers to is
//! `[destinations]` (`allow_loopback`, `allow_http`), shared with the API.

pub mod clients;
pub mod retry;
pub mod sender;
pub mod signing;

mod endpoint_policy;
mod metrics;
mod scheduler;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use paygate_core::config::Config;
use paygate_core::db::DbError;
use paygate_core::startup::{self, StartupError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use paygate_core::destination::{
    check_destination, CheckedDestination, DestinationPolicy, Refused,
};

/// A claimed delivery stays its worker's this long beyond the request timeout; after that a
/// crashed worker's delivery is claimed again.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// How often the backlog gauge is refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// No usable `[secrets]` keyring (the message names the settings, never a key).
    #[error(transparent)]
    Secrets(#[from] paygate_core::config::ConfigError),
}

/// The callback dispatcher service: [`Dispatcher::build`] then [`Dispatcher::run`].
pub struct Dispatcher {
    pool: sqlx::PgPool,
    scheduler: scheduler::Scheduler,
    /// Records the event of a terminal transaction that has none (`[recovery]`): one
    /// finished before events were recorded with the state change, or written by hand.
    heal: paygate_core::heal::HealSettings,
    /// What `/readyz` reports (registered when the dispatcher runs).
    readiness: Arc<paygate_core::ready::Readiness>,
}

impl Dispatcher {
    /// Connects to Postgres (migrating when configured). Nothing else: the work is there.
    pub async fn build(config: Config) -> Result<Self, DispatcherError> {
        let keyring = Arc::new(config.secrets.keyring()?);
        let pool = startup::postgres(&config).await?;
        let settings = &config.dispatcher;
        let wake = Arc::new(Notify::new());
        let readiness = paygate_core::ready::Readiness::postgres_only(&config, pool.clone());
        let timeout = settings.request_timeout.max(Duration::from_millis(1));
        let deliverer = Arc::new(worker::Deliverer {
            pool: pool.clone(),
            sender: sender::Sender {
                policy: DestinationPolicy::from_config(&config.destinations),
                clients: clients::Clients::new(timeout),
            },
            retry: retry::RetryPolicy::from_config(settings),
            endpoints: endpoint_policy::EndpointPolicy {
                disable_after: settings.disable_after_failing,
            },
        });
        let scheduler = scheduler::Scheduler {
            pool: pool.clone(),
            keyring,
            deliverer,
            concurrency: settings.concurrency.max(1),
            per_destination: settings.per_endpoint_concurrency.max(1),
            per_merchant: settings.per_merchant_concurrency.max(1),
            poll: settings.scheduler_poll.max(Duration::from_millis(10)),
            lease: timeout + LEASE_MARGIN,
            wake,
            shutdown_grace: timeout + Duration::from_secs(1),
        };
        Ok(Self {
            pool,
            scheduler,
            heal: paygate_core::heal::HealSettings::completed(&config.recovery),
            readiness,
        })
    }

    /// Schedules and delivers until `shutdown` is cancelled; then stops taking work, lets
    /// attempts in flight finish (up to the request timeout) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DispatcherError> {
        paygate_core::ready::register(self.readiness.clone());
        let backlog = tokio::spawn(scheduler::report_backlog(
            self.pool.clone(),
            BACKLOG_EVERY,
            shutdown.clone(),
        ));
        let healer = tokio::spawn(
            paygate_core::heal::Healer::new(self.pool.clone(), self.heal).run(shutdown.clone()),
        );
        self.scheduler.run(shutdown.clone()).await;
        shutdown.cancel();
        let _ = backlog.await;
        let _ = healer.await;
        Ok(())
    }
}
