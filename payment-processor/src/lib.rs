//! paygate-payment-processor: consumes `transactions.pending` and gets each transaction
//! executed by a provider at most once, through outages, timeouts and crashes.
//!
//! - [`handler`]: the Kafka consumer side (bounded worker pool of the core consumer runner);
//! - [`attempt`]: claim under the lock with a version check, route, call through the
//!   breaker, record the outcome;
//! - [`refund`]: one provider call for a refund (announced on the same topic);
//! - [`breakers`]: this instance's circuit breakers published to Redis for the console;
//! - [`routing`]: explicit gateway or rules, failover order;
//! - [`backoff`]: exponential backoff with full jitter;
//! - [`scheduler`]: due retries re-enqueued from Postgres, stuck transactions reconciled
//!   (with bounded concurrency, on a loop of its own).

pub mod attempt;
pub mod backoff;
pub mod breakers;
mod handler;
pub mod reconcile;
pub mod refund;
pub mod routing;
pub mod scheduler;
pub mod status_step;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use paygate_core::bus::{self, ConsumerRunner, ConsumerSettings, OutboxRelay, Topic};
use paygate_core::config::Config;
use paygate_core::db;
use paygate_core::lock::RedisLock;
use paygate_core::pipeline_wait;
use paygate_core::startup::{Foundation, StartupError, Topics};
use paygate_gateways::GatewayRegistry;
use tokio_util::sync::CancellationToken;

use crate::attempt::{Engine, Settings};
use crate::backoff::Backoff;
use crate::routing::Router;
use crate::scheduler::SchedulerSettings;
use crate::status_step::AskPacing;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    #[error(transparent)]
    Lock(#[from] paygate_core::lock::LockError),
    #[error(transparent)]
    Routes(#[from] routing::RouteConfigError),
    #[error(transparent)]
    Startup(#[from] StartupError),
}

/// The payment processor service, built and ready to run.
pub struct PaymentProcessor {
    engine: Arc<Engine>,
    consumer: ConsumerRunner,
    relay: OutboxRelay,
    scheduler: SchedulerSettings,
    pool: sqlx::PgPool,
    /// Re-announces `pending` transactions nobody claimed (`[recovery]`).
    heal: paygate_core::heal::HealSettings,
    /// What `/readyz` reports (registered when the processor runs).
    readiness: std::sync::Arc<paygate_core::ready::Readiness>,
}

impl PaymentProcessor {
    /// Connects to Postgres, Redis and Kafka, applies migrations (if configured), creates
    /// topics, and joins the consumer group.
    pub async fn build(config: Config, registry: GatewayRegistry) -> Result<Self, ProcessorError> {
        let base = Foundation::start(&config, Topics::Required).await?;
        let pool = base.pool.clone();
        let lock = RedisLock::connect(&config.redis.url, config.redis.key_prefix.clone()).await?;
        let cache = redis::Client::open(config.redis.url.as_str())
            .map_err(paygate_core::lock::LockError::from)?
            .get_connection_manager()
            .await
            .map_err(paygate_core::lock::LockError::from)?;
        let router = Router::new(
            &config.processor.routes,
            registry.names().cloned().collect(),
        )?;
        let p = &config.processor;
        let registry_reconcile = registry.shortest_reconcile_after(p.stuck_after);
        let engine = Arc::new(Engine {
            pool: pool.clone(),
            store: Store::start(pool.clone(), p.batch_max),
            registry,
            router,
            lock,
            cache: Some(cache),
            cache_prefix: config.redis.key_prefix.clone(),
            settings: Settings {
                lock_ttl: p.lock_ttl,
                lock_wait: p.lock_wait,
                backoff: Backoff {
                    base: p.retry_base,
                    cap: p.retry_cap,
                },
                max_attempts: p.max_attempts,
                breaker_deferral: p.breaker_deferral,
                max_retry_after: p.max_retry_after,
                unresolved_after: p.unresolved_after,
                reconcile_horizon: p.reconcile_horizon,
                stuck_after: p.stuck_after,
                pacing: AskPacing {
                    min: p.status_check_min,
                    max: p.status_check_max,
                },
            },
        });
        let mut settings = ConsumerSettings::new(
            format!("{}.payment-processor", config.kafka.group_prefix),
            vec![Topic::TransactionsPending],
        );
        settings.concurrency = p.concurrency;
        let consumer = ConsumerRunner::new(
            &config.kafka,
            settings,
            Arc::new(handler::PendingHandler {
                engine: engine.clone(),
            }),
            base.producer.clone(),
        )?;
        let readiness = base.worker_readiness(&config, consumer.probe());
        let relay = base.relay();
        let scheduler = SchedulerSettings {
            poll: p.scheduler_poll,
            batch: p.scheduler_batch,
            requeue_after: p.lock_ttl.saturating_mul(2).max(Duration::from_secs(10)),
            // The scan takes the shortest gateway bound; each gateway's own is checked per row.
            stuck_after: registry_reconcile,
            reconcile_concurrency: p.concurrency.clamp(1, scheduler::MAX_RECONCILE_CONCURRENCY),
        };
        Ok(Self {
            engine,
            consumer,
            relay,
            scheduler,
            pool,
            heal: paygate_core::heal::HealSettings::pending(&config.recovery),
            readiness,
        })
    }

    /// The attempt engine (tests drive it directly).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// Runs the consumer, the retry scheduler, the pending healer, an outbox relay and the
    /// publishers of its breakers and of its messages' wait (for the API's admission control)
    /// until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        paygate_core::ready::register(self.readiness.clone());
        let scheduler = tokio::spawn(scheduler::run(
            self.pool.clone(),
            self.engine.clone(),
            self.scheduler,
            shutdown.clone(),
        ));
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        let healer = tokio::spawn(
            paygate_core::heal::Healer::new(self.pool.clone(), self.heal).run(shutdown.clone()),
        );
        let publisher = self.engine.cache.clone().map(|redis| {
            tokio::spawn(breakers::run(
                self.engine.clone(),
                redis,
                self.engine.cache_prefix.clone(),
                shutdown.clone(),
            ))
        });
        let waits = self.engine.cache.clone().map(|redis| {
            tokio::spawn(pipeline_wait::publish_until(
                self.consumer.wait_gauge(),
                redis,
                self.engine.cache_prefix.clone(),
                self.consumer.group_id().to_owned(),
                shutdown.clone(),
            ))
        });
        let consumed = self.consumer.run(shutdown.clone()).await;
        shutdown.cancel();
        for publisher in [publisher, waits].into_iter().flatten() {
            let _ = publisher.await;
        }
        let _ = healer.await;
        let _ = scheduler.await;
        let _ = relay.await;
        consumed?;
        Ok(())
    }
}
