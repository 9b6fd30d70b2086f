//! Explicit topic creation at start-up: brokers (tansu among them) may not auto-create.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::producer::client_config;
use super::{BusError, Topic, Topics};
use crate::config::KafkaConfig;

/// Creates the four topics with the configured partitions, treating "already exists" as
/// success, then waits until the broker lists them all.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), BusError> {
    let admin: std::sync::Arc<AdminClient<DefaultClientContext>> =
        std::sync::Arc::new(client_config(config).create()?);
    let topics = Topics::new(config.topic_prefix.clone());
    let names: Vec<String> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(BusError::TopicCreation {
                    topic: name,
                    code: code.to_string(),
                })
            }
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let client = admin.clone();
        let listed: Vec<String> = tokio::task::spawn_blocking(move || {
            client
                .inner()
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
        })
        .await
        .map_err(|e| BusError::Other(e.to_string()))??;
        if names.iter().all(|n| listed.contains(n)) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BusError::Other(format!(
                "topics not visible after creation: {names:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
