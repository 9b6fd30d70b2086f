//! What the payment processor's integration tests share: a fresh database and topic prefix,
//! a sandbox (callbacks off: the processor's job ends at `submitted`) with gateways on it, a
//! merchant, and helpers to insert transactions and read the sandbox. Isolation, the
//! sandbox, the gateways on it and the processor itself start through `paygate-testkit`.

#![allow(dead_code)] // each test file uses its own part of this

use chrono::Utc;
use paygate_core::announce;
use paygate_core::bus::events::{Body, Envelope};
use paygate_core::config::Config;
use paygate_core::config::RouteRule;
use paygate_core::db::transactions;
use std::time::Duration;

use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, Transaction, TransactionId,
    TransactionKind,
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

    /// The statuses the merchant was told about `id`, in order: every
    /// `transactions.completed` outbox row (terminal states and `unresolved`) for it.
    pub async fn announced(&self, id: TransactionId) -> Result<Vec<String>, BoxError> {
        let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT payload FROM outbox WHERE topic = 'transactions.completed' AND message_key = $1
             ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut statuses = Vec::with_capacity(payloads.len());
        for payload in payloads {
            match Envelope::decode_checked(&payload)?.body {
                Some(Body::TransactionCompleted(done)) => statuses.push(done.status),
                other => return Err(format!("{id}: not a completed event: {other:?}").into()),
            }
        }
        Ok(statuses)
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

/// One account's counters (zero when it saw nothing).
pub fn account(stats: &StatsReport, name: &str) -> Stats {
    stats.accounts.get(name).copied().unwrap_or_default()
}
