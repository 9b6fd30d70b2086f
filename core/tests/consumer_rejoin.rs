//! The idle-member watchdog's action against the real broker (tansu): a running consumer
//! that leaves and rejoins its group (from another task, while its loop waits in `recv`)
//! is assigned its partitions again and goes on handling new messages, without handling
//! an old one twice. The decision to rejoin is unit-tested in `bus::consumer`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use paygate_core::bus::{
    ensure_topics, ConsumerRunner, ConsumerSettings, Delivery, Handler, HandlerError, Producer,
    Topic,
};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Default)]
struct Recorder {
    payloads: Mutex<Vec<Vec<u8>>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        if let Ok(mut payloads) = self.payloads.lock() {
            payloads.push(delivery.payload.clone());
        }
        Ok(())
    }
}

impl Recorder {
    fn payloads(&self) -> Vec<Vec<u8>> {
        self.payloads.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_rejoins_its_group_gets_its_partitions_back_and_goes_on() -> TestResult {
    let config = paygate_core::testing::isolated_kafka(1);
    ensure_topics(&config).await?;
    let producer = Producer::new(&config)?;
    let headers = BTreeMap::new();
    producer
        .send(Topic::TransactionsPending, "k", b"first", &headers)
        .await?;

    let mut settings = ConsumerSettings::new(
        format!("{}.rejoin", config.group_prefix),
        vec![Topic::TransactionsPending],
    );
    settings.commit_interval = Duration::from_millis(100);
    let recorder = Arc::new(Recorder::default());
    let runner = ConsumerRunner::new(&config, settings, recorder.clone(), producer.clone())?;
    let probe = runner.probe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));

    wait_until("the first message", || !recorder.payloads().is_empty()).await?;
    assert_eq!(probe.assigned(), 1);
    // Let the commit of the first message land before leaving.
    tokio::time::sleep(Duration::from_millis(500)).await;

    probe.rejoin();
    producer
        .send(Topic::TransactionsPending, "k", b"second", &headers)
        .await?;
    wait_until("the second message after the rejoin", || {
        recorder.payloads().len() >= 2
    })
    .await?;
    wait_until("the partition assigned again", || probe.assigned() == 1).await?;
    assert_eq!(
        recorder.payloads(),
        vec![b"first".to_vec(), b"second".to_vec()],
        "nothing handled twice across the rejoin"
    );
    // The second message's offset is committed by the rejoined member (lag back to 0).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lag = probe.group_lag(Duration::from_secs(5)).await?;
        if lag == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the group still has lag {lag} after the rejoin").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop.cancel();
    task.await??;
    Ok(())
}
