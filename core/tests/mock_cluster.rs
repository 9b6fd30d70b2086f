//! `paygate dev` runs on librdkafka's in-process mock cluster when no broker is configured;
//! the bus must work there too: topic creation, produce, consume through the runner.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paygate_core::bus::{
    ensure_topics, ConsumerRunner, ConsumerSettings, Delivery, Handler, HandlerError, Producer,
    Topic,
};
use paygate_core::testing::unique_name;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Seen(Mutex<Vec<Vec<u8>>>);

#[async_trait]
impl Handler for Seen {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        self.0
            .lock()
            .map_err(|e| HandlerError::Retry(e.to_string()))?
            .push(d.payload.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_works_on_the_mock_cluster() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = MockCluster::new(1)?;
    let mut config = paygate_core::config::Config::default().kafka;
    config.brokers = cluster.bootstrap_servers();
    config.topic_prefix = unique_name("dev");
    config.group_prefix = config.topic_prefix.clone();
    for topic in Topic::ALL {
        cluster.create_topic(&format!("{}.{}", config.topic_prefix, topic.suffix()), 2, 1)?;
    }
    ensure_topics(&config).await?;
    let producer = Producer::new(&config)?;
    for i in 0..5_u8 {
        producer
            .send(Topic::TransactionsPending, "k", &[i], &Default::default())
            .await?;
    }
    let seen = Arc::new(Seen::default());
    let runner = ConsumerRunner::new(
        &config,
        ConsumerSettings::new(
            format!("{}.g", config.group_prefix),
            vec![Topic::TransactionsPending],
        ),
        seen.clone(),
        producer,
    )?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.0.lock().map(|s| s.len()).unwrap_or(0) < 5 {
        if tokio::time::Instant::now() > deadline {
            return Err("messages not consumed from the mock cluster".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await??;
    assert_eq!(
        seen.0.lock().map(|s| s.clone()).unwrap_or_default(),
        vec![vec![0], vec![1], vec![2], vec![3], vec![4]]
    );
    Ok(())
}
