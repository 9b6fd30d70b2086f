//! The load generator both benchmarks share: many keep-alive connections, closed or open
//! loop, a progress bar, and an HDR histogram of what the client saw.
//!
//! - **closed loop** (no rate): `concurrency` workers, each sending its next request as soon
//!   as the previous answer arrives: the most the system sustains.
//! - **open loop** (`rate`): requests are *scheduled* at `rate` per second whatever the
//!   answers do, and latency is measured from the scheduled time, so a stall shows up in the
//!   percentiles instead of silently slowing the client (no coordinated omission).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Latencies are recorded in microseconds, up to a minute.
const HISTOGRAM_MAX_MICROS: u64 = 60_000_000;

/// How to drive the load.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub duration: Duration,
    /// Concurrent connections (closed loop) or the in-flight cap (open loop).
    pub concurrency: usize,
    /// Open loop at this many requests per second; `None` = closed loop.
    pub rate: Option<u64>,
}

impl LoadSpec {
    pub fn mode(&self) -> &'static str {
        if self.rate.is_some() {
            "open"
        } else {
            "closed"
        }
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.concurrency >= 1, "--concurrency must be at least 1");
        anyhow::ensure!(
            self.duration >= Duration::from_secs(1),
            "--duration must be at least 1 second"
        );
        anyhow::ensure!(self.rate != Some(0), "--rate must be at least 1");
        Ok(())
    }
}

/// p50/p90/p99/max in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A latency histogram in microseconds.
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(Histogram::new_with_bounds(
            1,
            HISTOGRAM_MAX_MICROS,
            3,
        )?))
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Saturating: a value over the bound is kept as the bound.
        let _ = self.0.record(micros.clamp(1, HISTOGRAM_MAX_MICROS));
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| self.0.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: self.0.max() as f64 / 1000.0,
        }
    }
}

/// What the client saw: successes with their latency, errors with the first message.
pub struct Recorder {
    latencies: Mutex<Latencies>,
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latencies: Mutex::new(Latencies::new()?),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }

    fn record(&self, since: Instant, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut latencies) = self.latencies.lock() {
                    latencies.record(since.elapsed());
                }
            }
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert(error);
                }
            }
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn percentiles(&self) -> Percentiles {
        self.latencies
            .lock()
            .map(|l| l.percentiles())
            .unwrap_or_default()
    }
}

/// Sends requests per `spec` until its duration has passed and every request has answered.
/// `send(n, start)` makes request number `n`; `start` is when it was due (open loop) or sent
/// (closed loop), the instant its latency counts from. `status` adds to the progress line.
/// Returns the time from the first request to the last answer.
pub async fn drive<F, Fut>(
    spec: LoadSpec,
    recorder: &Arc<Recorder>,
    status: impl Fn() -> String + Send + 'static,
    send: F,
) -> Duration
where
    F: Fn(u64, Instant) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let bar = ProgressBar::new(spec.duration.as_secs());
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = {
        let (recorder, bar) = (recorder.clone(), bar.clone());
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = recorder.ok();
                bar.inc(1);
                bar.set_message(format!(
                    "{} req/s, {} errors{}",
                    now - last,
                    recorder.errors(),
                    status()
                ));
                last = now;
            }
        })
    };
    let started = Instant::now();
    match spec.rate {
        None => closed_loop(spec, recorder, send).await,
        Some(rate) => open_loop(spec, rate, recorder, send).await,
    }
    let elapsed = started.elapsed();
    progress.abort();
    bar.finish_and_clear();
    elapsed
}

async fn closed_loop<F, Fut>(spec: LoadSpec, recorder: &Arc<Recorder>, send: F)
where
    F: Fn(u64, Instant) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let deadline = Instant::now() + spec.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency {
        let (recorder, send, next) = (recorder.clone(), send.clone(), next.clone());
        workers.spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let result = send(n, sent).await;
                recorder.record(sent, result);
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

async fn open_loop<F, Fut>(spec: LoadSpec, rate: u64, recorder: &Arc<Recorder>, send: F)
where
    F: Fn(u64, Instant) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(spec.concurrency));
    let started = Instant::now();
    let total = (spec.duration.as_secs_f64() * rate as f64) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (recorder, send) = (recorder.clone(), send.clone());
        tasks.spawn(async move {
            let result = send(n, scheduled).await;
            // Latency from the *scheduled* time: waiting for a free slot counts.
            recorder.record(scheduled, result);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// A keep-alive HTTP client sized for `concurrency` connections.
pub fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// `POST` one create request with a fresh idempotency key; `Ok(body)` on `202`.
pub async fn create_payment(
    client: &reqwest::Client,
    endpoint: &str,
    key: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let response = client
        .post(endpoint)
        .bearer_auth(key)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status.as_u16() == 202 {
        response.json().await.map_err(|e| e.to_string())
    } else {
        Err(format!(
            "HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        ))
    }
}
