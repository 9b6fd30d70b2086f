//! The idempotent Kafka producer every service uses.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use super::{BusError, Topic, Topics};
use crate::config::KafkaConfig;

/// Where a message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent producer (`enable.idempotence=true`, so `acks=all` and in-order, no
/// duplicates on internal retries). `send` returns only once the broker acknowledged.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    topics: Topics,
    timeout: Duration,
}

impl Producer {
    pub fn new(config: &KafkaConfig) -> Result<Self, BusError> {
        let inner: FutureProducer = client_config(config)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", config.message_timeout_ms.to_string())
            .set("linger.ms", config.linger_ms.to_string())
            .create()?;
        Ok(Self {
            inner,
            topics: Topics::new(config.topic_prefix.clone()),
            timeout: Duration::from_millis(config.message_timeout_ms),
        })
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Sends one message and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: Topic,
        key: &str,
        payload: &[u8],
        headers: &BTreeMap<String, String>,
    ) -> Result<Delivered, BusError> {
        let name = self.topics.name(topic);
        self.send_to(&name, key.as_bytes(), payload, headers).await
    }

    /// Sends to a topic by full name (the DLQ keeps an original message's raw key).
    pub async fn send_to(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &BTreeMap<String, String>,
    ) -> Result<Delivered, BusError> {
        let mut kafka_headers = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            kafka_headers = kafka_headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(kafka_headers);
        match self.inner.send(record, self.timeout).await {
            Ok(delivery) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _message)) => Err(BusError::Kafka(error)),
        }
    }

    /// Waits for queued messages to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.inner.flush(timeout)?;
        Ok(())
    }

    /// Whether a broker answers a metadata request within `timeout` (for `/readyz`).
    pub async fn is_reachable(&self, timeout: Duration) -> bool {
        let producer = self.inner.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).is_ok())
            .await
            .unwrap_or(false)
    }
}

/// Settings every client shares.
pub(crate) fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "paygate")
        .set("log_level", "4");
    client
}
