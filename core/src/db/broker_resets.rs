//! Sightings of a broker that lost its state (`broker_resets`), shared by every process
//! through Postgres. See [`crate::bus::reset`].

use sqlx::PgExecutor;

use super::DbError;

/// Records a sighting; returns its id.
pub async fn record<'e>(db: impl PgExecutor<'e>, detected_by: &str) -> Result<i64, DbError> {
    Ok(
        sqlx::query_scalar("INSERT INTO broker_resets (detected_by) VALUES ($1) RETURNING id")
            .bind(detected_by)
            .fetch_one(db)
            .await?,
    )
}

/// The newest sighting's id (0: none yet).
pub async fn latest<'e>(db: impl PgExecutor<'e>) -> Result<i64, DbError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(max(id), 0)::bigint FROM broker_resets")
            .fetch_one(db)
            .await?,
    )
}
