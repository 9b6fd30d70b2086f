//! A Redis lease lock: `SET key token NX PX ttl`, released and extended only by the holder
//! (compare-and-delete / compare-and-expire in Lua).
//!
//! **An efficiency lock, not a correctness one.** A holder can pause (GC, a slow call, a
//! network partition) past its lease while another process takes the lock. Nothing here can
//! stop the paused holder from acting afterwards. What keeps data correct is the version
//! check on every Postgres write (`UPDATE … WHERE id = $1 AND version = $2`): the paused
//! holder's write then changes nothing. The lock only keeps concurrent workers from doing
//! the same work at the same time.

use std::time::Duration;

use rand::RngCore;
use redis::aio::ConnectionManager;
use redis::Script;

/// Deletes the key only if it still holds our token.
const RELEASE: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
else
    return 0
end"#;

/// Extends the lease only if it still holds our token.
const EXTEND: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
else
    return 0
end"#;

/// The lock every service takes before changing a transaction (`txn:<id>`): one name, so
/// the payment processor and the callback processor exclude each other.
pub fn transaction_lock(id: crate::domain::TransactionId) -> String {
    format!("txn:{id}")
}

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct LockError(#[from] redis::RedisError);

/// Hands out leases on keys under a prefix.
#[derive(Clone)]
pub struct RedisLock {
    redis: ConnectionManager,
    prefix: String,
    release: Script,
    extend: Script,
}

/// A held lease. Dropping it without [`Lease::release`] leaves the key to expire on its own
/// (it has a TTL), which is safe, only slower for the next taker.
#[derive(Debug)]
#[must_use = "a lease should be released when the work is done"]
pub struct Lease {
    key: String,
    token: String,
}

impl RedisLock {
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            release: Script::new(RELEASE),
            extend: Script::new(EXTEND),
        }
    }

    /// Connects a manager (which reconnects by itself) to `url`.
    pub async fn connect(url: &str, prefix: impl Into<String>) -> Result<Self, LockError> {
        let client = redis::Client::open(url)?;
        let manager = ConnectionManager::new(client).await?;
        Ok(Self::new(manager, prefix))
    }

    fn full_key(&self, name: &str) -> String {
        format!("{}:lock:{}", self.prefix, name)
    }

    /// One attempt: the lease if the key was free.
    pub async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, LockError> {
        let key = self.full_key(name);
        let mut bytes = [0_u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        let mut conn = self.redis.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(set.map(|_| Lease { key, token }))
    }

    /// Tries until the lease is had or `wait` has passed (then `None`): bounded waiting, so
    /// a stuck holder delays others by at most its TTL and never blocks them forever.
    pub async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Lease>, LockError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(lease) = self.try_acquire(name, ttl).await? {
                return Ok(Some(lease));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let jitter = Duration::from_micros(u64::from(rand::rng().next_u32() % 1000));
            tokio::time::sleep((pause + jitter).min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Releases the lease if it is still ours; false when it had expired (and perhaps been
    /// taken by someone else, whose lease is left alone).
    pub async fn release(&self, lease: Lease) -> Result<bool, LockError> {
        let mut conn = self.redis.clone();
        let deleted: i64 = self
            .release
            .key(&lease.key)
            .arg(&lease.token)
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }

    /// Extends the lease to `ttl` from now if it is still ours.
    pub async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        let mut conn = self.redis.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let extended: i64 = self
            .extend
            .key(&lease.key)
            .arg(&lease.token)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(extended == 1)
    }
}
