//! Redis cache-aside for `GET /v1/transactions/{id}` and `GET /v1/balance`.
//!
//! Keys: `paygate_core::cache_keys` (`transaction_cache_key`, `balance_cache_key`); values:
//! the JSON [`Entry`] (owner merchant and the transaction as the API shows it) or the
//! balance resource; TTL `api.cache_ttl_ms`. Writers `DEL` the keys after their commit; the
//! short TTL bounds a racing reader's stale copy. Redis is an optimisation only: any Redis
//! error or slowness (each call is bounded) falls through to Postgres.

use std::time::Duration;

use paygate_core::cache_keys::{balance_cache_key, transaction_cache_key};
use paygate_core::domain::{MerchantId, TransactionId};
use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::resources::{BalanceResource, TransactionResource};

/// Longest a cache call may take before the request goes to Postgres instead.
const OP_TIMEOUT: Duration = Duration::from_millis(250);

/// What is stored under a transaction's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub merchant_id: MerchantId,
    pub transaction: TransactionResource,
}

#[derive(Clone)]
pub struct TransactionCache {
    redis: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl TransactionCache {
    pub fn new(redis: ConnectionManager, prefix: String, ttl: Duration) -> Self {
        Self { redis, prefix, ttl }
    }

    pub async fn get(&self, id: TransactionId) -> Option<Entry> {
        self.get_json(&transaction_cache_key(&self.prefix, id))
            .await
    }

    pub async fn put(&self, entry: &Entry) {
        let key = transaction_cache_key(&self.prefix, entry.transaction.id);
        self.put_json(&key, entry).await;
    }

    pub async fn get_balance(&self, merchant: MerchantId) -> Option<BalanceResource> {
        self.get_json(&balance_cache_key(&self.prefix, merchant))
            .await
    }

    pub async fn put_balance(&self, merchant: MerchantId, balance: &BalanceResource) {
        self.put_json(&balance_cache_key(&self.prefix, merchant), balance)
            .await;
    }

    /// After a commit that moved `merchant`'s money (a withdrawal's hold, a deposit now
    /// pending).
    pub async fn forget_balance(&self, merchant: MerchantId) {
        let mut conn = self.redis.clone();
        let forget =
            paygate_core::cache_keys::invalidate_balance(&mut conn, &self.prefix, merchant);
        if tokio::time::timeout(OP_TIMEOUT, forget).await.is_err() {
            self.failed::<()>("del", &"timed out");
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let mut conn = self.redis.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let read = cmd.query_async::<Option<String>>(&mut conn);
        let text = match tokio::time::timeout(OP_TIMEOUT, read).await {
            Ok(Ok(Some(text))) => text,
            Ok(Ok(None)) => {
                metrics::counter!("paygate_cache_requests_total", "result" => "miss").increment(1);
                return None;
            }
            Ok(Err(error)) => return self.failed("get", &error),
            Err(_) => return self.failed("get", &"timed out"),
        };
        match serde_json::from_str(&text) {
            Ok(entry) => {
                metrics::counter!("paygate_cache_requests_total", "result" => "hit").increment(1);
                Some(entry)
            }
            Err(error) => self.failed("decode", &error),
        }
    }

    async fn put_json<T: Serialize>(&self, key: &str, value: &T) {
        let Ok(text) = serde_json::to_string(value) else {
            return;
        };
        let mut conn = self.redis.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(text).arg("PX").arg(ttl_ms);
        let write = cmd.query_async::<()>(&mut conn);
        match tokio::time::timeout(OP_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.failed::<()>("set", &error);
            }
            Err(_) => {
                self.failed::<()>("set", &"timed out");
            }
        }
    }

    /// Whether Redis answers a PING in time (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let mut conn = self.redis.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }

    fn failed<T>(&self, op: &str, error: &dyn std::fmt::Display) -> Option<T> {
        tracing::warn!(op, %error, "transaction cache unavailable; reading Postgres");
        metrics::counter!("paygate_cache_requests_total", "result" => "error").increment(1);
        None
    }
}
