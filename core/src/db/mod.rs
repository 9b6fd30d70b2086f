//! Postgres access: the pool, the embedded migrations, and one repository module per table
//! family. Queries are checked by the integration tests against the real database.

pub mod activity;
pub mod broker_resets;
pub mod coalesce;
pub mod console_users;
pub mod deployment;
pub mod group_commit;
pub mod heal;
pub mod history;
pub mod ledger;
pub mod merchants;
pub mod outbox;
pub mod refunds;
pub mod review;
pub mod timeline;
pub mod transactions;
pub mod webhook_endpoints;
pub mod webhooks;

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseConfig;

/// The schema, embedded in every binary so `paygate migrate` and service start-up need no
/// files on disk.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// What can go wrong talking to Postgres, or reading back a row that no longer parses.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value that the domain refuses: a bug or a hand edit, never user input.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// A sealed secret that does not open (clear, unknown key, altered, another row's):
    /// never read as a secret. Names the row, never the value.
    #[error("unreadable secret in {table} row {row}: {source}")]
    Secret {
        table: &'static str,
        row: uuid::Uuid,
        #[source]
        source: crate::keyring::SealError,
    },
    /// The database belongs to another deployment (see [`deployment`]).
    #[error("this database belongs to the deployment with kafka.topic_prefix {theirs:?}, not {ours:?}: give each deployment its own database (PAYGATE_DATABASE_URL) or the same topic prefix (PAYGATE_KAFKA_TOPIC_PREFIX)")]
    OtherDeployment { ours: String, theirs: String },
    /// A write given to a [`group_commit::GroupCommit`] got no answer it can act on (its
    /// group's commit failed, or the writer stopped): retry it on a fresh read.
    #[error("group commit: {0}")]
    GroupCommit(String),
    /// A webhook event that cannot be built (a status merchants are not told of, a body
    /// that does not serialise): a bug, never input.
    #[error("webhook event: {0}")]
    Event(String),
}

/// Opens a pool (lazily: the first query connects), sized from config.
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let pool = pool_options(config)
        .connect_with(connect_options(&config.url)?)
        .await?;
    Ok(pool)
}

/// The URL's connection settings, with this program's name (`paygate-api`, …) as the
/// connections' `application_name` unless the URL names one. Why: an operator's
/// `pg_stat_activity` then says which service holds a connection or runs a statement, and
/// `paygate bench` charges Postgres's CPU to the service whose statements it ran.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(url)?;
    if options.get_application_name().is_some() {
        return Ok(options);
    }
    Ok(match program_name() {
        Some(name) => options.application_name(&name),
        None => options,
    })
}

/// This executable's file name, without a directory or an extension.
fn program_name() -> Option<String> {
    let path = std::env::args_os().next()?;
    let stem = std::path::Path::new(&path).file_stem()?;
    Some(stem.to_string_lossy().into_owned())
}

/// The pool's settings. A connection is pinged before use only when it has been idle for
/// `ping_after_idle` (sqlx's `before_acquire` hook): one in steady use has just answered a
/// statement, so a ping would only add a round trip to every statement.
pub fn pool_options(config: &DatabaseConfig) -> PgPoolOptions {
    let ping_after_idle = config.ping_after_idle;
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(move |connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= ping_after_idle {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
}

/// Applies every migration not yet applied. Safe to run from several processes at once:
/// sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// A CTE that lets the statement's database transaction commit without waiting for its WAL
/// flush (`set_config(…, true)` is `SET LOCAL` for that transaction, implicit or not; as a
/// CTE it costs no round trip of its own). A statement takes effect of it by referring to
/// `relaxed` (a CTE nobody reads is not run). Only for writes whose loss in a Postgres crash
/// causes a *repeat* that is already handled, never a lost effect: stamping outbox rows as
/// published (lost → published again; consumers are idempotent), a webhook delivery's lease
/// and result (lost → delivered again with the same `webhook-id`). Money state, idempotency
/// keys, outbox rows and recorded webhook events always commit durably.
///
/// Why: the pipeline is bound by WAL flushes on a small machine (BENCHMARKS.md), and these
/// bookkeeping commits were almost half of them.
pub const RELAXED: &str =
    "relaxed AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true) AS setting)";
