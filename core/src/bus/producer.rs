//! The idempotent Kafka producer every service uses, and its recovery: a broker that
//! restarted empty (tansu with memory storage) or that fenced the producer leaves the
//! librdkafka client failing every send (`MessageTimedOut`, a fatal idempotence error) until
//! it is replaced. [`Producer::renew`] replaces the client in place, for every clone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _, PurgeConfig};

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
///
/// Clones share one librdkafka client, so renewing it (after the broker lost its state)
/// heals the relay, the DLQ writer and every other holder at once.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<RwLock<FutureProducer>>,
    /// Kept to build a replacement client and to recreate topics.
    config: Arc<KafkaConfig>,
    /// How many times the client was replaced (a metric and a test hook).
    renewals: Arc<AtomicU64>,
    topics: Topics,
    timeout: Duration,
}

impl Producer {
    pub fn new(config: &KafkaConfig) -> Result<Self, BusError> {
        Ok(Self {
            inner: Arc::new(RwLock::new(create(config)?)),
            config: Arc::new(config.clone()),
            renewals: Arc::new(AtomicU64::new(0)),
            topics: Topics::new(config.topic_prefix.clone()),
            timeout: Duration::from_millis(config.message_timeout_ms),
        })
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The settings this producer was built from.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The current client (cheap: an `Arc` inside). A poisoned lock still holds a usable
    /// client: the only writer swaps one value.
    fn client(&self) -> FutureProducer {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
        let generation = self.renewals();
        match self.client().send(record, self.timeout).await {
            Ok(delivery) => Ok(Delivered {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _message)) => {
                self.heal_if_broken(generation, &error).await;
                Err(BusError::Kafka(error))
            }
        }
    }

    /// After a failed send: a client in a fatal state (an idempotent producer out of
    /// sequence after the broker came back empty), or one whose producer id the broker no
    /// longer honours ([`stale_producer`]: fenced, unknown), fails every later send until it
    /// is replaced, so it is replaced here, once per failed client — whoever sends (the
    /// relay, the API's callback ingress, the DLQ) heals it, and the caller's own retry goes
    /// out on the fresh one. Measured: without this the API answered 503 to every callback
    /// after a broker restart, first with a fatal error, later with `ProducerFenced`, which
    /// librdkafka does not raise as fatal (docs/RELIABILITY.md).
    async fn heal_if_broken(&self, generation: u64, error: &KafkaError) {
        let broken = match self.fatal_error() {
            Some(fatal) => fatal,
            None if stale_producer(error) => error.to_string(),
            None => return,
        };
        if self.renewals() != generation {
            return; // another sender already replaced the failed client
        }
        tracing::warn!(error = %broken, "producer unusable; replacing it");
        if let Err(error) = self.renew_from(generation).await {
            tracing::warn!(%error, "producer could not be replaced; the next failed send tries again");
        }
    }

    /// Waits for queued messages to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.client().flush(timeout)?;
        Ok(())
    }

    /// Whether a broker answers a metadata request within `timeout` (for `/readyz`).
    pub async fn is_reachable(&self, timeout: Duration) -> bool {
        let producer = self.client();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).is_ok())
            .await
            .unwrap_or(false)
    }

    /// The client's fatal error, if it has one: librdkafka then fails every send until the
    /// client is replaced (an idempotent producer fenced or out of sequence).
    pub fn fatal_error(&self) -> Option<String> {
        self.client()
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"))
    }

    /// Replaces the librdkafka client with a fresh one (new producer id, empty metadata
    /// cache), for every clone. Messages still queued in the old client fail (callers
    /// publish at least once and retry), so call it when nothing of yours is in flight.
    pub async fn renew(&self) -> Result<(), BusError> {
        self.renew_from(self.renewals()).await
    }

    /// [`Producer::renew`], unless the client was replaced since `generation` (a
    /// [`Producer::renewals`] reading): many senders failing at once replace it once.
    async fn renew_from(&self, generation: u64) -> Result<(), BusError> {
        let fresh = create(&self.config)?;
        let old = {
            let mut guard = self
                .inner
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if self.renewals.load(Ordering::Relaxed) != generation {
                return Ok(());
            }
            // Counted under the lock, so a second caller with the same reading stops above.
            self.renewals.fetch_add(1, Ordering::Relaxed);
            std::mem::replace(&mut *guard, fresh)
        };
        metrics::counter!("paygate_producer_renewals_total").increment(1);
        // Sends still waiting on the old client hold handles to it, so dropping ours would
        // leave them hanging until their message timeout (30 s): fail them now instead, and
        // their callers retry on the fresh client.
        old.purge(PurgeConfig::default().queue().inflight());
        // Dropping the last handle purges and flushes (up to 500 ms) and joins librdkafka's
        // threads: not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        Ok(())
    }

    /// How many times [`Producer::renew`] replaced the client.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }
}

/// Send errors that mean the broker no longer knows this client's producer id or epoch: it
/// restarted without its state or fenced the client. Retrying on the same client cannot
/// succeed.
fn stale_producer(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::ProducerFenced
                | Code::InvalidProducerEpoch
                | Code::UnknownProducerId
                | Code::InvalidProducerIdMapping
                | Code::OutOfOrderSequenceNumber
                | Code::Fenced
        )
    )
}

fn create(config: &KafkaConfig) -> Result<FutureProducer, BusError> {
    Ok(client_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("linger.ms", config.linger_ms.to_string())
        .create()?)
}

/// Settings every client shares, TLS and SASL (`[kafka.security]`) included.
pub(crate) fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "paygate")
        .set("log_level", "4");
    for (key, value) in config.security.librdkafka_properties() {
        client.set(key, value);
    }
    client
}
