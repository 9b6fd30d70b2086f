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
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    create_payment_keyed(client, endpoint, key, &idempotency_key, body)
        .await
        .map_err(|e| e.to_string())
}

/// Why a create request got no `202`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// No HTTP answer: refused, reset, closed mid-answer (the API instance died).
    Transport(String),
    /// An HTTP answer other than `202`.
    Status(u16, String),
    /// `429` or `503` with a `Retry-After`: nothing was created; the same request may be sent
    /// again after that long (a rate limit, Postgres unreachable, or the pipeline too far
    /// behind to take more: `overloaded`).
    Later {
        status: u16,
        retry_after: Duration,
        body: String,
    },
}

impl CreateError {
    /// Whether a client behind a load balancer sends the same request (same
    /// Idempotency-Key) again to another instance: no answer at all, the key still held by
    /// a request in flight (`409`), or a gateway/unavailable answer. Any other answer is
    /// the API's word on the request, and sending it again would not change it.
    pub fn retryable(&self) -> bool {
        match self {
            CreateError::Transport(_) | CreateError::Later { .. } => true,
            CreateError::Status(code, _) => matches!(code, 409 | 502 | 503 | 504),
        }
    }

    /// How long the API asked to be left alone before the request is sent again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CreateError::Later { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Transport(error) => f.write_str(error),
            CreateError::Status(code, body) => write!(f, "HTTP {code}: {body}"),
            CreateError::Later {
                status,
                retry_after,
                body,
            } => write!(
                f,
                "HTTP {status} (retry after {} s): {body}",
                retry_after.as_secs()
            ),
        }
    }
}

/// `POST` one create request with the given idempotency key; `Ok(body)` on `202`.
pub async fn create_payment_keyed(
    client: &reqwest::Client,
    endpoint: &str,
    key: &str,
    idempotency_key: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, CreateError> {
    let response = client
        .post(endpoint)
        .bearer_auth(key)
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .send()
        .await
        .map_err(|e| CreateError::Transport(error_chain(&e)))?;
    let status = response.status();
    if status.as_u16() == 202 {
        // A body cut off mid-answer is a transport failure: the request may have committed,
        // and only sending it again with the same key tells.
        response
            .json()
            .await
            .map_err(|e| CreateError::Transport(error_chain(&e)))
    } else {
        let retry_after = matches!(status.as_u16(), 429 | 503)
            .then(|| response.headers().get(reqwest::header::RETRY_AFTER))
            .flatten()
            .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        Err(match retry_after {
            Some(retry_after) => CreateError::Later {
                status: status.as_u16(),
                retry_after,
                body,
            },
            None => CreateError::Status(status.as_u16(), body),
        })
    }
}

/// An error with its sources ("error sending request: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How a client with several API instances sends one create: request (slot) `n` goes to
/// `urls[n % len]`; when it gets no answer (or a retryable one), the same request with the
/// same Idempotency-Key goes to the next URL, after the answer's `Retry-After` when it gave
/// one, and so on, until `give_up_after` has passed.
#[derive(Debug, Clone)]
pub struct Failover {
    urls: Vec<String>,
    give_up_after: Duration,
}

/// A create that got its `202`, and how many times it was sent again to get it.
#[derive(Debug, Clone)]
pub struct Created {
    pub body: serde_json::Value,
    pub retries: u32,
}

impl Failover {
    /// Between two attempts of one request, at first (doubling up to [`Self::MAX_PAUSE`]).
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    /// `urls`: the API base URLs (no trailing slash needed). At least one.
    pub fn new(urls: Vec<String>, give_up_after: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(!urls.is_empty(), "at least one API URL is needed");
        let urls = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect();
        Ok(Self {
            urls,
            give_up_after,
        })
    }

    /// The base URL of attempt `attempt` (0 = the first) of request `n`: round-robin over
    /// the requests, and each retry on the next instance.
    pub fn url(&self, n: u64, attempt: u32) -> &str {
        let len = (self.urls.len() as u64).max(1);
        // Both below `len`, so the sum cannot overflow.
        let at = (n % len + u64::from(attempt) % len) % len;
        self.urls
            .get(usize::try_from(at).unwrap_or(0))
            .map_or("", String::as_str)
    }

    /// The pause before attempt `attempt` (≥ 1).
    fn pause(attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(4);
        Self::FIRST_PAUSE
            .saturating_mul(1 << doublings)
            .min(Self::MAX_PAUSE)
    }

    /// Sends request `n` (`POST <url>/v1/<path>`) with one Idempotency-Key, failing over as
    /// the type says; the last error when every attempt failed.
    pub async fn create(
        &self,
        client: &reqwest::Client,
        n: u64,
        path: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> Result<Created, String> {
        let idempotency_key = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + self.give_up_after;
        let mut attempt = 0_u32;
        loop {
            let endpoint = format!("{}/v1/{path}", self.url(n, attempt));
            match create_payment_keyed(client, &endpoint, key, &idempotency_key, body).await {
                Ok(body) => {
                    return Ok(Created {
                        body,
                        retries: attempt,
                    })
                }
                Err(error) if error.retryable() && Instant::now() < deadline => {
                    attempt = attempt.saturating_add(1);
                    let pause = Self::pause(attempt).max(error.retry_after().unwrap_or_default());
                    tokio::time::sleep(pause).await;
                }
                Err(error) => {
                    return Err(format!(
                        "{error} (after {} attempts, last to {endpoint})",
                        attempt.saturating_add(1)
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover(n: usize) -> Failover {
        let urls = (0..n).map(|i| format!("http://api-{i}/")).collect();
        Failover::new(urls, Duration::from_secs(1)).expect("urls")
    }

    #[test]
    fn requests_go_round_robin_and_a_retry_goes_to_the_next_instance() {
        let f = failover(2);
        assert_eq!(f.url(0, 0), "http://api-0");
        assert_eq!(f.url(1, 0), "http://api-1");
        assert_eq!(f.url(2, 0), "http://api-0");
        // Request 1 went to api-1, which died: its retry goes to api-0, then back.
        assert_eq!(f.url(1, 1), "http://api-0");
        assert_eq!(f.url(1, 2), "http://api-1");
        // No overflow at the end of the numbers: u64::MAX is odd (api-1), its retry api-0.
        assert_eq!(f.url(u64::MAX, 0), "http://api-1");
        assert_eq!(f.url(u64::MAX, 1), "http://api-0");
    }

    #[test]
    fn one_instance_is_retried_in_place() {
        let f = failover(1);
        assert_eq!(f.url(7, 0), "http://api-0");
        assert_eq!(f.url(7, 3), "http://api-0");
    }

    #[test]
    fn no_url_is_refused() {
        assert!(Failover::new(Vec::new(), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn only_no_answer_or_an_unavailable_answer_is_retried() {
        assert!(CreateError::Transport("connection refused".into()).retryable());
        for code in [409, 502, 503, 504] {
            assert!(
                CreateError::Status(code, String::new()).retryable(),
                "{code}"
            );
        }
        for code in [400, 401, 402, 422, 429, 500] {
            assert!(
                !CreateError::Status(code, String::new()).retryable(),
                "{code}"
            );
        }
    }

    #[test]
    fn the_pause_grows_and_is_capped() {
        assert_eq!(Failover::pause(1), Duration::from_millis(100));
        assert_eq!(Failover::pause(2), Duration::from_millis(200));
        assert_eq!(Failover::pause(3), Duration::from_millis(400));
        assert_eq!(Failover::pause(9), Failover::MAX_PAUSE);
    }
}
