//! The pipeline's wait for admission control: what a consumer runner measures, and what a
//! worker publishes to the real Redis, read back as the API reads it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use paygate_core::bus::{
    ensure_topics, ConsumerRunner, ConsumerSettings, Delivery, Handler, HandlerError, Producer,
    Topic, Topics,
};
use paygate_core::pipeline_wait::{self, WaitGauge, WaitReport};
use paygate_core::testing::unique_name;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn redis() -> Result<redis::aio::ConnectionManager, Box<dyn std::error::Error>> {
    let url =
        std::env::var("PAYGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    Ok(redis::Client::open(url)?.get_connection_manager().await?)
}

/// Polls `check` every 50 ms for up to 10 s; the last value it gave.
async fn settle<T: PartialEq>(
    want: T,
    mut check: impl FnMut() -> futures::future::BoxFuture<'static, T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = check().await;
        if got == want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Default)]
struct Counter(AtomicUsize);

#[async_trait]
impl Handler for Counter {
    async fn handle(&self, _delivery: &Delivery) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_measures_how_long_its_messages_waited_since_they_were_produced() -> TestResult {
    let config = paygate_core::testing::isolated_kafka(1);
    ensure_topics(&config).await?;
    let topic = Topics::new(config.topic_prefix.clone()).name(Topic::TransactionsPending);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()?;
    // One message produced (by its timestamp) 20 s ago, as one that sat out a worker's
    // restart would be, and one produced now.
    let now_ms = Utc::now().timestamp_millis();
    for (payload, produced) in [(b"old", now_ms - 20_000), (b"new", now_ms)] {
        let record = FutureRecord::to(&topic)
            .key("k")
            .payload(payload.as_slice())
            .timestamp(produced);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)?;
    }
    let mut settings = ConsumerSettings::new(
        format!("{}.waits", config.group_prefix),
        vec![Topic::TransactionsPending],
    );
    settings.commit_interval = Duration::from_millis(100);
    settings.shutdown_grace = Duration::from_millis(500);
    let counter = Arc::new(Counter::default());
    let runner = ConsumerRunner::new(&config, settings, counter.clone(), Producer::new(&config)?)?;
    let gauge = runner.wait_gauge();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let handled = settle(2, || {
        let counter = counter.clone();
        Box::pin(async move { counter.0.load(Ordering::SeqCst) })
    })
    .await;
    stop.cancel();
    task.await??;
    assert_eq!(handled, 2);
    let longest = gauge.take();
    assert!(
        longest >= Duration::from_secs(20) && longest < Duration::from_secs(60),
        "the old message's wait is the longest: {longest:?}"
    );
    assert_eq!(gauge.take(), Duration::ZERO, "taken, it starts again");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_publishes_its_wait_until_it_stops_and_readers_add_up_the_groups() -> TestResult {
    let mut reader = redis().await?;
    let prefix = unique_name("pgt");
    // Another instance's report, fresh, and a dead one's, too old to count.
    pipeline_wait::publish(
        &mut reader,
        &prefix,
        "pgt.payment-processor",
        "other",
        WaitReport {
            wait_ms: 1_500,
            at: Utc::now(),
        },
    )
    .await?;
    pipeline_wait::publish(
        &mut reader,
        &prefix,
        "pgt.callback-processor",
        "dead",
        WaitReport {
            wait_ms: 90_000,
            at: Utc::now() - chrono::Duration::seconds(30),
        },
    )
    .await?;
    assert_eq!(
        pipeline_wait::current(&mut reader, &prefix).await?.wait,
        Duration::from_millis(1_500)
    );

    let gauge = WaitGauge::default();
    gauge.record(Duration::from_secs(7));
    let stop = CancellationToken::new();
    let publisher = tokio::spawn(pipeline_wait::publish_until(
        gauge.clone(),
        redis().await?,
        prefix.clone(),
        "pgt.callback-processor".to_owned(),
        stop.clone(),
    ));
    let seen = settle(Duration::from_millis(8_500), || {
        // Still waiting that long: each publication carries it (a taken gauge restarts at 0).
        gauge.record(Duration::from_secs(7));
        let prefix = prefix.clone();
        let mut reader = reader.clone();
        Box::pin(async move {
            pipeline_wait::current(&mut reader, &prefix)
                .await
                .map(|reading| reading.wait)
                .unwrap_or_default()
        })
    })
    .await;
    assert_eq!(
        seen,
        Duration::from_millis(8_500),
        "a payment would wait in both groups: 1.5 s and 7 s"
    );

    stop.cancel();
    publisher.await?;
    // Withdrawn at stop: only the other instance's report counts, without waiting for age.
    assert_eq!(
        pipeline_wait::current(&mut reader, &prefix).await?.wait,
        Duration::from_millis(1_500)
    );
    Ok(())
}
