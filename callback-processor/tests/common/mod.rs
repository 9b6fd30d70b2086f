//! Shared set-up for the callback processor's integration tests: a fresh database, unique
//! Redis and Kafka prefixes, the three real connectors, transactions in a chosen state, and
//! callbacks signed with the connectors' own helpers. Isolation and the processor's
//! start-up come from `paygate-testkit`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use paygate_callback_processor::callback_log::{self, Entry};
use paygate_callback_processor::SettleWriter;
use paygate_core::announce;
use paygate_core::bus::events::{Body, CallbackReceived, Envelope};
use paygate_core::bus::trace::{TraceParent, TRACEPARENT};
use paygate_core::bus::{
    ensure_topics, ConsumerRunner, ConsumerSettings, Delivery, Handler, HandlerError, Producer,
    Topic,
};
use paygate_core::config::{Config, GatewayConfig};
use paygate_core::db::webhooks::{self, EventType, WebhookEvent};
use paygate_core::db::{merchants, transactions};
use paygate_core::domain::{
    CustomerReference, EventId, GatewayName, MerchantId, Money, NewTransaction, RefundId,
    RefundState, Transaction, TransactionId, TransactionKind, TransactionStatus,
};
use paygate_gateways::{
    json, protobuf, soap, CallbackFields, GatewayRegistry, ReportedStatus, Secret, SignedCallback,
};
use paygate_testkit::{isolated_config, unique_name};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WEBHOOK_SECRET: &str = "whsec_callback_processor_tests";

/// One callback wire format, served by one configured gateway of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Soap,
    Protobuf,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Json, Format::Soap, Format::Protobuf];

    pub fn kind(self) -> &'static str {
        match self {
            Format::Json => "sandbox-json",
            Format::Soap => "sandbox-soap",
            Format::Protobuf => "sandbox-proto",
        }
    }

    pub fn gateway(self) -> GatewayName {
        GatewayName::parse(&format!("cb-{}", self.kind())).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A callback signed exactly as the provider signs it.
    pub fn sign(self, fields: &CallbackFields) -> SignedCallback {
        let secret = Secret::new(WEBHOOK_SECRET);
        match self {
            Format::Json => json::signed_callback(&secret, fields),
            Format::Soap => soap::signed_callback(&secret, fields),
            Format::Protobuf => protobuf::signed_callback(&secret, fields),
        }
    }
}

pub struct Harness {
    pub config: Config,
    pub pool: PgPool,
    /// Settling statements by group commit, as the handler writes them.
    pub writer: SettleWriter,
    pub registry: GatewayRegistry,
    pub merchant: MerchantId,
    pub producer: Producer,
    pub redis: ConnectionManager,
}

impl Harness {
    pub async fn new() -> anyhow::Result<Self> {
        let (mut config, pool) = isolated_config().await?;
        for format in Format::ALL {
            let mut table = GatewayConfig::new(
                format.kind(),
                "http://127.0.0.1:9/",
                "sk_callback_processor_tests",
            );
            table.webhook_secret = Some(WEBHOOK_SECRET.into());
            config.gateways.insert(format.gateway().to_string(), table);
        }
        // Short lock waits keep a contended test quick; retries back off in the runner.
        config.callbacks.lock_wait = Duration::from_millis(2_000);
        config.outbox.poll = Duration::from_millis(50);
        let registry = GatewayRegistry::from_config(&config.gateways)?;
        ensure_topics(&config.kafka).await?;
        let producer = Producer::new(&config.kafka)?;
        let redis = ConnectionManager::new(redis::Client::open(config.redis.url.as_str())?).await?;
        let merchant = merchants::create(&pool, "Callback Tests").await?.id;
        Ok(Self {
            writer: SettleWriter::start(pool.clone(), config.callbacks.settle_batch_max),
            config,
            pool,
            registry,
            merchant,
            producer,
            redis,
        })
    }

