//! Reading what was published: a topic of a test's own prefix, read from the beginning in a
//! consumer group of its own.

use std::time::Duration;

use anyhow::Context;
use paygate_core::bus::{Topic, Topics};
use paygate_core::config::Config;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

/// Reads every message on `topic` (under `config`'s topic prefix) from the beginning until
/// `expected` arrived and then `quiet` passed without another (so a duplicate would be
/// seen), or `deadline` passed. Returns `(key, payload)` pairs in arrival order.
pub async fn consume_topic(
    config: &Config,
    topic: Topic,
    expected: usize,
    deadline: Duration,
    quiet: Duration,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", crate::config::unique_name("apitest"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .context("test consumer")?;
    let name = Topics::new(config.kafka.topic_prefix.clone()).name(topic);
    consumer
        .subscribe(&[&name])
        .with_context(|| format!("subscribe to {name}"))?;
    let mut messages = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        let wait = if messages.len() >= expected {
            quiet
        } else {
            end - now
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(message)) => {
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                messages.push((
                    key,
                    message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                ));
            }
            Ok(Err(error)) => anyhow::bail!("consume: {error}"),
            Err(_) => break,
        }
    }
    Ok(messages)
}
