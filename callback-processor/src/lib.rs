//! paygate-callback-processor: provider callbacks → state transitions.
//!
//! Consumes `<prefix>.callbacks.received` (authenticated by the API), parses each callback
//! again with its gateway, and settles it against the transaction under a Redis lock keyed
//! by transaction id: at most one state change per outcome, a callback log row per provider
//! event, and the `TransactionCompleted` event through the outbox in the same commit. Runs
//! an outbox relay too, so its completed events reach Kafka even when the API is down.
//!
//! ```text
//! callbacks.received ─▶ handle_callback ─▶ lock(txn) ─▶ BEGIN
//!                                                         callback_log (unique event id)
//!                                                         UPDATE … WHERE version = $v
//!                                                         outbox: transactions.completed
//!                                                       COMMIT ─▶ DEL cache ─▶ unlock
//! ```
//!
//! See [`decide`] for what each callback does, [`settle`] for the write.

pub mod callback_log;
pub mod decide;
pub mod handler;
pub mod refund;
pub mod settle;

use std::sync::Arc;

use paygate_core::bus::{BusError, ConsumerRunner, ConsumerSettings, OutboxRelay, Topic};
use paygate_core::config::Config;
use paygate_core::db::DbError;
use paygate_core::startup::{Foundation, StartupError, Topics};
use paygate_gateways::GatewayRegistry;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use decide::{decide, Decision, Outcome};
pub use handler::CallbackHandler;
pub use settle::{settle, settle_against, ReceivedCallback, SettleError, SettleWriter, Settled};

/// Why the processor could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Startup(#[from] StartupError),
}

/// The consumer group every callback processor instance joins.
pub fn group_id(config: &Config) -> String {
    format!("{}.callback-processor", config.kafka.group_prefix)
}

/// The callback processor: a consumer runner over `callbacks.received` and an outbox relay.
pub struct CallbackProcessor {
    runner: ConsumerRunner,
    relay: OutboxRelay,
    handler: Arc<CallbackHandler>,
    pool: PgPool,
    /// What `/readyz` reports (registered when the processor runs).
    readiness: Arc<paygate_core::ready::Readiness>,
}

impl CallbackProcessor {
    /// Connects Postgres (migrating when configured), Redis and Kafka, and creates the
    /// topics. Nothing is consumed until [`CallbackProcessor::run`].
    pub async fn build(config: Config, registry: GatewayRegistry) -> Result<Self, ProcessorError> {
        let base = Foundation::start(&config, Topics::Required).await?;
        let pool = base.pool.clone();
        let redis = ConnectionManager::new(redis::Client::open(config.redis.url.as_str())?).await?;
        let handler = Arc::new(CallbackHandler::new(pool.clone(), registry, redis, &config));
        let mut settings = ConsumerSettings::new(group_id(&config), vec![Topic::CallbacksReceived]);
        settings.concurrency = config.callbacks.concurrency;
        let runner = ConsumerRunner::new(
            &config.kafka,
            settings,
            handler.clone(),
            base.producer.clone(),
        )?;
        let readiness = base.worker_readiness(&config, runner.probe());
        let relay = base.relay();
        Ok(Self {
            runner,
            relay,
            handler,
            pool,
            readiness,
        })
    }

    /// The handler this processor runs (to settle a delivery directly).
    pub fn handler(&self) -> Arc<CallbackHandler> {
        self.handler.clone()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Consumes until `shutdown`, then drains running handlers, commits offsets and stops
    /// the relay (rows it has not published wait for the next relay).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        paygate_core::ready::register(self.readiness.clone());
        let relay_stop = shutdown.child_token();
        let relay = tokio::spawn(self.relay.run(relay_stop.clone()));
        tracing::info!("callback processor started");
        let consumed = self.runner.run(shutdown).await;
        relay_stop.cancel();
        if let Err(error) = relay.await {
            tracing::warn!(%error, "outbox relay task ended abnormally");
        }
        tracing::info!("callback processor stopped");
        consumed.map_err(ProcessorError::from)
    }
}
