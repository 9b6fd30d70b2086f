//! `paygate bench accept`: drives a running API's `POST /v1/deposits` with many keep-alive
//! connections and measures what a merchant sees: accept latency (HDR histogram) and
//! throughput.
//!
//! Two modes:
//! - **closed loop** (default): `--concurrency` workers, each sending its next request as
//!   soon as the previous answer arrives: the most the API sustains.
//! - **open loop** (`--rate N`): requests are *scheduled* at N per second whatever the
//!   answers do, and latency is measured from the scheduled time, so a stall shows up in the
//!   percentiles instead of silently slowing the client (no coordinated omission).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Args, Debug, Clone)]
pub struct AcceptArgs {
    /// The API's base URL (e.g. what `paygate dev` prints).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A merchant API key (`paygate merchants create`, or the one `paygate dev` prints).
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
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct AcceptReport {
    pub mode: String,
    pub duration_secs: f64,
    pub concurrency: usize,
    pub target_rate: Option<u64>,
    pub accepted: u64,
    pub errors: u64,
    pub throughput_per_sec: f64,
    pub latency_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

struct Shared {
    histogram: Mutex<Histogram<u64>>,
    accepted: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

pub async fn accept(args: AcceptArgs) -> anyhow::Result<AcceptReport> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.duration >= 1, "--duration must be at least 1 second");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let endpoint = format!("{}/v1/deposits", args.url.trim_end_matches('/'));
    // One request first, so a wrong URL or key fails fast with the API's own message.
    let probe = send(&client, &endpoint, &args.key, args.gateway.as_deref()).await;
    if let Err(error) = probe {
        anyhow::bail!("the API refused the first request: {error}");
    }

    let shared = Arc::new(Shared {
        histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?),
        accepted: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    });
    let duration = Duration::from_secs(args.duration);
    let bar = ProgressBar::new(args.duration);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = {
        let shared = shared.clone();
        let bar = bar.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = shared.accepted.load(Ordering::Relaxed);
                bar.inc(1);
                bar.set_message(format!(
                    "{} req/s, {} errors",
                    now - last,
                    shared.errors.load(Ordering::Relaxed)
                ));
                last = now;
            }
        })
    };

    let started = Instant::now();
    match args.rate {
        None => closed_loop(&client, &endpoint, &args, duration, &shared).await,
        Some(rate) => open_loop(&client, &endpoint, &args, duration, rate, &shared).await?,
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.abort();
    bar.finish_and_clear();

    let histogram = shared
        .histogram
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let report = AcceptReport {
        mode: if args.rate.is_some() {
            "open".into()
        } else {
            "closed".into()
        },
        duration_secs: elapsed,
        concurrency: args.concurrency,
        target_rate: args.rate,
        accepted,
        errors: shared.errors.load(Ordering::Relaxed),
        throughput_per_sec: accepted as f64 / elapsed,
        latency_ms: Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: histogram.max() as f64 / 1000.0,
        },
    };
    if let Some(error) = shared.first_error.lock().ok().and_then(|e| e.clone()) {
        eprintln!("first error: {error}");
    }
    Ok(report)
}

async fn closed_loop(
    client: &reqwest::Client,
    endpoint: &str,
    args: &AcceptArgs,
    duration: Duration,
    shared: &Arc<Shared>,
) {
    let deadline = Instant::now() + duration;
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (client, endpoint, key, gateway, shared) = (
            client.clone(),
            endpoint.to_owned(),
            args.key.clone(),
            args.gateway.clone(),
            shared.clone(),
        );
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let sent = Instant::now();
                let result = send(&client, &endpoint, &key, gateway.as_deref()).await;
                record(&shared, sent, result);
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

async fn open_loop(
    client: &reqwest::Client,
    endpoint: &str,
    args: &AcceptArgs,
    duration: Duration,
    rate: u64,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    anyhow::ensure!(rate >= 1, "--rate must be at least 1");
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let started = Instant::now();
    let total = (duration.as_secs_f64() * rate as f64) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (client, endpoint, key, gateway, shared) = (
            client.clone(),
            endpoint.to_owned(),
            args.key.clone(),
            args.gateway.clone(),
            shared.clone(),
        );
        tasks.spawn(async move {
            let result = send(&client, &endpoint, &key, gateway.as_deref()).await;
            // Latency from the *scheduled* time: waiting for a free slot counts.
            record(&shared, scheduled, result);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn record(shared: &Shared, since: Instant, result: Result<(), String>) {
    let micros = u64::try_from(since.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    match result {
        Ok(()) => {
            shared.accepted.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut h) = shared.histogram.lock() {
                let _ = h.record(micros.min(60_000_000));
            }
        }
        Err(error) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut first) = shared.first_error.lock() {
                first.get_or_insert(error);
            }
        }
    }
}

async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    key: &str,
    gateway: Option<&str>,
) -> Result<(), String> {
    let mut body =
        serde_json::json!({"amount": 1050, "currency": "USD", "customer": "bench_customer"});
    if let Some(gateway) = gateway {
        body["gateway"] = serde_json::Value::from(gateway);
    }
    let response = client
        .post(endpoint)
        .bearer_auth(key)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.as_u16() == 202 {
        Ok(())
    } else {
        Err(format!(
            "HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        ))
    }
}

/// The summary table printed at the end.
pub fn print(report: &AcceptReport) {
    println!();
    println!(
        "paygate bench accept ({} loop{})",
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
}
