//! What every paygate service does when it starts, in one place: connect to Postgres
//! (applying the migrations when `database.migrate_on_start`), claim the database for this
//! deployment (one database, one deployment: [`db::deployment`]), make sure the Kafka topics
//! exist, create the producer, and hand out the outbox relay (`[outbox]`) and a worker's
//! readiness. The API, the payment processor, the callback processor, the callback
//! dispatcher and `paygate dev` all start with [`Foundation::start`]; logging and the
//! metrics exporter of a service process are [`crate::service::run`]'s.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use crate::bus::{self, BusError, ConsumerProbe, OutboxRelay, Producer, RelaySettings};
use crate::config::{Config, DatabaseConfig, KafkaConfig};
use crate::db::{self, DbError};
use crate::ready::Readiness;

/// Why a service could not start; each step says which (`paygate dev` words its hints by it).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Postgres could not be reached (or refused the connection).
    #[error(transparent)]
    Connect(DbError),
    /// The embedded migrations did not apply.
    #[error(transparent)]
    Migrate(DbError),
    /// The database belongs to another deployment, or its claim could not be read.
    #[error(transparent)]
    Deployment(DbError),
    /// The topics could not be created or found.
    #[error(transparent)]
    Topics(BusError),
    /// The Kafka producer could not be created (a configuration librdkafka refuses).
    #[error(transparent)]
    Producer(BusError),
}

/// What to do when the topics cannot be ensured at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topics {
    /// Fail the start (the workers: they cannot consume without them).
    Required,
    /// Wait at most this long, then start degraded and say so (the API: payments are
    /// committed with their outbox rows and wait for the broker).
    BestEffort(Duration),
}

/// The connections and settings every service starts from.
pub struct Foundation {
    pub pool: PgPool,
    /// The process's producer: the outbox relay's, the consumer runner's dead letters.
    pub producer: Producer,
    /// `[outbox]`, as the relay takes it.
    pub relay: RelaySettings,
    /// Whether the topics are known to exist (`false` only after a degraded
    /// [`Topics::BestEffort`] start; the service then keeps trying).
    pub topics_ready: bool,
}

impl Foundation {
    /// Connects, migrates when configured, ensures the topics and creates the producer.
    pub async fn start(config: &Config, topics: Topics) -> Result<Self, StartupError> {
        let pool = postgres(config).await?;
        let topics_ready = ensure_topics(&config.kafka, topics).await?;
        let producer = Producer::new(&config.kafka).map_err(StartupError::Producer)?;
        Ok(Self {
            pool,
            producer,
            relay: config.outbox.relay_settings(),
            topics_ready,
        })
    }

    /// An outbox relay on this pool and producer (every service that writes outbox rows
    /// runs one, so its events reach Kafka even when the others are down).
    pub fn relay(&self) -> OutboxRelay {
        OutboxRelay::new(self.pool.clone(), self.producer.clone(), self.relay)
    }

    /// A worker's `/readyz` (Postgres, Redis, the producer and its consumer), to register
    /// with [`crate::ready::register`] when it runs.
    pub fn worker_readiness(&self, config: &Config, consumer: ConsumerProbe) -> Arc<Readiness> {
        Readiness::for_worker(config, self.pool.clone(), self.producer.clone(), consumer)
    }
}

/// Postgres alone, for a service that needs nothing else (the dispatcher): a pool on
/// `database.url`, migrated when configured, and claimed for this deployment.
pub async fn postgres(config: &Config) -> Result<PgPool, StartupError> {
    let pool = open_database(&config.database).await?;
    db::deployment::claim(&pool, &config.kafka.topic_prefix)
        .await
        .map_err(StartupError::Deployment)?;
    Ok(pool)
}

/// A pool on `database.url`, migrated when `database.migrate_on_start`.
async fn open_database(config: &DatabaseConfig) -> Result<PgPool, StartupError> {
    let pool = db::connect(config).await.map_err(StartupError::Connect)?;
    if config.migrate_on_start {
        db::migrate(&pool).await.map_err(StartupError::Migrate)?;
    }
    Ok(pool)
}

/// Whether the topics exist after trying as `mode` says.
async fn ensure_topics(kafka: &KafkaConfig, mode: Topics) -> Result<bool, StartupError> {
    match mode {
        Topics::Required => {
            bus::ensure_topics(kafka)
                .await
                .map_err(StartupError::Topics)?;
            Ok(true)
        }
        Topics::BestEffort(within) => {
            match tokio::time::timeout(within, bus::ensure_topics(kafka)).await {
                Ok(Ok(())) => return Ok(true),
                Ok(Err(error)) => {
                    tracing::error!(%error, "could not ensure Kafka topics; starting degraded")
                }
                Err(_) => tracing::error!(
                    "Kafka did not answer topic creation in time; starting degraded"
                ),
            }
            Ok(false)
        }
    }
}
