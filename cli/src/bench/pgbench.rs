//! `pgbench -N` against the same Postgres, in the same benchmark run: the yardstick the
//! end-to-end figure is divided by. `-N` (no updates of the branch/teller rows) is a simple
//! write-heavy transaction mix: what this Postgres does per second when nothing else runs.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::process::Command;

/// Where pgbench keeps its tables: a database of its own, never paygate's.
const PGBENCH_DATABASE: &str = "paygate_pgbench";
const SCALE: &str = "10";

#[derive(Debug, Clone, Serialize)]
pub struct PgbenchReport {
    pub clients: u32,
    pub duration_secs: u64,
    pub tps: f64,
}

/// Whether `pgbench` is on the PATH.
pub async fn available() -> bool {
    Command::new("pgbench")
        .arg("--version")
        .output()
        .await
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Initialises (scale 10) and runs `pgbench -N -c clients -T duration` against
/// `paygate_pgbench` on the server of `database_url`.
pub async fn run(
    database_url: &str,
    clients: u32,
    duration: Duration,
) -> anyhow::Result<PgbenchReport> {
    let options: PgConnectOptions = database_url
        .parse()
        .context("PAYGATE_DATABASE_URL is not a Postgres URL")?;
    ensure_database(&options).await?;
    let uri = with_database(database_url, PGBENCH_DATABASE);

    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", SCALE, &uri])
        .output()
        .await
        .context("running pgbench -i")?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr).trim()
    );
    let secs = duration.as_secs().max(1);
    let run = Command::new("pgbench")
        .args([
            "-N",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            &uri,
        ])
        .output()
        .await
        .context("running pgbench -N")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    anyhow::ensure!(
        run.status.success(),
        "pgbench -N failed: {}",
        String::from_utf8_lossy(&run.stderr).trim()
    );
    let tps = parse_tps(&stdout).context("no `tps = …` line in pgbench's output")?;
    Ok(PgbenchReport {
        clients,
        duration_secs: secs,
        tps,
    })
}

async fn ensure_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let mut admin = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("connecting to Postgres for pgbench")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(PGBENCH_DATABASE)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {PGBENCH_DATABASE}"))
            .execute(&mut admin)
            .await
            .context("creating the pgbench database")?;
    }
    admin.close().await?;
    Ok(())
}

/// `url` naming database `name` instead (and without sqlx-only query parameters, which
/// libpq refuses).
fn with_database(url: &str, name: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    match base.rsplit_once('/') {
        Some((server, _)) if server.contains("://") && !server.ends_with('/') => {
            format!("{server}/{name}")
        }
        _ => format!("{}/{name}", base.trim_end_matches('/')),
    }
}

/// The TPS of a pgbench report: `tps = 4784.123456 (without initial connection time)`.
fn parse_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("tps = "))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::{parse_tps, with_database};

    #[test]
    fn points_the_url_at_the_pgbench_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/paygate", "b"),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            with_database("postgres://u:p@db:5432/paygate?sslmode=disable", "b"),
            "postgres://u:p@db:5432/b"
        );
        assert_eq!(
            with_database("postgres://db:5432", "b"),
            "postgres://db:5432/b"
        );
    }

    #[test]
    fn reads_the_tps_line() {
        let output = "number of transactions actually processed: 95680\n\
                      latency average = 3.344 ms\n\
                      initial connection time = 12.345 ms\n\
                      tps = 4784.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(output), Some(4784.123456));
        assert_eq!(parse_tps("pgbench: error: connection refused\n"), None);
    }
}
