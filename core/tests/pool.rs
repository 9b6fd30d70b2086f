//! The pool pings a connection only after it sat idle (`database.ping_after_idle_ms`): a
//! connection that died while in steady use fails one statement and is then replaced;
//! one that died while idle longer than the setting is caught by the ping.

use std::time::Duration;

use paygate_core::config::Config;
use paygate_core::db;
use paygate_core::testing::{admin_database_url, fresh_database};
use sqlx::{Connection, PgConnection, PgPool};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A pool of one connection on a fresh database, pinging after `ping_after_idle`.
async fn pool(ping_after_idle: Duration) -> Result<PgPool, Box<dyn std::error::Error>> {
    let (_, url) = fresh_database().await?;
    let mut config = Config::default().database;
    config.url = url;
    config.max_connections = 1;
    config.ping_after_idle = ping_after_idle;
    Ok(db::pool_options(&config).connect(&config.url).await?)
}

/// Ends the pool's one server session from outside, as a server restart or a proxy would.
async fn kill_the_connection(pool: &PgPool) -> TestResult {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await?;
    let mut admin = PgConnection::connect(&admin_database_url()).await?;
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(backend)
        .fetch_one(&mut admin)
        .await?;
    admin.close().await?;
    assert!(ended);
    // The server side closes the socket; give the client a moment to see it closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

#[tokio::test]
async fn a_connection_in_steady_use_is_not_pinged_and_a_dead_one_is_replaced() -> TestResult {
    let pool = pool(Duration::from_secs(3_600)).await?;
    kill_the_connection(&pool).await?;
    // No ping: the dead connection is handed out and its statement fails...
    let first = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&pool)
        .await;
    assert!(first.is_err(), "{first:?}");
    // ...and it is not handed out again: the next statement gets a new connection.
    let second: i32 = sqlx::query_scalar("SELECT 2").fetch_one(&pool).await?;
    assert_eq!(second, 2);
    Ok(())
}

#[tokio::test]
async fn a_connection_idle_past_the_setting_is_pinged_first() -> TestResult {
    let pool = pool(Duration::ZERO).await?;
    kill_the_connection(&pool).await?;
    // The ping finds it dead and the pool opens another: the statement never sees it.
    let answer: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
    assert_eq!(answer, 1);
    Ok(())
}

/// Connections name the program that opened them (`application_name`), so `pg_stat_activity`
/// and the bench's CPU split say which service a backend serves; a name in the URL wins.
#[tokio::test]
async fn connections_are_named_for_the_program_unless_the_url_names_them() -> TestResult {
    let (_, url) = fresh_database().await?;
    let mut config = Config::default().database;
    config.url = url.clone();
    let pool = db::connect(&config).await?;
    let named: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&pool)
        .await?;
    let program = std::env::current_exe()?;
    let program = program
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("the test binary has a name")?;
    assert_eq!(named, program);

    config.url = format!("{url}?application_name=operator-chosen");
    let pool = db::connect(&config).await?;
    let named: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&pool)
        .await?;
    assert_eq!(named, "operator-chosen");
    Ok(())
}
