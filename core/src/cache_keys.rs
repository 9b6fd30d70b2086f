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
//!
//! ## `GET /v1/balance` cache (cache-aside, written by the API)
//!
//! Key: [`balance_cache_key`], `<redis.key_prefix>:cache:balance:<mch_…>`, same TTL. Whatever
//! moves a merchant's money (a withdrawal accepted, a payment finished, a top-up, a
//! resolution by hand) `DEL`s it after its commit, with the transaction's key when there is one.

use crate::domain::{MerchantId, TransactionId};

/// The cache key of one transaction's API representation.
pub fn transaction_cache_key(prefix: &str, id: TransactionId) -> String {
    format!("{prefix}:cache:txn:{id}")
}

/// The cache key of one merchant's balance.
pub fn balance_cache_key(prefix: &str, merchant: MerchantId) -> String {
    format!("{prefix}:cache:balance:{merchant}")
}

/// Drops the cached copy of a transaction after a change to it is committed, and of its
/// merchant's balance when the change moved money (`merchant` given). The cache is an
/// optimisation: a failure is logged and the stale entry left to its short TTL.
pub async fn invalidate_transaction(
    redis: &mut redis::aio::ConnectionManager,
    prefix: &str,
    id: TransactionId,
    merchant: Option<MerchantId>,
) {
    let mut del = redis::cmd("DEL");
    del.arg(transaction_cache_key(prefix, id));
    if let Some(merchant) = merchant {
        del.arg(balance_cache_key(prefix, merchant));
    }
    let deleted: Result<i64, _> = del.query_async(redis).await;
    if let Err(error) = deleted {
        tracing::warn!(transaction = %id, %error, "could not drop the cached transaction; it expires by its TTL");
    }
}

/// Drops the cached copy of a merchant's balance (after a top-up or a withdrawal's hold).
pub async fn invalidate_balance(
    redis: &mut redis::aio::ConnectionManager,
    prefix: &str,
    merchant: MerchantId,
) {
    let deleted: Result<i64, _> = redis::cmd("DEL")
        .arg(balance_cache_key(prefix, merchant))
        .query_async(redis)
        .await;
    if let Err(error) = deleted {
        tracing::warn!(%merchant, %error, "could not drop the cached balance; it expires by its TTL");
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
