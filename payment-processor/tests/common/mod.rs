//! What the payment processor's integration tests share: a fresh database and topic prefix,
//! a sandbox (callbacks off: the processor's job ends at `submitted`) with gateways on it, a
//! merchant, and helpers to insert transactions and read the sandbox. Isolation, the
//! sandbox, the gateways on it and the processor itself start through `paygate-testkit`.

#![allow(dead_code)] // each test file uses its own part of this

use chrono::Utc;
use paygate_core::announce;
use paygate_core::config::Config;
use paygate_core::config::RouteRule;
use paygate_core::db::transactions;
use paygate_core::db::webhooks::{self, WebhookEvent};
use std::time::Duration;

use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, Transaction, TransactionId,
    TransactionKind, TransactionStatus,
};
use paygate_testkit::admin::{AdminClient, Knobs, Stats, StatsReport};
use paygate_testkit::services::{sandbox_settings, spawn_sandbox, SandboxHandle};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;
pub type BoxError = Box<dyn std::error::Error>;

pub struct World {
    pub config: Config,
    pub pool: PgPool,
    pub sandbox_url: String,
    pub http: reqwest::Client,
    pub merchant: MerchantId,
    /// Stopped when the world is dropped.
    sandbox: SandboxHandle,
}

impl World {
    /// A sandbox with `knobs` (callbacks forced off) and one gateway per `(name, kind)` on
    /// it, each with the sandbox's secrets plus `settings` (e.g. `timeout_ms`, `breaker`).
    pub async fn new(
        merchant_name: &str,
        knobs: Knobs,
        gateways: &[(&str, &str)],
        settings: serde_json::Value,
    ) -> Result<Self, BoxError> {
        let (mut config, pool) = paygate_testkit::isolated_config().await?;
        // Static membership (KIP-345), as deployments run it (docs/ARCHITECTURE.md change 17):
        // a processor restarted in a test takes its partitions back at once. One processor
        // runs at a time per world, so one id per world.
        config.kafka.instance_id = Some(config.kafka.group_prefix.clone());
        let sandbox = spawn_sandbox(paygate_sandbox::SandboxSettings {
            knobs: Knobs {
                callbacks_enabled: false,
                ..knobs
            },
            ..sandbox_settings("http://127.0.0.1:1")
        })
        .await?;
        let sandbox_url = sandbox.url.clone();
        for (name, kind) in gateways {
            config
                .gateways
                .insert((*name).to_owned(), sandbox.gateway(name, kind, &settings)?);
        }
        let merchant = paygate_core::db::merchants::create(&pool, merchant_name)
            .await?
            .id;
        // Withdrawals hold funds from the merchant's balance (the ledger): enough for any test.
        let funds = Money::from_parts(1_000_000_000_000, "USD")?;
        paygate_core::db::ledger::top_up(&pool, merchant, funds, "test funds").await?;
        Ok(World {
            config,
            pool,
            sandbox_url,
            http: reqwest::Client::new(),
            merchant,
            sandbox,
        })
    }

    /// Inserts a transaction with its pending announcement, as the API does.
    pub async fn insert(
        &self,
        kind: TransactionKind,
        gateway: &str,
        amount: i64,
    ) -> Result<Transaction, BoxError> {
        self.insert_to(kind, Some(GatewayName::parse(gateway)?), amount)
            .await
    }

    /// Inserts a transaction that names no gateway, so the routing rules (and their
    /// failover) decide where it goes.
    pub async fn insert_routed(
        &self,
        kind: TransactionKind,
        amount: i64,
    ) -> Result<Transaction, BoxError> {
        self.insert_to(kind, None, amount).await
    }

    async fn insert_to(
        &self,
        kind: TransactionKind,
        gateway: Option<GatewayName>,
        amount: i64,
    ) -> Result<Transaction, BoxError> {
        let tx = Transaction::create(
            NewTransaction {
                merchant_id: self.merchant,
                kind,
                money: Money::from_parts(amount, "USD")?,
                customer: CustomerReference::parse("cust_42")?,
                gateway,
                callback_url: None,
                metadata: json!({}),
            },
            Utc::now(),
        );
        transactions::insert(&self.pool, &tx, None, &announce::pending(&tx, None)).await?;
        Ok(tx)
    }

    /// Routes every transaction that names no gateway to `gateways`, in order.
    pub fn route(&mut self, gateways: &[&str], failover: bool) {
        self.config.processor.routes = vec![RouteRule {
            kind: None,
            currency: None,
            country: None,
            gateways: gateways.iter().map(|g| (*g).to_owned()).collect(),
            failover,
        }];
    }

    /// The typed client of this world's sandbox admin API.
    pub fn admin(&self) -> AdminClient {
        AdminClient::with_client(self.sandbox_url.clone(), self.http.clone())
    }

