//! What the API shows: transactions, webhook endpoints and delivery attempts as JSON, ids in
//! their external `prefix_…` form, money as integer minor units with its currency.

use chrono::{DateTime, Utc};
use paygate_core::db::webhook_endpoints::{DeliveryAttempt, WebhookEndpoint};
use paygate_core::domain::{
    DeliveryAttemptId, EventId, Failure, Transaction, TransactionId, TransactionKind,
    TransactionStatus, WebhookEndpointId,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A deposit or withdrawal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionResource {
    pub id: TransactionId,
    /// Always `transaction`.
    #[schema(example = "transaction")]
    pub object: String,
    #[serde(rename = "type")]
    pub kind: TransactionKind,
    /// Integer minor units: 1050 is 10.50 USD.
    #[schema(example = 1050)]
    pub amount: i64,
    /// ISO 4217 code.
    #[schema(example = "USD")]
    pub currency: String,
    /// The merchant's reference for the customer account.
    pub customer: String,
    /// The gateway asked for, or chosen by routing once processed.
    pub gateway: Option<String>,
    pub status: TransactionStatus,
    /// Provider calls made so far.
    pub attempts: i32,
    pub provider_reference: Option<String>,
    pub failure: Option<Failure>,
    pub callback_url: Option<String>,
    /// As given at creation.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Transaction> for TransactionResource {
    fn from(t: &Transaction) -> Self {
        Self {
            id: t.id,
            object: "transaction".to_owned(),
            kind: t.kind,
            amount: t.money.amount.minor_units(),
            currency: t.money.currency.code().to_owned(),
            customer: t.customer.as_str().to_owned(),
            gateway: t.gateway.as_ref().map(|g| g.as_str().to_owned()),
            status: t.status,
            attempts: t.attempts,
            provider_reference: t.provider_reference.clone(),
            failure: t.failure.clone(),
            callback_url: t.callback_url.clone(),
            metadata: t.metadata.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// The body of `POST /v1/deposits` and `POST /v1/withdrawals`. Unknown fields are refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransactionRequest {
    /// Positive integer minor units (1050 is 10.50 USD). Floats, zero, negatives and values
    /// beyond a 64-bit integer are refused.
    #[schema(example = 1050, minimum = 1)]
    pub amount: i64,
    /// ISO 4217 code, upper case.
    #[schema(example = "USD")]
    pub currency: String,
    /// Your reference for the customer's account (1 to 128 characters).
    #[schema(example = "cust_8812")]
    pub customer: String,
    /// A configured gateway name; omitted, routing chooses.
    pub gateway: Option<String>,
    /// Also notify this URL of the outcome (https).
    pub callback_url: Option<String>,
    /// Up to 20 keys of at most 40 characters; values strings (at most 500 characters),
    /// numbers, booleans or null.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A page of transactions, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransactionList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<TransactionResource>,
    /// Whether older transactions follow; pass the last id as `starting_after` to get them.
    pub has_more: bool,
}

/// A registered webhook endpoint (the secret is shown only in the creation response).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookEndpointResource {
    pub id: WebhookEndpointId,
    /// Always `webhook_endpoint`.
    pub object: String,
    pub url: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    /// The signing secret, `whsec_…`: present only in the response that created the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl WebhookEndpointResource {
    pub fn without_secret(endpoint: &WebhookEndpoint) -> Self {
        Self {
            id: endpoint.id,
            object: "webhook_endpoint".to_owned(),
            url: endpoint.url.clone(),
            description: endpoint.description.clone(),
            enabled: endpoint.enabled(),
            created_at: endpoint.created_at,
            secret: None,
        }
    }

    pub fn with_secret(endpoint: &WebhookEndpoint) -> Self {
        Self {
            secret: Some(endpoint.secret.expose().to_owned()),
            ..Self::without_secret(endpoint)
        }
    }
}

/// The body of `POST /v1/webhook-endpoints`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpointRequest {
    /// Where to deliver events: https.
    #[schema(example = "https://merchant.example/paygate/webhooks")]
    pub url: String,
    /// A note for yourself (at most 500 characters).
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookEndpointList {
    pub object: String,
    pub data: Vec<WebhookEndpointResource>,
}

/// The answer to `DELETE /v1/webhook-endpoints/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeletedResource {
    pub id: WebhookEndpointId,
    pub object: String,
    pub deleted: bool,
}

/// One attempt to deliver an event about a transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttemptResource {
    pub id: DeliveryAttemptId,
    /// Always `delivery_attempt`.
    pub object: String,
    /// The `webhook-id` the merchant dedupes by.
    pub event_id: EventId,
    /// The endpoint, or null for the transaction's own `callback_url`.
    pub endpoint_id: Option<WebhookEndpointId>,
    pub url: String,
    /// 1 for the first attempt.
    pub attempt: i32,
    /// The HTTP status the endpoint answered, if it answered.
    pub status_code: Option<i32>,
    pub latency_ms: Option<i32>,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<&DeliveryAttempt> for DeliveryAttemptResource {
    fn from(d: &DeliveryAttempt) -> Self {
        Self {
            id: d.id,
            object: "delivery_attempt".to_owned(),
            event_id: d.attempt.event_id,
            endpoint_id: d.attempt.endpoint_id,
            url: d.attempt.url.clone(),
            attempt: d.attempt.attempt,
            status_code: d.attempt.status_code,
            latency_ms: d.attempt.latency_ms,
            response_excerpt: d.attempt.response_excerpt.clone(),
            error: d.attempt.error.clone(),
            created_at: d.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttemptList {
    pub object: String,
    pub data: Vec<DeliveryAttemptResource>,
}

/// The answer to an accepted provider callback.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CallbackAccepted {
    pub received: bool,
}

/// `/healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `/readyz`: each dependency `ok` or `down`; overall `ok`, `degraded` (Redis or Kafka down:
/// payments are still accepted into the outbox, 200) or `unavailable` (Postgres down, 503).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    pub checks: ReadinessChecks,
    /// Outbox rows not yet published to Kafka.
    pub outbox_backlog: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReadinessChecks {
    pub postgres: String,
    pub redis: String,
    pub kafka: String,
}
