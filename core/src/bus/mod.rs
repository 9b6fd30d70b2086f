//! Kafka: topics, the idempotent producer, topic creation, the consumer runner, and the
//! versioned protobuf events that travel on it.

mod admin;
mod consumer;
pub mod dlq;
pub mod events;
pub mod offsets;
mod producer;
pub mod relay;
pub mod reset;
mod topics;
pub mod trace;

pub use admin::{create_missing_topics, create_topic, delete_topic, ensure_topics};
pub use consumer::{
    consumer_client_config, ConsumerProbe, ConsumerRunner, ConsumerSettings, Delivery,
    GroupProgress, Handler, HandlerError,
};
pub use producer::{Delivered, Producer};
pub use relay::{OutboxRelay, RelayHealth, RelaySettings};
pub use topics::{Topic, Topics};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("could not create topic {topic}: {code}")]
    TopicCreation { topic: String, code: String },
    #[error("{0}")]
    Other(String),
}
