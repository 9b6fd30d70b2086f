//! The group commit against the real Postgres: what queues behind a round is written in one
//! transaction per group, in order, and answered only once committed; one failing write
//! does not fail the others.

use std::time::Duration;

use futures::future::BoxFuture;
use paygate_core::db::group_commit::{GroupCommit, Write};
use paygate_core::db::DbError;
use paygate_core::testing::fresh_database;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn scratch() -> Result<PgPool, Box<dyn std::error::Error>> {
    let (pool, _) = fresh_database().await?;
    sqlx::query("CREATE TABLE gc (id int PRIMARY KEY, seq bigserial, grp uuid NOT NULL)")
        .execute(&pool)
        .await?;
    // Checked when its transaction commits, as the ledger's postings run.
    sqlx::query(
        "CREATE TABLE gc_once (v int, CONSTRAINT gc_once_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// Inserts row `id` of `group` (after `pause_ms` inside the transaction, to keep the writer
/// busy); answers `id`.
fn insert(id: i32, group: Uuid, order: &str, pause_ms: u64) -> Write<i32> {
    Write {
        group,
        order: order.to_owned(),
        statement: Box::new(
            move |conn: &mut PgConnection| -> BoxFuture<'_, Result<i32, DbError>> {
                Box::pin(async move {
                    if pause_ms > 0 {
                        sqlx::query("SELECT pg_sleep($1)")
                            .bind(pause_ms as f64 / 1000.0)
                            .execute(&mut *conn)
                            .await?;
                    }
                    sqlx::query("INSERT INTO gc (id, grp) VALUES ($1, $2)")
                        .bind(id)
                        .bind(group)
                        .execute(&mut *conn)
                        .await?;
                    Ok(id)
                })
            },
        ),
    }
}

/// A write of `group` that runs `sql` and answers -1.
fn running(group: Uuid, sql: &'static str) -> Write<i32> {
    Write {
        group,
        order: "m".to_owned(),
        statement: Box::new(
            move |conn: &mut PgConnection| -> BoxFuture<'_, Result<i32, DbError>> {
                Box::pin(async move {
                    sqlx::query(sql).execute(&mut *conn).await?;
                    Ok(-1)
                })
            },
        ),
    }
}

/// A write whose statement fails (division by zero).
fn failing(group: Uuid) -> Write<i32> {
    running(group, "SELECT 1 / 0")
}

/// A write whose statement succeeds but whose transaction cannot commit (two rows that a
/// deferred unique constraint refuses at the `COMMIT`).
fn failing_at_commit(group: Uuid) -> Write<i32> {
    running(group, "INSERT INTO gc_once (v) VALUES (1), (1)")
}

/// Writes `write` and, once answered, says whether its row is visible to another connection
/// (so whether it was committed before the answer).
fn spawn_write(
    writer: &GroupCommit<i32>,
    pool: &PgPool,
    write: Write<i32>,
) -> tokio::task::JoinHandle<Result<(i32, bool), DbError>> {
    let (writer, pool) = (writer.clone(), pool.clone());
    tokio::spawn(async move {
        let id = writer.write(write).await?;
        let visible: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM gc WHERE id = $1)")
            .bind(id)
            .fetch_one(&pool)
            .await?;
        Ok((id, visible))
    })
}

/// A writer of at most `max` per round, kept busy by a first write (row 0, group `a`) that
/// pauses 300 ms inside its transaction, so what is written next queues behind it.
async fn busy_writer(
    pool: &PgPool,
    max: usize,
) -> (
    GroupCommit<i32>,
    tokio::task::JoinHandle<Result<(i32, bool), DbError>>,
) {
    let writer = GroupCommit::start(pool.clone(), max);
    let first = spawn_write(&writer, pool, insert(0, A, "x", 300));
    tokio::time::sleep(Duration::from_millis(100)).await;
    (writer, first)
}

const A: Uuid = Uuid::from_u128(1);

async fn xmin_of(pool: &PgPool, id: i32) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT xmin::text FROM gc WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
}

