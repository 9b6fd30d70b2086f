//! paygate-callback-processor: provider callbacks → state transitions.
//!
//! Consumes `<prefix>.callbacks.received` (authenticated by the API), parses each callback
//! again with its gateway, and settles it against the transaction under a Redis lock keyed
//! by transaction id: at most one state change per outcome, a callback log row per provider
//! event, and the merchant's webhook event with its deliveries in the same statement (the
//! dispatcher takes them from Postgres). It writes no outbox rows, so it runs no relay.
//!
//! ```text
//! callbacks.received ─▶ handle_callback ─▶ lock(txn) ─▶ one statement (group commit):
//!                                                         callback_log (unique event id)
//!                                                         UPDATE … WHERE version = $v
//!                                                         webhook_events + webhook_deliveries
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

use paygate_core::bus::{BusError, ConsumerRunner, ConsumerSettings, Topic};
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

/// The callback processor: a consumer runner over `callbacks.received`.
pub struct CallbackProcessor {
    runner: ConsumerRunner,
    handler: Arc<CallbackHandler>,
    pool: PgPool,
    /// Where the runner's wait is published for the API's admission control.
    redis: ConnectionManager,
    redis_prefix: String,
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
        let handler = Arc::new(CallbackHandler::new(
            pool.clone(),
            registry,
            redis.clone(),
            &config,
        ));
        let mut settings = ConsumerSettings::new(group_id(&config), vec![Topic::CallbacksReceived]);
        settings.concurrency = config.callbacks.concurrency;
        let runner = ConsumerRunner::new(
            &config.kafka,
            settings,
            handler.clone(),
            base.producer.clone(),
        )?;
        let readiness = base.worker_readiness(&config, runner.probe());
        Ok(Self {
            runner,
            handler,
            pool,
            redis,
            redis_prefix: config.redis.key_prefix.clone(),
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

    /// Consumes until `shutdown`, then drains running handlers and commits offsets; meanwhile
    /// publishes how long its messages wait (for the API's admission control).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        paygate_core::ready::register(self.readiness.clone());
        tracing::info!("callback processor started");
        let publishing = shutdown.child_token();
        let waits = tokio::spawn(paygate_core::pipeline_wait::publish_until(
            self.runner.wait_gauge(),
            self.redis,
            self.redis_prefix,
            self.runner.group_id().to_owned(),
            publishing.clone(),
        ));
        let consumed = self.runner.run(shutdown).await;
        publishing.cancel();
        let _ = waits.await;
        tracing::info!("callback processor stopped");
        consumed.map_err(ProcessorError::from)
    }
}
