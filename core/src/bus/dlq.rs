//! Reading the dead-letter queue for the console, without consuming it.
//!
//! How messages get there: the consumer runner ([`super::ConsumerRunner`]) sends a message
//! its handler rejects ([`super::HandlerError::Reject`]: undecodable, a transaction or refund
//! that does not exist, a callback that can never be settled) to the `dlq` topic, keyed as the
//! original, with the original's headers (`traceparent`…), as an [`Envelope`] whose body is a
//! [`DeadLetter`]: the source topic, partition and offset, the consumer group, the reason and
//! the original key and bytes whole.
//!
//! [`peek`] assigns itself the topic's partitions (no consumer group is joined, no offset is
//! committed), reads the newest messages of each, and gives up after [`PEEK_TIMEOUT`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::events::{Body, DeadLetter, Envelope};
use super::{BusError, Topic, Topics};
use crate::config::KafkaConfig;

/// The longest a [`peek`] takes; what was read by then is returned.
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most messages one [`peek`] returns.
pub const MAX_LIMIT: usize = 500;
/// Raw bytes shown at most (as hex or text) per payload.
const MAX_RAW_BYTES: usize = 4096;
/// How deep dead letters inside dead letters are unwrapped.
const MAX_DEPTH: u8 = 3;

/// The dead-letter queue at a glance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqView {
    /// Messages held: the sum over partitions of high − low watermark.
    pub count: u64,
    /// The newest messages, newest first.
    pub messages: Vec<DlqMessage>,
    /// False when [`PEEK_TIMEOUT`] ran out before every wanted message was read.
    pub complete: bool,
}

/// One dead-lettered message, readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqMessage {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<DateTime<Utc>>,
    /// The key as text (lossy UTF-8).
    pub key: Option<String>,
    /// Header names and values (lossy UTF-8), in the order sent.
    pub headers: Vec<(String, String)>,
    /// The payload in words: the decoded envelope when it is one, else the text or hex.
    pub payload: String,
    /// For a [`DeadLetter`]: why it was rejected, and where it came from.
    pub reason: Option<String>,
    pub source_topic: Option<String>,
}

/// The DLQ's size and its newest `limit` messages (at most [`MAX_LIMIT`]).
pub async fn peek(kafka: &KafkaConfig, limit: usize) -> Result<DlqView, BusError> {
    let config = kafka.clone();
    let limit = limit.min(MAX_LIMIT);
    tokio::task::spawn_blocking(move || peek_blocking(&config, limit))
        .await
        .map_err(|e| BusError::Other(format!("DLQ reader stopped: {e}")))?
}

fn peek_blocking(config: &KafkaConfig, limit: usize) -> Result<DlqView, BusError> {
    let deadline = Instant::now() + PEEK_TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now());
    let topic = Topics::new(config.topic_prefix.clone()).name(Topic::Dlq);
    // librdkafka's `assign` needs a `group.id`, but an assignment (unlike a subscription)
    // never joins the group, and nothing is committed: no service's group is touched.
    let consumer: BaseConsumer = super::producer::client_config(config)
        .set(
            "group.id",
            format!("{}.console-dlq-peek", config.group_prefix),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic.as_str()), left())?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let wanted = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut count: u64 = 0;
    // Per partition: the offset one past the last message to read.
    let mut until = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, left())?;
        let held = high.saturating_sub(low).max(0);
        count = count.saturating_add(u64::try_from(held).unwrap_or(0));
        if held == 0 || wanted == 0 {
            continue;
        }
        let start = high.saturating_sub(wanted).max(low);
        assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
        until.insert(partition, high);
    }
    let mut messages = Vec::new();
    if !until.is_empty() {
        consumer.assign(&assignment)?;
    }
    while !until.is_empty() && !left().is_zero() {
        let Some(polled) = consumer.poll(left()) else {
            continue;
        };
        let message = polled?;
        let partition = message.partition();
        let offset = message.offset();
        if let Some(&end) = until.get(&partition) {
            if offset.saturating_add(1) >= end {
                until.remove(&partition);
            }
            messages.push(readable(&message));
        }
    }
    messages.sort_by(|a: &DlqMessage, b: &DlqMessage| {
        (b.timestamp, b.offset, b.partition).cmp(&(a.timestamp, a.offset, a.partition))
    });
    messages.truncate(limit);
    Ok(DlqView {
        count,
        messages,
        complete: until.is_empty(),
    })
}

