//! Where Postgres spends a benchmark run, statement by statement: `pg_stat_statements`, reset
//! when the load starts and read when the last webhook has arrived.
//!
//! Why: CPU by process says Postgres is half the cost of a payment, not which statements make
//! it. This names them, with calls, time and WAL per payment, so a change can be aimed at
//! the statement that costs and its effect read off the same table.
//!
//! It needs the extension loaded at server start (`shared_preload_libraries =
//! 'pg_stat_statements'`, and `pg_stat_statements.track = all` to see the statements that run
//! inside trigger functions as well). Without it the bench says why and goes on: the other
//! figures stand on their own.

use anyhow::Context;
use serde::Serialize;
use sqlx::postgres::PgConnection;
use sqlx::Connection;

/// One normalised statement's share of the run.
#[derive(Debug, Clone, Serialize)]
pub struct StatementCost {
    /// The statement, whitespace collapsed, cut at [`QUERY_CHARS`].
    pub query: String,
    /// Sent by a client (true) or run inside a function or trigger (false).
    pub toplevel: bool,
    pub calls: i64,
    pub calls_per_unit: f64,
    /// Execution time (wall clock inside the server, waits included) per unit.
    pub ms_per_unit: f64,
    pub mean_ms: f64,
    pub wal_bytes_per_unit: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementsReport {
    /// The server's `autovacuum` setting: with it off, every run leaves dead rows that slow
    /// the next, and figures are not comparable.
    pub autovacuum: String,
    /// What the units are (`payment`, `request`).
    pub unit: String,
    /// Statements sent by clients, per unit (those inside triggers are part of them).
    pub toplevel_calls_per_unit: f64,
    /// Their execution time per unit.
    pub toplevel_ms_per_unit: f64,
    pub wal_bytes_per_unit: f64,
    /// The costliest statements by total time, top-level and nested alike.
    pub top: Vec<StatementCost>,
}

const QUERY_CHARS: usize = 110;

/// An open session on the measured database, with the statistics reset at [`Self::start`].
pub struct StatementStats {
    conn: PgConnection,
}

impl StatementStats {
    /// Resets the statistics when `top` statements are asked for; `None` when none are, or
    /// (with the reason printed) where the extension is absent.
    pub async fn start(database_url: &str, top: usize) -> Option<Self> {
        if top == 0 {
            return None;
        }
        match Self::try_start(database_url).await {
            Ok(stats) => Some(stats),
            Err(error) => {
                eprintln!("no statement statistics: {error:#}");
                None
            }
        }
    }

    async fn try_start(database_url: &str) -> anyhow::Result<Self> {
        let mut conn = PgConnection::connect(database_url)
            .await
            .context("connecting to the database")?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await
            .context("pg_stat_statements is not installed")?;
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut conn)
            .await
            .context(
                "pg_stat_statements is not loaded (shared_preload_libraries = 'pg_stat_statements')",
            )?;
        Ok(Self { conn })
    }

    /// [`Self::finish`] of a run that may have no statistics; a failed read is printed and
    /// leaves the report without them (the other figures stand on their own).
    pub async fn finish_run(
        stats: Option<Self>,
        units: u64,
        unit: &str,
        top: usize,
    ) -> Option<StatementsReport> {
        stats?
            .finish(units, unit, top)
            .await
            .map_err(|error| eprintln!("statement statistics: {error:#}"))
            .ok()
    }

    /// The run's statements per `units` (payments delivered, requests accepted).
    async fn finish(
        mut self,
        units: u64,
        unit: &str,
        top: usize,
    ) -> anyhow::Result<StatementsReport> {
        let per = |x: f64| if units == 0 { 0.0 } else { x / units as f64 };
        let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
            .fetch_one(&mut self.conn)
            .await?;
        let (calls, ms, wal): (i64, f64, f64) = sqlx::query_as(
            "SELECT coalesce(sum(calls), 0)::int8, coalesce(sum(total_exec_time), 0)::float8,
                    coalesce(sum(wal_bytes), 0)::float8
             FROM pg_stat_statements
             WHERE toplevel AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut self.conn)
        .await
        .context("reading pg_stat_statements")?;
        let rows: Vec<(String, bool, i64, f64, f64, f64)> = sqlx::query_as(
            "SELECT query, toplevel, calls, total_exec_time, mean_exec_time, wal_bytes::float8
             FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
             ORDER BY total_exec_time DESC LIMIT $1",
        )
        .bind(i64::try_from(top).unwrap_or(i64::MAX))
        .fetch_all(&mut self.conn)
        .await?;
        let _ = self.conn.close().await;
        Ok(StatementsReport {
            autovacuum,
            unit: unit.to_owned(),
            toplevel_calls_per_unit: per(calls as f64),
            toplevel_ms_per_unit: per(ms),
            wal_bytes_per_unit: per(wal),
            top: rows
                .into_iter()
                .map(|(query, toplevel, calls, total, mean, wal)| StatementCost {
                    query: shorten(&query),
                    toplevel,
                    calls,
                    calls_per_unit: per(calls as f64),
                    ms_per_unit: per(total),
                    mean_ms: mean,
                    wal_bytes_per_unit: per(wal),
                })
                .collect(),
        })
    }
}

impl StatementsReport {
    pub fn print(&self) {
        if self.autovacuum != "on" {
            println!("  WARNING             autovacuum is {} on this server: dead rows pile up run after run (scripts/stack bench-setup)", self.autovacuum);
        }
        println!(
            "  statements          {:>10.1} per {} sent by clients, {:.3} ms, {:.0} WAL bytes",
            self.toplevel_calls_per_unit,
            self.unit,
            self.toplevel_ms_per_unit,
            self.wal_bytes_per_unit
        );
        println!("      calls/u   ms/u   mean ms  WAL B/u  statement (* inside a function)");
        for s in &self.top {
            println!(
                "    {:>8.2} {:>7.3} {:>8.3} {:>8.0}  {}{}",
                s.calls_per_unit,
                s.ms_per_unit,
                s.mean_ms,
                s.wal_bytes_per_unit,
                if s.toplevel { "" } else { "* " },
                s.query
            );
        }
    }
}

/// `query` on one line, whitespace runs collapsed, at most [`QUERY_CHARS`] characters.
fn shorten(query: &str) -> String {
    let one_line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(QUERY_CHARS) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn a_statement_is_one_line_and_cut() {
        assert_eq!(shorten("SELECT  1\n  FROM t"), "SELECT 1 FROM t");
        let long = format!("SELECT {}", "é".repeat(200));
        let short = shorten(&long);
        assert_eq!(short.chars().count(), super::QUERY_CHARS + 1);
        assert!(short.ends_with('…'));
    }
}
