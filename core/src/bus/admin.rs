//! Explicit topic creation at start-up: brokers (tansu among them) may not auto-create.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::producer::client_config;
use super::{BusError, Topic, Topics};
use crate::config::KafkaConfig;

type Admin = Arc<AdminClient<DefaultClientContext>>;

/// Makes sure the four topics exist: creates the missing ones with the configured
/// partitions ("already exists" from a racing process is success), then waits until the
/// broker lists them all. When they all exist already, no admin request is made (so a
/// broker without CreateTopics, such as librdkafka's mock cluster with pre-made topics, works).
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), BusError> {
    create_missing_topics(config).await.map(|_| ())
}

/// As [`ensure_topics`], returning how many topics had to be created. More than zero on a
/// broker that served us before means it lost its state (restarted empty): producers and
/// consumers holding its old metadata and producer ids should start afresh.
pub async fn create_missing_topics(config: &KafkaConfig) -> Result<usize, BusError> {
    let admin: Admin = Arc::new(client_config(config).create()?);
    let topics = Topics::new(config.topic_prefix.clone());
    let names: Vec<String> = Topic::ALL.iter().map(|t| topics.name(*t)).collect();
    let listed = list_topics(&admin).await?;
    let missing: Vec<&String> = names.iter().filter(|n| !listed.contains(n)).collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let created = missing.len();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    create(&admin, &new_topics).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let listed = list_topics(&admin).await?;
        if names.iter().all(|n| listed.contains(n)) {
            tracing::info!(created, "created missing topics");
            return Ok(created);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BusError::Other(format!(
                "topics not visible after creation: {names:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates one topic by full name (`paygate bench broker`'s scratch topics; the four
/// pipeline topics go through [`ensure_topics`]). "Already exists" is success.
pub async fn create_topic(
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
) -> Result<(), BusError> {
    let admin: Admin = Arc::new(client_config(config).create()?);
    let topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(config.replication_factor),
    );
    create(&admin, &[topic]).await
}

/// Creates `topics`; "already exists" (a racing process made it) is success.
async fn create(admin: &Admin, topics: &[NewTopic<'_>]) -> Result<(), BusError> {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::TopicCreation {
                    topic,
                    code: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Deletes one topic by full name ("unknown topic" is success: it is gone either way).
pub async fn delete_topic(config: &KafkaConfig, name: &str) -> Result<(), BusError> {
    let admin: Admin = Arc::new(client_config(config).create()?);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.delete_topics(&[name], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(BusError::Other(format!(
                    "could not delete topic {topic}: {code}"
                )))
            }
        }
    }
    Ok(())
}

async fn list_topics(admin: &Admin) -> Result<Vec<String>, BusError> {
    let client = admin.clone();
    tokio::task::spawn_blocking(move || {
        client
            .inner()
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
    })
    .await
    .map_err(|e| BusError::Other(e.to_string()))?
    .map_err(BusError::from)
}
