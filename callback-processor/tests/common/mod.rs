//! Shared set-up for the callback processor's integration tests: a fresh database, unique
//! Redis and Kafka prefixes, the three real connectors, transactions in a chosen state, and
//! callbacks signed with the connectors' own helpers. Isolation and the processor's
//! start-up come from `paygate-testkit`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
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
use paygate_core::db::{merchants, transactions};
use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, Transaction, TransactionId,
    TransactionKind, TransactionStatus,
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
        let tx = Transaction::create(
            NewTransaction {
                merchant_id: self.merchant,
                kind: TransactionKind::Deposit,
                money: Money::from_parts(1050, "USD")?,
                customer: CustomerReference::parse("cust_42")?,
                gateway: None,
                callback_url: None,
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

    /// Completed events for `id` in the outbox (published or not).
    pub async fn completed_in_outbox(&self, id: TransactionId) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE topic = 'transactions.completed' AND message_key = $1",
        )
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn unpublished_completed(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE topic = 'transactions.completed' AND published_at IS NULL",
        )
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
