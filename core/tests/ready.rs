//! Worker readiness against the real Postgres, Redis and broker: ready only when every
//! dependency answers and, when the group has lag, the member holds partitions; served at
//! `/readyz` beside `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paygate_core::bus::{
    ensure_topics, ConsumerRunner, ConsumerSettings, Delivery, Handler, HandlerError, Producer,
    Topic,
};
use paygate_core::ready::{self, Readiness};
use paygate_core::testing::isolated_config;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Accept;

#[async_trait]
impl Handler for Accept {
    async fn handle(&self, _: &Delivery) -> Result<(), HandlerError> {
        Ok(())
    }
}

async fn get(addr: &str, path: &str) -> Result<(u16, String), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_an_idle_member_with_lag_and_a_dead_database() -> TestResult {
    let (config, pool) = isolated_config().await?;
    ensure_topics(&config.kafka).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    paygate_core::telemetry::serve_metrics(&addr, None)?;

    let (status, body) = get(&addr, "/readyz").await?;
    assert_eq!((status, body.contains("starting")), (503, true), "{body}");
    assert_eq!(get(&addr, "/metrics").await?.0, 200);
    assert_eq!(get(&addr, "/nope").await?.0, 404);

    // A member that has not joined (holds nothing) while a message waits for its group.
    let producer = Producer::new(&config.kafka)?;
    producer
        .send(
            Topic::TransactionsPending,
            "k",
            b"waiting",
            &Default::default(),
        )
        .await?;
    let runner = ConsumerRunner::new(
        &config.kafka,
        ConsumerSettings::new(
            format!("{}.ready", config.kafka.group_prefix),
            vec![Topic::TransactionsPending],
        ),
        Arc::new(Accept),
        producer.clone(),
    )?;
    let readiness = Arc::new(Readiness::new(
        pool.clone(),
        &config.redis.url,
        producer.clone(),
        Some(runner.probe()),
        Duration::ZERO,
    ));
    ready::register(readiness.clone());
    // Not ready from the first answer; the reason is the idle member once the group's lag
    // can be read (on a busy broker the first metadata fetch may time out: also not ready).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&addr, "/readyz").await?;
        assert_eq!(status, 503, "{body}");
        if body.contains("holds no partitions") {
            break;
        }
        assert!(
            body.contains("cannot read the group's lag") && tokio::time::Instant::now() < deadline,
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Running, it takes partitions and consumes: ready.
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get(&addr, "/readyz").await?;
        if status == 200 {
            assert_eq!(body, r#"{"status":"ok"}"#);
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("never ready: {body}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    task.await??;

    // Postgres and Redis unreachable: named, and cached for the TTL.
    let dead_pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")?;
    let broken = Readiness::new(
        dead_pool,
        "redis://127.0.0.1:1",
        producer,
        None,
        Duration::from_secs(60),
    );
    let report = broken.report().await;
    assert!(!report.ready());
    assert!(
        report.problems.iter().any(|p| p.starts_with("database:")),
        "{report:?}"
    );
    assert!(
        report.problems.iter().any(|p| p.starts_with("redis:")),
        "{report:?}"
    );
    assert!(
        !report.problems.iter().any(|p| p.starts_with("broker:")),
        "{report:?}"
    );
    assert_eq!(broken.report().await, report);
    Ok(())
}
