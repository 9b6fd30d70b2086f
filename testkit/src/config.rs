//! Isolated configuration: every test gets its own database, Redis key prefix and Kafka
//! topic and group prefixes, so tests run in parallel against the shared Postgres, Redis and
//! broker without seeing each other's state.
//!
//! The database logic stays in `paygate_core::testing` (feature `testing`), because core's
//! own tests (which this kit, depending on core, cannot serve) use it too; this module is
//! the one entry point for everything else. Databases are named `pgt_…` and left behind;
//! `scripts/test` drops them before a run.

use anyhow::Context;
use paygate_core::config::Config;
use sqlx::PgPool;

pub use paygate_core::testing::{admin_database_url, fresh_database, unique_name};
pub use paygate_core::testing_broker::{tansu_binary, TestBroker};

/// The default config on a fresh, migrated database, a unique Redis prefix and unique Kafka
/// topic and group prefixes (brokers from `PAYGATE_KAFKA_BROKERS`, Redis from
/// `PAYGATE_REDIS_URL` when set), and a pool on that database.
pub async fn isolated_config() -> anyhow::Result<(Config, PgPool)> {
    paygate_core::testing::isolated_config()
        .await
        .with_context(|| format!("isolated config on {}", admin_database_url()))
}

/// The keyring of a configuration (the tests' is the public development key, set by
/// [`isolated_config`]): what a test needs to write or read webhook secrets directly.
pub fn keyring(config: &Config) -> anyhow::Result<paygate_core::keyring::Keyring> {
    config
        .secrets
        .keyring()
        .context("the test configuration's [secrets] keyring")
}

/// Lets webhook destinations be `http://127.0.0.1:…` (`allow_loopback`, `allow_http`), as
/// `paygate dev` does: tests' receivers listen on loopback.
pub fn allow_loopback(config: &mut Config) {
    config.destinations.allow_loopback = true;
    config.destinations.allow_http = true;
}