    /// A 10.50 USD deposit routed to `format`'s gateway and moved to `status` through the
    /// state machine (`pending → submitting → submitted`, or on to `retry_scheduled`).
    pub async fn transaction(
        &self,
        format: Format,
        status: TransactionStatus,
    ) -> anyhow::Result<Transaction> {
        self.transaction_with_callback(format, status, None).await
    }

    /// [`Harness::transaction`], created with `callback_url` (a webhook destination besides
    /// the merchant's endpoints).
    pub async fn transaction_with_callback(
        &self,
        format: Format,
        status: TransactionStatus,
        callback_url: Option<&str>,
    ) -> anyhow::Result<Transaction> {
        let tx = Transaction::create(
            NewTransaction {
                merchant_id: self.merchant,
                kind: TransactionKind::Deposit,
                money: Money::from_parts(1050, "USD")?,
                customer: CustomerReference::parse("cust_42")?,
                gateway: None,
                callback_url: callback_url.map(str::to_owned),
                metadata: serde_json::json!({}),
            },
            Utc::now(),
        );
        transactions::insert(&self.pool, &tx, None, &announce::pending(&tx, None)).await?;
        let path: &[TransactionStatus] = match status {
            TransactionStatus::Pending => &[],
            TransactionStatus::Submitting => &[TransactionStatus::Submitting],
            TransactionStatus::Submitted => {
                &[TransactionStatus::Submitting, TransactionStatus::Submitted]
            }
            TransactionStatus::RetryScheduled => &[
                TransactionStatus::Submitting,
                TransactionStatus::RetryScheduled,
            ],
            other => bail!("tests do not start transactions in {other}"),
        };
        let mut current = tx;
        for next in path {
            let mut update = current.advance(*next, Utc::now())?;
            if *next == TransactionStatus::Submitting {
                update = update.start_attempt().routed_to(format.gateway());
            }
            if *next == TransactionStatus::RetryScheduled {
                update = update
                    .retry_at(Utc::now() + chrono::Duration::minutes(5))
                    .failure("ambiguous", "timed out");
            }
            current = transactions::apply(&self.pool, &update)
                .await?
                .ok_or_else(|| anyhow!("setup update lost a version race"))?;
        }
        Ok(current)
    }

    pub async fn reload(&self, id: TransactionId) -> anyhow::Result<Transaction> {
        transactions::get(&self.pool, id)
            .await?
            .ok_or_else(|| anyhow!("transaction {id} vanished"))
    }

    pub async fn log(&self, id: TransactionId) -> anyhow::Result<Vec<Entry>> {
        Ok(callback_log::for_transaction(&self.pool, id).await?)
    }

    /// The webhook events recorded for `id`, oldest first (a refund's events are listed
    /// under the refunded payment).
    pub async fn events(&self, id: TransactionId) -> anyhow::Result<Vec<WebhookEvent>> {
        Ok(webhooks::events_for_transaction(&self.pool, id).await?)
    }

    /// The one webhook event recorded for `id`, checked to be the one telling the merchant
    /// that it reached `status`: its deterministic id, its type, this merchant, and a body
    /// whose `data` is this transaction in `status`. Fails when there is none, or more.
    pub async fn the_event(
        &self,
        id: TransactionId,
        status: TransactionStatus,
    ) -> anyhow::Result<WebhookEvent> {
        let event_type = EventType::for_status(status)
            .ok_or_else(|| anyhow!("merchants are not told of {status}"))?;
        let event = self.only_event(id).await?;
        ensure!(
            event.id == webhooks::event_id_for(id, status),
            "{id}: event {} is not the one for {status}",
            event.id
        );
        check_event(&event, event_type, self.merchant, id)?;
        let data = payload_data(&event, event_type)?;
        ensure!(
            data["id"] == id.to_string() && data["status"] == status.as_str(),
            "{id}: the event's data is not this transaction in {status}: {data}"
        );
        Ok(event)
    }

