//! Redis cache-aside for `GET /v1/transactions/{id}`.
//!
//! Key: `paygate_core::cache_keys::transaction_cache_key(redis.key_prefix, id)`; value: the
//! JSON [`Entry`] (owner merchant and the transaction as the API shows it); TTL
//! `api.cache_ttl_ms`. Writers of a transaction `DEL` the key after their commit; the short
//! TTL bounds a racing reader's stale copy. Redis is an optimisation only: any Redis error or
//! slowness (each call is bounded) falls through to Postgres.

use std::time::Duration;

use paygate_core::cache_keys::transaction_cache_key;
use paygate_core::domain::{MerchantId, TransactionId};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::resources::TransactionResource;

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
        let mut conn = self.redis.clone();
        let key = transaction_cache_key(&self.prefix, id);
        let mut cmd = redis::cmd("GET");
        cmd.arg(&key);
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

    pub async fn put(&self, entry: &Entry) {
        let Ok(text) = serde_json::to_string(entry) else {
            return;
        };
        let mut conn = self.redis.clone();
        let key = transaction_cache_key(&self.prefix, entry.transaction.id);
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(text).arg("PX").arg(ttl_ms);
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
