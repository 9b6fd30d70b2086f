//! Test support (feature `testing`): throw-away databases and unique names, so every
//! integration test runs against the real Postgres, Redis and Kafka without seeing another
//! test's state.
//!
//! The suites reach this through the one test kit, `paygate-testkit`
//! (`paygate_testkit::config`), which adds the services and the sandbox admin client; it stays
//! here for core's own tests, which the kit (depending on core) cannot serve.

use sqlx::{Connection, Executor, PgConnection, PgPool};

use crate::config::{Config, KafkaConfig};
use crate::db;

/// Server URL used to create test databases; override with `PAYGATE_TEST_DATABASE_URL`.
pub fn admin_database_url() -> String {
    std::env::var("PAYGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A short unique name: `<stem>_<12 hex>`.
pub fn unique_name(stem: &str) -> String {
    format!(
        "{stem}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A fresh, migrated database named `pgt_…` on the test server. Databases are left behind
/// (dropping needs every pooled connection gone); `scripts/test` drops them before a run.
pub async fn fresh_database() -> Result<(PgPool, String), db::DbError> {
    let admin_url = admin_database_url();
    let name = unique_name("pgt");
    let mut admin = PgConnection::connect(&admin_url).await?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    admin.close().await?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .unwrap_or(admin_url);
    let url = format!("{base}/{name}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await?;
    db::migrate(&pool).await?;
    Ok((pool, url))
}

/// The default Kafka settings with unique topic and group prefixes (`pgt_…`) and `partitions`
/// per topic. Brokers come from `PAYGATE_KAFKA_BROKERS` when set.
pub fn isolated_kafka(partitions: i32) -> KafkaConfig {
    let mut kafka = Config::default().kafka;
    kafka.topic_prefix = unique_name("pgt");
    kafka.group_prefix = kafka.topic_prefix.clone();
    kafka.partitions = partitions;
    if let Ok(brokers) = std::env::var("PAYGATE_KAFKA_BROKERS") {
        kafka.brokers = brokers;
    }
    kafka
}

/// The default config pointed at a fresh database, a unique Redis prefix and unique Kafka
/// topic and group prefixes. Brokers come from `PAYGATE_KAFKA_BROKERS` when set.
pub async fn isolated_config() -> Result<(Config, PgPool), db::DbError> {
    let (pool, url) = fresh_database().await?;
    let mut config = Config::default();
    config.database.url = url;
    // The public development key: tests seal webhook secrets like every deployment.
    config.secrets = crate::config::SecretsConfig::insecure_dev();
    config.redis.key_prefix = unique_name("pgt");
    config.kafka = isolated_kafka(2);
    if let Ok(redis) = std::env::var("PAYGATE_REDIS_URL") {
        config.redis.url = redis;
    }
    Ok((config, pool))
}

/// A pending deposit of `minor_units` in `currency` for `merchant`, stored with its outbox
/// row as the API stores one: the starting point of every test of what happens to a payment
/// after it was accepted.
pub async fn stored_deposit(
    pool: &PgPool,
    merchant: crate::domain::MerchantId,
    minor_units: i64,
    currency: &str,
) -> Result<crate::domain::Transaction, Box<dyn std::error::Error>> {
    use crate::domain::{CustomerReference, Money, NewTransaction, Transaction, TransactionKind};
    let tx = Transaction::create(
        NewTransaction {
            merchant_id: merchant,
            kind: TransactionKind::Deposit,
            money: Money::from_parts(minor_units, currency)?,
            customer: CustomerReference::parse("cust_1")?,
            gateway: None,
            callback_url: None,
            metadata: serde_json::json!({}),
        },
        chrono::Utc::now(),
    );
    let announcement = db::outbox::OutboxMessage {
        topic: crate::bus::Topic::TransactionsPending,
        key: tx.id.to_string(),
        payload: b"event".to_vec(),
        headers: Default::default(),
    };
    db::transactions::insert(pool, &tx, None, &announcement).await?;
    Ok(tx)
}