#[tokio::test]
async fn writes_that_queue_behind_a_round_commit_together_per_group_in_order() -> TestResult {
    let pool = scratch().await?;
    let (a, b) = (A, Uuid::from_u128(2));
    // The writer was idle: the first write went at once, alone, and keeps it busy.
    let (writer, first) = busy_writer(&pool, 64).await;
    // These queue behind it. Group a's orders are given backwards.
    let mut queued = Vec::new();
    for (id, order) in [(1, "e"), (2, "d"), (3, "c"), (4, "b"), (5, "a")] {
        queued.push(spawn_write(&writer, &pool, insert(id, a, order, 0)));
    }
    for id in [6, 7, 8] {
        queued.push(spawn_write(
            &writer,
            &pool,
            insert(id, b, &id.to_string(), 0),
        ));
    }

    assert_eq!(first.await??, (0, true));
    for handle in queued {
        let (id, visible) = handle.await??;
        assert!(visible, "write {id} was answered before its commit");
    }
    // One transaction per group, apart from the first write's.
    let group_a = xmin_of(&pool, 1).await?;
    for id in 2..=5 {
        assert_eq!(xmin_of(&pool, id).await?, group_a, "row {id}");
    }
    let group_b = xmin_of(&pool, 6).await?;
    for id in 7..=8 {
        assert_eq!(xmin_of(&pool, id).await?, group_b, "row {id}");
    }
    assert_ne!(group_a, group_b);
    assert_ne!(xmin_of(&pool, 0).await?, group_a);
    // Group a's rows were written in its order: a (5) first, e (1) last.
    let by_seq: Vec<i32> =
        sqlx::query_scalar("SELECT id FROM gc WHERE grp = $1 AND id > 0 ORDER BY seq")
            .bind(a)
            .fetch_all(&pool)
            .await?;
    assert_eq!(by_seq, [5, 4, 3, 2, 1]);
    Ok(())
}

/// Writes rows 1 and 2 of group `A` with `bad` queued between them behind a busy round,
/// checks that the round's other writes were written and answered after their commit, and
/// answers the bad write's error.
async fn round_with_a_bad_write(
    pool: &PgPool,
    bad: Write<i32>,
) -> Result<String, Box<dyn std::error::Error>> {
    let (writer, first) = busy_writer(pool, 64).await;
    let one = spawn_write(&writer, pool, insert(1, A, "a", 0));
    let bad = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.write(bad).await })
    };
    let two = spawn_write(&writer, pool, insert(2, A, "z", 0));

    assert_eq!(first.await??, (0, true));
    assert_eq!(one.await??, (1, true));
    assert_eq!(two.await??, (2, true));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM gc")
        .fetch_one(pool)
        .await?;
    assert_eq!(rows, 3);
    match bad.await? {
        Err(error) => Ok(error.to_string()),
        Ok(answer) => Err(format!("the bad write answered {answer}").into()),
    }
}

#[tokio::test]
async fn a_failing_write_fails_alone_and_the_rest_of_its_group_is_written() -> TestResult {
    let pool = scratch().await?;
    let error = round_with_a_bad_write(&pool, failing(A)).await?;
    assert!(error.contains("division by zero"), "{error}");
    Ok(())
}

/// A refusal that comes only at the `COMMIT` (a deferred trigger, as the ledger's postings
/// are) is read as nothing written: each write of the group goes again alone, and only the
/// bad one fails, with the server's reason.
#[tokio::test]
async fn a_write_refused_at_commit_fails_alone_and_the_rest_of_its_group_is_written() -> TestResult
{
    let pool = scratch().await?;
    let error = round_with_a_bad_write(&pool, failing_at_commit(A)).await?;
    assert!(error.contains("gc_once_v"), "{error}");
    let once: i64 = sqlx::query_scalar("SELECT count(*) FROM gc_once")
        .fetch_one(&pool)
        .await?;
    assert_eq!(once, 0);
    Ok(())
}

#[tokio::test]
async fn a_writer_whose_round_is_capped_takes_the_rest_next_round() -> TestResult {
    let pool = scratch().await?;
    let a = A;
    // Two writes per round: the four queued go as two transactions of two.
    let (writer, first) = busy_writer(&pool, 2).await;
    let mut queued = Vec::new();
    for id in 1..=4 {
        queued.push(spawn_write(
            &writer,
            &pool,
            insert(id, a, &id.to_string(), 0),
        ));
        // In order of arrival, so the rounds are (1, 2) and (3, 4).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.await??;
    for handle in queued {
        handle.await??;
    }
    let xmins = [
        xmin_of(&pool, 1).await?,
        xmin_of(&pool, 2).await?,
        xmin_of(&pool, 3).await?,
        xmin_of(&pool, 4).await?,
    ];
    assert_eq!(xmins[0], xmins[1]);
    assert_eq!(xmins[2], xmins[3]);
    assert_ne!(xmins[1], xmins[2]);
    Ok(())
}
