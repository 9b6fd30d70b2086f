//! Redis keys that one service writes and another must find: the single place their format
//! is defined.
//!
//! ## `GET /v1/transactions/{id}` cache (cache-aside, written by the API)
//!
//! Key: [`transaction_cache_key`], `<redis.key_prefix>:cache:txn:<txn_…>`. Value: a JSON
//! document the API owns (the merchant id and the transaction as the API shows it), with a
//! short TTL (`api.cache_ttl_ms`). Anything that changes a transaction (the callback
//! processor, the payment processor) must `DEL` this key **after** its Postgres commit. The
//! TTL bounds how long a reader that raced the change can serve the old version.

use crate::domain::TransactionId;

/// The cache key of one transaction's API representation.
pub fn transaction_cache_key(prefix: &str, id: TransactionId) -> String {
    format!("{prefix}:cache:txn:{id}")
}

/// Drops the cached copy of a transaction after a change to it is committed. The cache is an
/// optimisation: a failure is logged and the stale entry left to its short TTL.
pub async fn invalidate_transaction(
    redis: &mut redis::aio::ConnectionManager,
    prefix: &str,
    id: TransactionId,
) {
    let deleted: Result<i64, _> = redis::cmd("DEL")
        .arg(transaction_cache_key(prefix, id))
        .query_async(redis)
        .await;
    if let Err(error) = deleted {
        tracing::warn!(transaction = %id, %error, "could not drop the cached transaction; it expires by its TTL");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_the_prefix_and_external_id() {
        let id = TransactionId::new();
        assert_eq!(
            transaction_cache_key("paygate", id),
            format!("paygate:cache:txn:{id}")
        );
    }
}
