//! `paygate bench accept`: drives a running API's `POST /v1/deposits` with many keep-alive
//! connections and measures what a merchant sees: accept latency (HDR histogram) and
//! throughput. The API alone: nothing waits for the payments to complete.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::cpu::{CpuReport, CpuSnapshot};
use super::load::{self, LoadSpec, Percentiles, Recorder};
use super::statements::{StatementStats, StatementsReport};

#[derive(Args, Debug, Clone)]
pub struct AcceptArgs {
    /// The API's base URL (e.g. what `paygate dev` prints).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A merchant API key (`paygate merchants create`, or the one `paygate dev` prints).
    /// Several keys, comma-separated, are used in turn (the API rate-limits per key).
    #[arg(long, env = "PAYGATE_BENCH_API_KEY", hide_env_values = true)]
    pub key: String,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Concurrent connections (closed loop) or the in-flight cap (open loop).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop at this many requests per second; absent = closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Gateway to name in each request (absent: routing rules choose).
    #[arg(long)]
    pub gateway: Option<String>,
    /// What to create: `deposit` (touches no balance at accept) or `withdrawal` (holds funds
    /// on the merchant's balance row in the same statement: fund the merchants first with
    /// `paygate ledger top-up`). Several comma-separated keys spread the load over merchants.
    #[arg(long, default_value = "deposit", value_parser = ["deposit", "withdrawal"])]
    pub kind: String,
    /// Report this many of the costliest Postgres statements of the run, read from
    /// `PAYGATE_DATABASE_URL`'s server (needs `pg_stat_statements` loaded; 0 = do not ask).
    #[arg(long, default_value_t = 12)]
    pub statements: usize,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct AcceptReport {
    pub mode: String,
    pub kind: String,
    pub duration_secs: f64,
    pub concurrency: usize,
    pub target_rate: Option<u64>,
    pub accepted: u64,
    pub errors: u64,
    pub throughput_per_sec: f64,
    pub latency_ms: Percentiles,
    /// CPU over the load, by process kind (the relay's publishing included, so the broker too).
    pub cpu: CpuReport,
    /// `cpu` in milliseconds per accepted request, by kind, `machine` and `machine - bench`.
    pub cpu_ms_per_request: std::collections::BTreeMap<String, f64>,
    /// Postgres statements over the same window, per accepted request.
    pub statements: Option<StatementsReport>,
}

pub async fn accept(args: AcceptArgs, database_url: &str) -> anyhow::Result<AcceptReport> {
    let spec = LoadSpec {
        duration: Duration::from_secs(args.duration),
        concurrency: args.concurrency,
        rate: args.rate,
    };
    spec.check()?;
    let keys: Arc<Vec<String>> = Arc::new(
        args.key
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect(),
    );
    anyhow::ensure!(!keys.is_empty(), "--key is empty");
    let client = load::client(args.concurrency)?;
    let endpoint: Arc<str> = format!("{}/v1/{}s", args.url.trim_end_matches('/'), args.kind).into();
    let mut body =
        serde_json::json!({"amount": 1, "currency": "USD", "customer": "bench_customer"});
    if let Some(gateway) = &args.gateway {
        body["gateway"] = serde_json::Value::from(gateway.as_str());
    }
    let body = Arc::new(body);
    // One request first, so a wrong URL or key fails fast with the API's own message.
    if let Err(error) = load::create_payment(&client, &endpoint, &keys[0], &body).await {
        anyhow::bail!("the API refused the first request: {error}");
    }

    let recorder = Arc::new(Recorder::new()?);
    let statements = StatementStats::start(database_url, args.statements).await;
    let cpu_before = CpuSnapshot::take();
    let elapsed = load::drive(spec, &recorder, String::new, move |n, _start| {
        let (client, endpoint, keys, body) =
            (client.clone(), endpoint.clone(), keys.clone(), body.clone());
        async move {
            let key = &keys[(n % keys.len() as u64) as usize];
            load::create_payment(&client, &endpoint, key, &body)
                .await
                .map(drop)
        }
    })
    .await
    .as_secs_f64();
    let cpu = cpu_before.until(&CpuSnapshot::take());

    if let Some(error) = recorder.first_error() {
        eprintln!("first error: {error}");
    }
    let accepted = recorder.ok();
    let statements =
        StatementStats::finish_run(statements, accepted, "request", args.statements).await;
    Ok(AcceptReport {
        mode: spec.mode().into(),
        kind: args.kind.clone(),
        duration_secs: elapsed,
        concurrency: args.concurrency,
        target_rate: args.rate,
        accepted,
        errors: recorder.errors(),
        throughput_per_sec: accepted as f64 / elapsed,
        latency_ms: recorder.percentiles(),
        cpu_ms_per_request: cpu.per_unit_ms(accepted),
        cpu,
        statements,
    })
}

/// The summary table printed at the end.
pub fn print(report: &AcceptReport) {
    println!();
    println!(
        "paygate bench accept: {}s ({} loop{})",
        report.kind,
        report.mode,
        report
            .target_rate
            .map(|r| format!(", target {r}/s"))
            .unwrap_or_default()
    );
    println!("  duration      {:>10.1} s", report.duration_secs);
    println!("  concurrency   {:>10}", report.concurrency);
    println!("  accepted      {:>10}", report.accepted);
    println!("  errors        {:>10}", report.errors);
    println!("  throughput    {:>10.0} req/s", report.throughput_per_sec);
    println!("  latency p50   {:>10.2} ms", report.latency_ms.p50);
    println!("  latency p90   {:>10.2} ms", report.latency_ms.p90);
    println!("  latency p99   {:>10.2} ms", report.latency_ms.p99);
    println!("  latency max   {:>10.2} ms", report.latency_ms.max);
    report.cpu.print(report.accepted, "request");
    if let Some(statements) = &report.statements {
        statements.print();
    }
}