fn readable<M: Message>(message: &M) -> DlqMessage {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                    (h.key.to_owned(), value.into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let bytes = message.payload().unwrap_or_default();
    let letter = match Envelope::decode_checked(bytes) {
        Ok(Envelope {
            body: Some(Body::DeadLetter(letter)),
            ..
        }) => Some(letter),
        _ => None,
    };
    DlqMessage {
        partition: message.partition(),
        offset: message.offset(),
        timestamp: message
            .timestamp()
            .to_millis()
            .and_then(DateTime::from_timestamp_millis),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        payload: describe(bytes, 0),
        reason: letter.as_ref().map(|l| l.reason.clone()),
        source_topic: letter.map(|l| l.source_topic),
    }
}

/// Bytes in words: an envelope decoded with the project's own types, else text or hex.
pub fn describe(bytes: &[u8], depth: u8) -> String {
    match Envelope::decode_checked(bytes) {
        Ok(envelope) if depth <= MAX_DEPTH => describe_envelope(&envelope, depth),
        _ => raw(bytes),
    }
}

fn describe_envelope(envelope: &Envelope, depth: u8) -> String {
    let at = DateTime::from_timestamp_millis(envelope.occurred_at_unix_ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| envelope.occurred_at_unix_ms.to_string());
    let mut out = format!(
        "event {} at {at} (schema {}): ",
        envelope.event_id, envelope.schema_version
    );
    // Writing to a String cannot fail.
    let _ = match &envelope.body {
        None => write!(out, "no body"),
        Some(Body::TransactionPending(p)) => write!(
            out,
            "transaction pending {} (version {})",
            p.transaction_id, p.version
        ),
        Some(Body::TransactionCompleted(c)) => write!(
            out,
            "transaction completed {} of merchant {}: {} (version {})",
            c.transaction_id, c.merchant_id, c.status, c.version
        ),
        Some(Body::RefundPending(r)) => {
            write!(
                out,
                "refund pending {} (version {})",
                r.refund_id, r.version
            )
        }
        Some(Body::RefundCompleted(r)) => write!(
            out,
            "refund completed {} of merchant {}: {} (version {})",
            r.refund_id, r.merchant_id, r.status, r.version
        ),
        Some(Body::CallbackReceived(c)) => {
            let mut headers: Vec<_> = c.headers.iter().collect();
            headers.sort();
            write!(
                out,
                "callback received from {} at {} ({}, path {:?}, headers {:?}): {}",
                c.gateway,
                c.received_at_unix_ms,
                c.content_type,
                c.path,
                headers,
                raw(&c.body)
            )
        }
        Some(Body::DeadLetter(letter)) => write!(out, "{}", describe_letter(letter, depth)),
    };
    out
}

fn describe_letter(letter: &DeadLetter, depth: u8) -> String {
    format!(
        "dead letter from {} partition {} offset {} (group {}), key {:?}: {}\noriginal: {}",
        letter.source_topic,
        letter.partition,
        letter.offset,
        letter.consumer_group,
        String::from_utf8_lossy(&letter.key),
        letter.reason,
        describe(&letter.payload, depth.saturating_add(1))
    )
}

/// Text when the bytes are printable UTF-8, else hex; at most [`MAX_RAW_BYTES`] of them.
fn raw(bytes: &[u8]) -> String {
    let shown = bytes.get(..MAX_RAW_BYTES).unwrap_or(bytes);
    let more = if shown.len() < bytes.len() {
        format!("… ({} bytes in all)", bytes.len())
    } else {
        String::new()
    };
    match std::str::from_utf8(shown) {
        Ok(text) if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) => {
            format!("{text}{more}")
        }
        _ => format!("hex {}{more}", hex::encode(shown)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::events::TransactionPending;

    #[test]
    fn a_dead_letter_reads_with_its_reason_and_original() {
        let original = Envelope::new(Body::TransactionPending(TransactionPending {
            transaction_id: "txn_1".into(),
            version: 3,
        }))
        .encode_to_bytes();
        let letter = Envelope::new(Body::DeadLetter(DeadLetter {
            source_topic: "p.transactions.pending".into(),
            partition: 1,
            offset: 7,
            key: b"txn_1".to_vec(),
            payload: original,
            reason: "no such transaction".into(),
            consumer_group: "p.payment-processor".into(),
        }))
        .encode_to_bytes();
        let text = describe(&letter, 0);
        assert!(text.contains("dead letter from p.transactions.pending partition 1 offset 7"));
        assert!(text.contains("no such transaction"));
        assert!(
            text.contains("transaction pending txn_1 (version 3)"),
            "{text}"
        );
        assert_eq!(describe(b"plain words", 0), "plain words");
        assert_eq!(describe(&[0xff, 0x00, 0x01], 0), "hex ff0001");
    }
}