    /// The statuses the merchant was told about `id`, in order: the `transaction.*` webhook
    /// events (terminal states, `unresolved`, `requires_action`) recorded for it, each
    /// checked by [`World::told`].
    pub async fn announced(&self, id: TransactionId) -> Result<Vec<String>, BoxError> {
        Ok(self
            .told(id)
            .await?
            .into_iter()
            .map(|told| told.status)
            .collect())
    }

    /// The `transaction.*` webhook events recorded for `id`, oldest first, each checked to be
    /// what the writer must record: this world's merchant, the deterministic id of
    /// (transaction, status), a body whose `type`, `id`, `data.id` and `data.status` agree
    /// with the row. A refund's event listed under `id` is an error here (see
    /// [`World::events`]), and so is any `transactions.completed` outbox row for `id`: that
    /// announcement path is gone, the event is written with the state change.
    pub async fn told(&self, id: TransactionId) -> Result<Vec<Told>, BoxError> {
        let retired: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE topic = 'transactions.completed' AND message_key = $1",
        )
        .bind(id.to_string())
        .fetch_one(&self.pool)
        .await?;
        if retired != 0 {
            return Err(format!("{id}: {retired} transactions.completed outbox rows").into());
        }
        let mut told = Vec::new();
        for event in self.events(id).await? {
            let kind = event.event_type.as_str();
            let body: serde_json::Value = serde_json::from_str(&event.payload)?;
            let status = body["data"]["status"]
                .as_str()
                .ok_or_else(|| format!("{id}: {kind} without data.status: {body}"))?
                .to_owned();
            let parsed: TransactionStatus = status.parse()?;
            let expected_id = webhooks::event_id_for(id, parsed);
            let checks = [
                (kind.starts_with("transaction."), "a transaction event"),
                (
                    kind == format!("transaction.{status}"),
                    "type = data.status",
                ),
                (body["type"] == kind, "body type = row type"),
                (body["id"] == event.id.to_string(), "body id = row id"),
                (event.id == expected_id, "the (transaction, status) id"),
                (
                    body["data"]["id"] == id.to_string(),
                    "data.id = transaction",
                ),
                (event.merchant_id == self.merchant, "this merchant"),
                (event.transaction_id == id, "listed under the transaction"),
            ];
            if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
                return Err(format!("{id}: event is not {what}: {event:?}").into());
            }
            let failure_code = body["data"]["failure"]["code"].as_str().map(str::to_owned);
            told.push(Told {
                status,
                failure_code,
                event,
            });
        }
        Ok(told)
    }

    /// Every webhook event recorded under `id` (its own and its refunds'), oldest first.
    pub async fn events(&self, id: TransactionId) -> Result<Vec<WebhookEvent>, BoxError> {
        Ok(webhooks::events_for_transaction(&self.pool, id).await?)
    }

    /// Builds and runs a payment processor on this world's config until the token is cancelled.
    pub async fn start(
        &self,
    ) -> Result<(CancellationToken, tokio::task::JoinHandle<()>), BoxError> {
        let processor = paygate_testkit::spawn_payment_processor(&self.config).await?;
        Ok(processor.into_logged())
    }

    /// Changes only the given knobs of `account`.
    pub async fn knobs(&self, account: &str, patch: serde_json::Value) -> TestResult {
        self.admin().patch_account_knobs(account, patch).await?;
        Ok(())
    }

    pub async fn get(&self, id: TransactionId) -> Result<Transaction, BoxError> {
        transactions::get(&self.pool, id)
            .await?
            .ok_or_else(|| format!("{id} missing").into())
    }

    /// Waits (bounded) until `done` holds for the transaction.
    pub async fn wait(
        &self,
        id: TransactionId,
        what: &str,
        done: impl Fn(&Transaction) -> bool,
    ) -> Result<Transaction, BoxError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        loop {
            let tx = self.get(id).await?;
            if done(&tx) {
                return Ok(tx);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{id}: timed out waiting for {what}; last state {:?} attempts {} failure {:?}",
                    tx.status, tx.attempts, tx.failure
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sandbox's counters.
    pub async fn stats(&self) -> Result<StatsReport, BoxError> {
        Ok(self.admin().stats().await?)
    }
}

/// One `transaction.*` webhook event the merchant was told, read back by [`World::told`].
#[derive(Debug)]
pub struct Told {
    /// `data.status` of the body.
    pub status: String,
    /// `data.failure.code` of the body.
    pub failure_code: Option<String>,
    pub event: WebhookEvent,
}

/// One account's counters (zero when it saw nothing).
pub fn account(stats: &StatsReport, name: &str) -> Stats {
    stats.accounts.get(name).copied().unwrap_or_default()
}
