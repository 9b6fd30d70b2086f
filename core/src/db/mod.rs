//! Postgres access: the pool, the embedded migrations, and one repository module per table
//! family. Queries are checked by the integration tests against the real database.

pub mod merchants;
pub mod outbox;
pub mod transactions;
pub mod webhook_deliveries;
pub mod webhook_endpoints;

use sqlx::postgres::PgPoolOptions;
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
}

/// Opens a pool (lazily: the first query connects), sized from config.
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout())
        .connect(&config.url)
        .await?;
    Ok(pool)
}

/// Applies every migration not yet applied. Safe to run from several processes at once:
/// sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
