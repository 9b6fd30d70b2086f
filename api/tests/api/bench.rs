//! A rough accept benchmark (ignored by default): concurrent `POST /v1/deposits` through the
//! whole path (auth, validation, one Postgres commit with the outbox row) while the relay
//! publishes. `cargo test -p paygate-api --release --test api bench -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run explicitly"]
async fn bench_accept() -> TestResult {
    let total: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let app = Arc::new(
        spawn_with(
            |config| {
                config.api.rate_limit_per_second = 1_000_000;
                config.api.rate_limit_burst = 1_000_000;
                config.database.max_connections = 32;
            },
            Default::default(),
        )
        .await?,
    );
    let merchant = Arc::new(app.merchant().await?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (app, merchant, next) = (Arc::clone(&app), Arc::clone(&merchant), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                let status = app
                    .post("/v1/deposits", &merchant.key, &deposit_body())
                    .send()
                    .await?
                    .status();
                anyhow::ensure!(status == 202, "status {status}");
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "accept: {} requests, concurrency {concurrency}: {:.0} req/s, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    let drained = eventually(Duration::from_secs(60), || async {
        app.unpublished().await.unwrap_or(-1) == 0
    })
    .await;
    println!("outbox drained to Kafka within 60 s of the last accept: {drained}");
    Ok(())
}
