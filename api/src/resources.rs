//! What the API shows: transactions, webhook endpoints and delivery attempts as JSON, ids in
//! their external `prefix_…` form, money as integer minor units with its currency.

use std::fmt;

use chrono::{DateTime, Utc};
use paygate_core::db::webhook_endpoints::{DeliveryAttempt, WebhookEndpoint};
use paygate_core::db::webhooks::{Redelivery, SigningSecret, WebhookEvent};
use paygate_core::domain::{
    DeliveryAttemptId, EventId, Failure, NextAction, Refund, RefundId, RefundState, Transaction,
    TransactionId, TransactionKind, TransactionStatus, WebhookEndpointId,
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
    /// `pending`, `submitting`, `submitted` and `retry_scheduled` are on their way;
    /// `succeeded` and `failed` are final. `unresolved` means a provider may have executed
    /// the payment and paygate cannot tell yet: **do not re-issue it** (the customer could be
    /// paid twice). paygate keeps asking the provider for up to 72 hours and an operator
    /// settles what remains; `transaction.succeeded` or `transaction.failed` follows.
    /// `requires_action`: send the customer to `next_action.url` (the provider's 3-D Secure
    /// or hosted page); the payment completes when they finish there, and fails
    /// (`action_expired`) if they do not within the gateway's time.
    pub status: TransactionStatus,
    /// Set only while `status` is `requires_action`.
    pub next_action: Option<NextAction>,
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
            next_action: t.next_action(),
            amount: t.money.amount.minor_units(),
            currency: t.money.currency.code().to_owned(),
            customer: t.customer.as_str().to_owned(),
            // The gateway that took (or is taking) it; before the first attempt, the one
            // the merchant asked for. The webhook payload shows the same.
            gateway: t
                .routed_gateway
                .as_ref()
                .or(t.gateway.as_ref())
                .map(|g| g.as_str().to_owned()),
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
    #[schema(schema_with = crate::validation::schema::amount)]
    pub amount: i64,
    /// ISO 4217 code, upper case.
    #[schema(value_type = paygate_core::domain::Currency)]
    pub currency: String,
    /// Your reference for the customer's account.
    #[schema(value_type = paygate_core::domain::CustomerReference)]
    pub customer: String,
    /// A configured gateway name; omitted, routing chooses.
    #[schema(value_type = Option<paygate_core::domain::GatewayName>)]
    pub gateway: Option<String>,
    /// Also notify this URL of the outcome (https).
    #[schema(schema_with = crate::validation::schema::callback_url)]
    pub callback_url: Option<String>,
    #[schema(schema_with = crate::validation::schema::metadata)]
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
    #[schema(schema_with = crate::validation::schema::endpoint_url)]
    pub url: String,
    #[schema(schema_with = crate::validation::schema::description)]
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

/// A webhook signing secret (`whsec_…`): the merchant's default secret (deliveries to a
/// transaction's `callback_url`) or, with `endpoint_id`, an endpoint's. `Debug` never prints
/// the secret.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookSecretResource {
    /// Always `webhook_secret`.
    #[schema(example = "webhook_secret")]
    pub object: String,
    /// The endpoint this secret signs for; null for the merchant's default secret.
    pub endpoint_id: Option<WebhookEndpointId>,
    /// The current signing secret. Verify `webhook-signature` with it (Standard Webhooks).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
    /// Only in a rotation's answer: until about this time the previous secret keeps
    /// signing too (a second, space-separated `v1,…` signature).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl WebhookSecretResource {
    pub fn new(
        secret: &SigningSecret,
        endpoint_id: Option<WebhookEndpointId>,
        previous_secret_expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            object: "webhook_secret".to_owned(),
            endpoint_id,
            secret: secret.expose().to_owned(),
            previous_secret_expires_at,
        }
    }
}

impl fmt::Debug for WebhookSecretResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecretResource")
            .field("endpoint_id", &self.endpoint_id)
            .field("secret", &"whsec_…")
            .field(
                "previous_secret_expires_at",
                &self.previous_secret_expires_at,
            )
            .finish()
    }
}

/// A webhook event: what paygate tells (and retells on redelivery) about a transaction's
/// outcome. `id` is the `webhook-id` header of every delivery of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookEventResource {
    pub id: EventId,
    /// Always `event`.
    #[schema(example = "event")]
    pub object: String,
    /// `transaction.succeeded`, `transaction.failed`, or `transaction.unresolved` (sent
    /// once when a provider may have executed the payment and paygate cannot tell yet: do
    /// not re-issue it; `.succeeded` or `.failed` follows when it is settled).
    #[serde(rename = "type")]
    #[schema(example = "transaction.succeeded")]
    pub event_type: String,
    pub transaction_id: TransactionId,
    pub created_at: DateTime<Utc>,
    /// The body every delivery of this event sends (`{type, id, created_at, data}`).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl From<&WebhookEvent> for WebhookEventResource {
    fn from(e: &WebhookEvent) -> Self {
        Self {
            id: e.id,
            object: "event".to_owned(),
            event_type: e.event_type.as_str().to_owned(),
            transaction_id: e.transaction_id,
            created_at: e.created_at,
            payload: serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The webhook events of a transaction, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookEventList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<WebhookEventResource>,
}

/// The answer to `POST /v1/events/{id}/redeliver`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RedeliveryResource {
    /// Always `redelivery`.
    #[schema(example = "redelivery")]
    pub object: String,
    pub event_id: EventId,
    /// 1 for the event's first redelivery, 2 for the next, and so on.
    pub generation: i32,
    /// Destinations a fresh delivery was scheduled to, due at once (the merchant's enabled
    /// endpoints and the transaction's `callback_url`); 0 when none is left.
    pub destinations_scheduled: usize,
}

