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