    /// The one webhook event recorded for `transaction` (the refunded payment), checked to
    /// be the one telling the merchant that `refund` reached `status`.
    pub async fn the_refund_event(
        &self,
        transaction: TransactionId,
        refund: RefundId,
        status: RefundState,
    ) -> anyhow::Result<WebhookEvent> {
        let event_type = match status {
            RefundState::Succeeded => EventType::RefundSucceeded,
            RefundState::Failed => EventType::RefundFailed,
            other => bail!("merchants are not told of refund {other}"),
        };
        let event = self.only_event(transaction).await?;
        ensure!(
            event.id == webhooks::event_id_for_refund(refund, status),
            "{refund}: event {} is not the one for {}",
            event.id,
            status.as_str()
        );
        check_event(&event, event_type, self.merchant, transaction)?;
        let data = payload_data(&event, event_type)?;
        ensure!(
            data["id"] == refund.to_string()
                && data["transaction"] == transaction.to_string()
                && data["status"] == status.as_str(),
            "{refund}: the event's data is not this refund in {}: {data}",
            status.as_str()
        );
        Ok(event)
    }

    async fn only_event(&self, id: TransactionId) -> anyhow::Result<WebhookEvent> {
        let mut events = self.events(id).await?;
        ensure!(
            events.len() == 1,
            "{id}: expected exactly one webhook event, found {}: {events:?}",
            events.len()
        );
        Ok(events.remove(0))
    }

    /// The delivery rows scheduled for `event`, in order.
    pub async fn deliveries(&self, event: EventId) -> anyhow::Result<Vec<webhooks::Delivery>> {
        Ok(webhooks::deliveries_for_event(&self.pool, event).await?)
    }

    /// Outbox rows on the retired `transactions.completed` topic, published or not: a
    /// settlement records its webhook event itself now and writes none.
    pub async fn completed_in_outbox(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE topic = 'transactions.completed'",
            )
            .fetch_one(&self.pool)
            .await?,
        )
    }

    /// Outbox rows of any topic, published or not.
    pub async fn outbox_rows(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Whether the webhook event `event` was written by the same database transaction as
    /// the current version of transaction `id` (same `xmin`).
    pub async fn committed_together(
        &self,
        id: TransactionId,
        event: EventId,
    ) -> anyhow::Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT t.xmin::text = e.xmin::text FROM transactions t, webhook_events e
             WHERE t.id = $1 AND e.id = $2",
        )
        .bind(id.as_uuid())
        .bind(event.as_uuid())
        .fetch_one(&self.pool)
        .await?)
    }

    /// The `CallbackReceived` envelope the API would produce for `signed`.
    pub fn envelope(
        format: Format,
        signed: &SignedCallback,
        received_at: DateTime<Utc>,
    ) -> Vec<u8> {
        let request = signed.to_request(received_at);
        Envelope::new(Body::CallbackReceived(CallbackReceived {
            gateway: format.gateway().to_string(),
            content_type: signed.content_type.clone(),
            body: signed.body.to_vec(),
            headers: request.headers.into_iter().collect::<HashMap<_, _>>(),
            received_at_unix_ms: received_at.timestamp_millis(),
            path: String::new(),
        }))
        .encode_to_bytes()
    }

    /// As the consumer runner would hand it to the handler.
    pub fn delivery(&self, format: Format, fields: &CallbackFields) -> Delivery {
        let signed = format.sign(fields);
        Delivery {
            topic: format!("{}.callbacks.received", self.config.kafka.topic_prefix),
            partition: 0,
            offset: 0,
            key: Some(fields.transaction_id.to_string().into_bytes()),
            payload: Self::envelope(format, &signed, Utc::now()),
            headers: BTreeMap::from([(
                TRACEPARENT.to_owned(),
                TraceParent::new_root().to_string(),
            )]),
        }
    }

    /// Produces the callback to `callbacks.received`, as the API does.
    pub async fn produce(&self, format: Format, fields: &CallbackFields) -> anyhow::Result<()> {
        self.produce_raw(format, &format.sign(fields), fields.transaction_id)
            .await
    }

    pub async fn produce_raw(
        &self,
        format: Format,
        signed: &SignedCallback,
        key: TransactionId,
    ) -> anyhow::Result<()> {
        let headers =
            BTreeMap::from([(TRACEPARENT.to_owned(), TraceParent::new_root().to_string())]);
        self.producer
            .send(
                Topic::CallbacksReceived,
                &key.to_string(),
                &Self::envelope(format, signed, Utc::now()),
                &headers,
            )
            .await?;
        Ok(())
    }

    /// Builds and runs a processor; cancel the token to stop it.
    pub async fn start_processor(&self) -> anyhow::Result<Running> {
        let processor =
            paygate_testkit::spawn_callback_processor(&self.config, self.registry.clone()).await?;
        let (stop, task) = processor.into_parts();
        Ok(Running { stop, task })
    }

    /// Starts reading `topic` from the beginning in a group of its own.
    pub async fn watch(&self, topic: Topic) -> anyhow::Result<Watch> {
        let seen = Arc::new(Recorder::default());
        let runner = ConsumerRunner::new(
            &self.config.kafka,
            ConsumerSettings::new(
                unique_name(&format!("{}-watch", self.config.kafka.group_prefix)),
                vec![topic],
            ),
            seen.clone(),
            self.producer.clone(),
        )?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(runner.run(stop.clone()));
        Ok(Watch { seen, stop, task })
    }
}

