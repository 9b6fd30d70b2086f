//! One database, one deployment. Outbox rows carry topic names without the deployment's
//! prefix, and every relay claims any unpublished row; two deployments writing to one
//! database (a `paygate dev` and a `scripts/up` with different `kafka.topic_prefix`, a
//! staging stack pointed at production's database) would publish each other's payments to
//! their own brokers. So the first process to start claims the database for its topic
//! prefix, and a process of another deployment refuses to start, naming both.

use sqlx::PgExecutor;

use super::DbError;

/// Claims the database for the deployment named by `topic_prefix`, or says who has it.
pub async fn claim<'e>(db: impl PgExecutor<'e>, topic_prefix: &str) -> Result<(), DbError> {
    let owner: String = sqlx::query_scalar(
        "WITH claimed AS (
             INSERT INTO deployment (topic_prefix) VALUES ($1)
             ON CONFLICT (singleton) DO NOTHING RETURNING topic_prefix)
         SELECT topic_prefix FROM claimed
         UNION ALL SELECT topic_prefix FROM deployment
         LIMIT 1",
    )
    .bind(topic_prefix)
    .fetch_one(db)
    .await?;
    if owner == topic_prefix {
        return Ok(());
    }
    Err(DbError::OtherDeployment {
        ours: topic_prefix.to_owned(),
        theirs: owner,
    })
}
