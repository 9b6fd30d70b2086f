//! The dead-letter queue reader against a real Kafka-protocol broker (tansu), each test with
//! its own topic prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use paygate_core::bus::dlq;
use paygate_core::bus::events::{Body, DeadLetter, Envelope, TransactionPending};
use paygate_core::bus::{ensure_topics, Producer, Topic};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_counts_the_dlq_and_reads_the_newest_messages_readably() -> TestResult {
    let config = paygate_core::testing::isolated_kafka(2);
    ensure_topics(&config).await?;
    let empty = dlq::peek(&config, 10).await?;
    assert_eq!((empty.count, empty.messages.len()), (0, 0));

    let producer = Producer::new(&config)?;
    let original = Envelope::new(Body::TransactionPending(TransactionPending {
        transaction_id: "txn_0190aaaa".into(),
        version: 4,
    }))
    .encode_to_bytes();
    let letter = Envelope::new(Body::DeadLetter(DeadLetter {
        source_topic: format!("{}.transactions.pending", config.topic_prefix),
        partition: 1,
        offset: 41,
        key: b"txn_0190aaaa".to_vec(),
        payload: original,
        reason: "no such transaction".into(),
        consumer_group: format!("{}.payment-processor", config.group_prefix),
    }))
    .encode_to_bytes();
    let messages: [(&str, Vec<u8>); 3] = [
        ("txn_0190aaaa", letter),
        ("plain", b"not an envelope".to_vec()),
        ("binary", vec![0xff, 0x00, 0x7f]),
    ];
    for (key, payload) in &messages {
        let mut headers = BTreeMap::new();
        headers.insert("traceparent".to_owned(), format!("trace-of-{key}"));
        producer.send(Topic::Dlq, key, payload, &headers).await?;
        // Distinct timestamps, so "newest" is well defined.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let view = dlq::peek(&config, 10).await?;
    assert_eq!(view.count, 3);
    assert!(view.complete);
    let keys: Vec<Option<&str>> = view.messages.iter().map(|m| m.key.as_deref()).collect();
    assert_eq!(
        keys,
        vec![Some("binary"), Some("plain"), Some("txn_0190aaaa")],
        "newest first"
    );
    let binary = &view.messages[0];
    assert_eq!(binary.payload, "hex ff007f");
    assert_eq!(
        binary.headers,
        vec![("traceparent".to_owned(), "trace-of-binary".to_owned())]
    );
    assert_eq!(binary.reason, None);
    assert!(binary.timestamp.is_some());
    assert_eq!(view.messages[1].payload, "not an envelope");
    let dead = &view.messages[2];
    assert_eq!(dead.reason.as_deref(), Some("no such transaction"));
    assert_eq!(
        dead.source_topic,
        Some(format!("{}.transactions.pending", config.topic_prefix))
    );
    assert!(
        dead.payload
            .contains("transaction pending txn_0190aaaa (version 4)"),
        "{}",
        dead.payload
    );
    assert!(
        dead.payload.contains("partition 1 offset 41"),
        "{}",
        dead.payload
    );

    // The newest one only; the count is still all of them, and nothing was consumed.
    let newest = dlq::peek(&config, 1).await?;
    assert_eq!(newest.count, 3);
    assert_eq!(newest.messages.len(), 1);
    assert_eq!(newest.messages[0].key.as_deref(), Some("binary"));
    let again = dlq::peek(&config, 10).await?;
    assert_eq!(again.messages, view.messages);
    Ok(())
}
