//! `paygate bench broker` against the real broker (tansu, `scripts/stack up`): every message
//! it produces is read by every consumer group and timed, each row runs on a scratch topic
//! with the partitions it names, and the scratch topics are gone afterwards.

use std::time::Duration;

use paygate_cli::bench::broker::{broker, BrokerArgs};
use paygate_core::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

type TestResult = anyhow::Result<()>;

fn args(partitions: Vec<i32>, consumers: u16) -> BrokerArgs {
    BrokerArgs {
        rate: 100,
        duration: 2,
        partitions,
        fetch_wait_ms: vec![25],
        consumers,
        message_bytes: 200,
        json: None,
    }
}

/// The topics the broker lists now (for its partitions too).
fn listed(config: &KafkaConfig) -> anyhow::Result<Vec<(String, usize)>> {
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()?;
    let metadata = client.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect())
}

#[tokio::test]
async fn every_message_is_read_by_every_group_and_the_scratch_topics_go() -> TestResult {
    let (config, _pool) = paygate_testkit::isolated_config().await?;
    let report = broker(args(vec![1, 3], 2), &config.kafka).await?;

    assert_eq!(report.rows.len(), 2, "one row per partition count");
    for (row, partitions) in report.rows.iter().zip([1, 3]) {
        assert_eq!(row.partitions, partitions);
        assert_eq!(row.fetch_wait_ms, 25);
        assert_eq!(row.produced, 200, "100/s for 2 s");
        assert_eq!(row.send_errors, 0);
        assert_eq!(
            row.unread, 0,
            "both groups read every message of the window"
        );
        assert!(
            (row.read_per_sec - row.produced_per_sec).abs() < 1e-9,
            "each group read what was produced: {} against {}",
            row.read_per_sec,
            row.produced_per_sec
        );
        assert!(row.latency_ms.p50 > 0.0 && row.latency_ms.p50 <= row.latency_ms.p99);
        assert!(
            row.broker_cpu_pct.is_some(),
            "tansu runs on this machine, so its CPU is read"
        );
    }

    let prefix = format!("{}.bench-broker.", config.kafka.topic_prefix);
    let left: Vec<_> = listed(&config.kafka)?
        .into_iter()
        .filter(|(name, _)| name.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "scratch topics left behind: {left:?}");
    Ok(())
}

#[tokio::test]
async fn a_run_without_a_setting_or_a_broker_is_refused_with_the_reason() -> TestResult {
    let (config, _pool) = paygate_testkit::isolated_config().await?;
    let mut no_waits = args(vec![1], 1);
    no_waits.fetch_wait_ms.clear();
    let error = broker(no_waits, &config.kafka)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("--fetch-wait-ms"), "{error}");

    let mut no_broker = config.kafka.clone();
    no_broker.brokers = String::new();
    let error = broker(args(vec![1], 1), &no_broker)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("kafka.brokers is empty"), "{error}");
    Ok(())
}