impl From<&Redelivery> for RedeliveryResource {
    fn from(r: &Redelivery) -> Self {
        Self {
            object: "redelivery".to_owned(),
            event_id: r.event_id,
            generation: r.generation,
            destinations_scheduled: r.deliveries,
        }
    }
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

/// A merchant's balance, one entry per currency it holds or is receiving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BalanceResource {
    /// Always `balance`.
    #[schema(example = "balance")]
    pub object: String,
    pub balances: Vec<BalanceAmount>,
}

/// One currency of the balance, in integer minor units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BalanceAmount {
    /// ISO 4217 code.
    #[schema(example = "USD")]
    pub currency: String,
    /// What withdrawals may spend now: posted money not held by a withdrawal in flight.
    #[schema(example = 90000)]
    pub available: i64,
    /// Held by withdrawals in flight: taken when they succeed, available again when they fail.
    #[schema(example = 10000)]
    pub reserved: i64,
    /// Deposits accepted and not yet succeeded: not spendable until they do.
    #[schema(example = 5000)]
    pub pending: i64,
}

impl From<Vec<paygate_core::db::ledger::Balance>> for BalanceResource {
    fn from(balances: Vec<paygate_core::db::ledger::Balance>) -> Self {
        Self {
            object: "balance".to_owned(),
            balances: balances
                .into_iter()
                .map(|b| BalanceAmount {
                    currency: b.currency,
                    available: b.available,
                    reserved: b.reserved,
                    pending: b.pending,
                })
                .collect(),
        }
    }
}

/// An entry on the merchant's ledger account: money in (amount > 0) or out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntryResource {
    /// `le_<number>`; entries are numbered in the order they were written.
    #[schema(example = "le_42")]
    pub id: String,
    /// Always `balance_transaction`.
    #[schema(example = "balance_transaction")]
    pub object: String,
    /// `deposit` (a deposit succeeded), `withdrawal` (a withdrawal succeeded), `refund` (a
    /// refund of a deposit succeeded; `transaction` is the deposit) or `top_up` (funds added
    /// by an operator).
    #[serde(rename = "type")]
    #[schema(example = "deposit")]
    pub kind: String,
    /// The transaction this entry belongs to (`null` for a top-up).
    pub transaction: Option<TransactionId>,
    /// The operator's reference of a top-up (`null` otherwise).
    pub reference: Option<String>,
    /// Integer minor units: positive credits the balance, negative debits it.
    #[schema(example = 1050)]
    pub amount: i64,
    #[schema(example = "USD")]
    pub currency: String,
    /// The posted balance in this currency right after this entry.
    pub balance_after: i64,
    pub created_at: DateTime<Utc>,
}

impl From<&paygate_core::db::ledger::Entry> for LedgerEntryResource {
    fn from(e: &paygate_core::db::ledger::Entry) -> Self {
        Self {
            id: e.id.to_string(),
            object: "balance_transaction".to_owned(),
            kind: e.kind.as_str().to_owned(),
            transaction: e.transaction,
            reference: e.reference.clone(),
            amount: e.amount,
            currency: e.currency.clone(),
            balance_after: e.balance_after,
            created_at: e.created_at,
        }
    }
}

/// A page of ledger entries, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntryList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<LedgerEntryResource>,
    /// Whether older entries follow; pass the last id as `starting_after` to get them.
    pub has_more: bool,
}

/// A refund of a succeeded deposit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RefundResource {
    pub id: RefundId,
    /// Always `refund`.
    #[schema(example = "refund")]
    pub object: String,
    /// The refunded deposit.
    pub transaction: TransactionId,
    /// Integer minor units, in the deposit's currency.
    #[schema(example = 500, minimum = 1)]
    pub amount: i64,
    #[schema(example = "USD")]
    pub currency: String,
    /// `pending` (accepted, the amount is held on your balance) and `submitted` (the
    /// provider is executing it) are on their way; `succeeded` (the customer has the money
    /// back; your balance is debited) and `failed` (the hold is released) are final. A
    /// refund left `submitted` for long waits for the provider's callback: paygate cannot
    /// ask providers about refunds.
    pub status: RefundState,
    /// As given at creation (at most 500 characters).
    pub reason: Option<String>,
    /// Why it failed (set only when `failed`).
    pub failure: Option<Failure>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Refund> for RefundResource {
    fn from(r: &Refund) -> Self {
        Self {
            id: r.id,
            object: "refund".to_owned(),
            transaction: r.transaction_id,
            amount: r.money.amount.minor_units(),
            currency: r.money.currency.code().to_owned(),
            status: r.status,
            reason: r.reason.clone(),
            failure: if r.status == RefundState::Failed {
                r.failure.clone()
            } else {
                None
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The body of `POST /v1/transactions/{id}/refunds`. Unknown fields are refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRefundRequest {
    /// Positive integer minor units in the deposit's currency, at most what is left to
    /// refund of it (its amount less its refunds that have not failed). Absent: all that
    /// is left.
    #[schema(schema_with = crate::validation::schema::optional_amount)]
    pub amount: Option<i64>,
    #[schema(schema_with = crate::validation::schema::reason)]
    pub reason: Option<String>,
}

/// A deposit's refunds, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefundList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<RefundResource>,
    /// Whether more than the 100 listed exist (the oldest 100 are shown).
    pub has_more: bool,
}
