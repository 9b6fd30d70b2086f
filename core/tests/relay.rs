//! The outbox relay against real Postgres and tansu: N committed rows become exactly N
//! messages, also when the broker was unreachable while they were written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paygate_core::bus::{
    ensure_topics, ConsumerRunner, ConsumerSettings, Delivery, Handler, HandlerError, OutboxRelay,
    Producer, RelaySettings, Topic,
};
use paygate_core::db::outbox::{self, OutboxMessage};
use paygate_core::testing::isolated_config;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Default)]
struct Counter(Mutex<HashMap<Vec<u8>, usize>>);

#[async_trait]
impl Handler for Counter {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        *self
            .0
            .lock()
            .map_err(|e| HandlerError::Retry(e.to_string()))?
            .entry(d.payload.clone())
            .or_default() += 1;
        Ok(())
    }
}

fn settings() -> RelaySettings {
    RelaySettings {
        batch_size: 7,
        poll_interval: Duration::from_millis(50),
        failure_backoff: Duration::from_millis(100),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_while_the_broker_is_down_are_published_exactly_once_when_it_returns(
) -> TestResult {
    let (config, pool) = isolated_config().await?;
    ensure_topics(&config.kafka).await?;

    // A relay whose broker is unreachable: rows must wait, marked unpublished.
    let mut dead = config.kafka.clone();
    dead.brokers = "127.0.0.1:1".into();
    dead.message_timeout_ms = 1_000;
    let stop_dead = CancellationToken::new();
    let dead_relay = OutboxRelay::new(pool.clone(), Producer::new(&dead)?, settings());
    let dead_health = dead_relay.health();
    let dead_task = tokio::spawn(dead_relay.run(stop_dead.clone()));

    const N: usize = 25;
    for i in 0..N {
        let message = OutboxMessage {
            topic: Topic::TransactionsPending,
            key: format!("txn-{}", i % 3),
            payload: format!("event-{i}").into_bytes(),
            headers: Default::default(),
        };
        outbox::enqueue(&pool, &message).await?;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        !dead_health.broker_ok(),
        "relay must report the broker as degraded"
    );
    assert_eq!(
        outbox::backlog(&pool).await?.0,
        N as i64,
        "nothing may be stamped without an ack"
    );
    stop_dead.cancel();
    dead_task.await?;

    // The broker "comes back": a relay with the real broker publishes every row once.
    let stop = CancellationToken::new();
    let relay = OutboxRelay::new(pool.clone(), Producer::new(&config.kafka)?, settings());
    let health = relay.health();
    let relay_task = tokio::spawn(relay.run(stop.clone()));

    let counter = Arc::new(Counter::default());
    let consumer = ConsumerRunner::new(
        &config.kafka,
        ConsumerSettings::new(
            format!("{}.check", config.kafka.group_prefix),
            vec![Topic::TransactionsPending],
        ),
        counter.clone(),
        Producer::new(&config.kafka)?,
    )?;
    let stop_consumer = CancellationToken::new();
    let consumer_task = tokio::spawn(consumer.run(stop_consumer.clone()));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let total: usize = counter.0.lock().map(|m| m.values().sum()).unwrap_or(0);
        if total >= N && outbox::backlog(&pool).await?.0 == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("only {total} of {N} messages arrived").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Give a duplicate, if there were one, time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    stop_consumer.cancel();
    relay_task.await?;
    consumer_task.await??;

    let counts = counter.0.lock().map(|m| m.clone()).unwrap_or_default();
    assert_eq!(counts.len(), N);
    assert!(
        counts.values().all(|&c| c == 1),
        "a row was published twice: {counts:?}"
    );
    assert!(health.broker_ok());
    assert_eq!(health.published(), N as i64);
    Ok(())
}