/// `event`'s type, merchant and transaction.
fn check_event(
    event: &WebhookEvent,
    event_type: EventType,
    merchant: MerchantId,
    transaction: TransactionId,
) -> anyhow::Result<()> {
    ensure!(
        event.event_type == event_type
            && event.merchant_id == merchant
            && event.transaction_id == transaction,
        "expected a {} event of {merchant} about {transaction}, found {event:?}",
        event_type.as_str()
    );
    Ok(())
}

/// `event`'s body, checked to name the event, and its `data`.
fn payload_data(event: &WebhookEvent, event_type: EventType) -> anyhow::Result<serde_json::Value> {
    let mut body: serde_json::Value =
        serde_json::from_str(&event.payload).context("the event's payload is not JSON")?;
    ensure!(
        body["type"] == event_type.as_str() && body["id"] == event.id.to_string(),
        "the body does not name event {} ({}): {body}",
        event.id,
        event_type.as_str()
    );
    Ok(body["data"].take())
}

/// Callback fields for `tx` as its provider would report them.
pub fn fields(tx: &Transaction, status: ReportedStatus, event_id: &str) -> CallbackFields {
    CallbackFields {
        transaction_id: tx.id,
        kind: tx.kind,
        status,
        provider_reference: format!("prov_{}", &tx.id.to_string()[4..16]),
        event_id: event_id.to_owned(),
        money: tx.money,
        sent_at: Utc::now(),
    }
}

pub fn declined() -> ReportedStatus {
    ReportedStatus::Failed {
        code: "declined".into(),
        reason: "insufficient funds".into(),
    }
}

pub struct Running {
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(), paygate_callback_processor::ProcessorError>>,
}

impl Running {
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

#[derive(Default)]
pub struct Recorder(Mutex<Vec<Delivery>>);

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        self.0
            .lock()
            .map_err(|e| HandlerError::Retry(e.to_string()))?
            .push(delivery.clone());
        Ok(())
    }
}

/// Everything seen on one topic.
pub struct Watch {
    seen: Arc<Recorder>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), paygate_core::bus::BusError>>,
}

impl Watch {
    pub fn messages(&self) -> Vec<Delivery> {
        self.seen.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn count_key(&self, key: TransactionId) -> usize {
        let key = key.to_string();
        self.messages()
            .iter()
            .filter(|d| d.key_str() == Some(key.as_str()))
            .count()
    }

    /// Waits until at least `n` messages keyed by `key` arrived.
    pub async fn wait_for(
        &self,
        key: TransactionId,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while self.count_key(key) < n {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "only {} of {n} messages for {key} arrived",
                    self.count_key(key)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?.context("watch consumer")?;
        Ok(())
    }
}

/// Polls `check` until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    paygate_testkit::wait::poll(Duration::from_millis(50), within, check)
        .await?
        .with_context(|| format!("timed out waiting for {what}"))
}
