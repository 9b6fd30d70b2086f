//! paygate-core: what two or more paygate services share.
//!
//! - [`domain`]: money, ids, the transaction and its state machine;
//! - [`config`]: the one typed configuration;
//! - [`db`]: Postgres pool, migrations and repositories;
//! - [`destination`]: the SSRF guard for webhook destinations (API and dispatcher);
//! - [`bus`]: Kafka producer, topic admin, the consumer runner, protobuf events;
//! - [`gateway_health`]: breakers published by the processors, attempt statistics;
//! - [`keyring`]: webhook signing secrets sealed at rest (AES-256-GCM, key rotation);
//! - [`lock`]: the Redis lease lock (an efficiency measure; versions are the guarantee);
//! - [`startup`]: what every service does when it starts (Postgres, migrations, topics,
//!   producer, outbox relay, readiness);
//! - [`telemetry`]: tracing set-up.

pub mod announce;
pub mod bus;
pub mod cache_keys;
pub mod config;
pub mod db;
pub mod destination;
pub mod domain;
pub mod gateway_health;
pub mod heal;
pub mod instance_reports;
pub mod keyring;
pub mod lock;
pub mod pipeline_wait;
pub mod ready;
pub mod resolution;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod startup;
pub mod telemetry;

#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
pub mod testing_broker;
