//! `Authorization: Bearer sk_…`. The presented key is checked for form, then looked up by
//! its SHA-256 (the only thing stored). Every failure is the same 401 to the client (which
//! of missing, malformed, unknown or revoked is logged, the key never). An authenticated
//! request then passes the per-key rate limit; each route then asks [`Merchant::require`]
//! for the scope it needs (403 without it).
//!
//! Unauthenticated work is kept cheap (issue 17): an address with too many failed
//! authentications is refused (429) before anything else is done
//! ([`crate::rate_limit::AddressLimiter`]); a well-formed key that Postgres does not
//! know is remembered by its SHA-256 (never the key) in [`UnknownKeys`] for
//! [`UNKNOWN_KEY_TTL`], so repeating it answers 401 without a query; and the failure log is
//! summarised (one line per [`FAILURE_LOG_INTERVAL`], with the count of failures since).
//! Revocation stays immediate: only keys that were *not found* are cached, so a live key is
//! always looked up. The one cost: a key created after a client presented it while it did not
//! exist yet is refused for at most [`UNKNOWN_KEY_TTL`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use paygate_core::db;
use paygate_core::domain::{ApiKeyId, GatewayName, MerchantId, Scope};
use paygate_core::secret::ApiKey;

use crate::error::HttpError;
use crate::AppState;

/// The merchant a request is made for, and what its key may do.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: MerchantId,
    pub key_id: ApiKeyId,
    pub scopes: Vec<Scope>,
    /// The gateways this merchant may name (`None`: all).
    pub enabled_gateways: Option<Vec<GatewayName>>,
}

impl Merchant {
    /// Ok when the key holds `scope`; otherwise the 403 to answer.
    pub fn require(&self, scope: Scope) -> Result<(), HttpError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(HttpError::scope_missing(scope))
        }
    }

    /// Whether this merchant may use `gateway`.
    pub fn may_use(&self, gateway: &GatewayName) -> bool {
        self.enabled_gateways
            .as_ref()
            .is_none_or(|enabled| enabled.contains(gateway))
    }
}

impl FromRequestParts<AppState> for Merchant {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip());
        if let Some(address) = peer {
            state
                .address_limiter
                .admit(address)
                .map_err(HttpError::address_rate_limited)?;
        }
        let result = authenticate(parts, state).await;
        if let (Err(error), Some(address)) = (&result, peer) {
            if error.status == StatusCode::UNAUTHORIZED {
                state.address_limiter.failed(address);
            }
        }
        result
    }
}

/// The key's form, the negative cache, Postgres, then the per-key limit.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Merchant, HttpError> {
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
        return Err(HttpError::unauthenticated(
            "no API key provided: send it as `Authorization: Bearer sk_…`",
        ));
    };
    let malformed =
        || HttpError::unauthenticated("malformed Authorization header: expected `Bearer sk_…`");
    let value = header.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    let key = ApiKey::parse(token.trim()).map_err(|_| malformed())?;
    let hash = key.hash();
    let invalid = |cached: bool| {
        if let Some(since) = state.unknown_keys.log_failure() {
            tracing::info!(
                key = ?key,
                cached,
                failures_since_last_line = since,
                "unknown or revoked API key"
            );
        }
        HttpError::unauthenticated("invalid API key")
    };
    if state.unknown_keys.contains(&hash) {
        return Err(invalid(true));
    }
    let found = db::merchants::authenticate(&state.pool, &key)
        .await
        .map_err(HttpError::internal)?;
    let Some(auth) = found else {
        state.unknown_keys.insert(hash);
        return Err(invalid(false));
    };
    state
        .rate_limiter
        .check(auth.key_id)
        .map_err(HttpError::rate_limited)?;
    Ok(Merchant {
        id: auth.merchant_id,
        key_id: auth.key_id,
        scopes: auth.scopes,
        enabled_gateways: auth.enabled_gateways,
    })
}

/// How long a key Postgres did not know is answered 401 without asking again.
pub const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(5);
/// Most unknown keys remembered at once; past it, expired entries go, then all of them.
pub const UNKNOWN_KEY_CAPACITY: usize = 10_000;
/// At most one "unknown or revoked API key" log line per this interval.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The negative cache of unknown API keys (by SHA-256) and the failure-log throttle.
pub struct UnknownKeys {
    entries: Mutex<HashMap<[u8; 32], Instant>>,
    ttl: Duration,
    capacity: usize,
    log: Mutex<LogThrottle>,
}

struct LogThrottle {
    last: Option<Instant>,
    since: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for UnknownKeys {
    fn default() -> Self {
        Self::new(UNKNOWN_KEY_TTL, UNKNOWN_KEY_CAPACITY)
    }
}

impl UnknownKeys {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
            log: Mutex::new(LogThrottle {
                last: None,
                since: 0,
            }),
        }
    }

    /// Whether this hash was found unknown less than the TTL ago.
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        match entries.get(hash) {
            Some(expires) if *expires > now => true,
            Some(_) => {
                entries.remove(hash);
                false
            }
            None => false,
        }
    }

    /// Remembers a hash Postgres did not know. Bounded: when full, expired entries are
    /// dropped, and if that frees nothing the whole map is (a flood of distinct keys then
    /// costs what it cost before the cache, never memory).
    pub fn insert(&self, hash: [u8; 32]) {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() >= self.capacity {
            entries.retain(|_, expires| *expires > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(hash, now + self.ttl);
    }

    /// Entries held (tests, metrics).
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts one failure; `Some(n)` when a log line is due, `n` being the failures since the
    /// previous line (this one included).
    pub fn log_failure(&self) -> Option<u64> {
        let now = Instant::now();
        let mut log = lock(&self.log);
        log.since += 1;
        let due = log
            .last
            .is_none_or(|last| now.duration_since(last) >= FAILURE_LOG_INTERVAL);
        if due {
            let since = log.since;
            log.last = Some(now);
            log.since = 0;
            Some(since)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_expire_and_stay_bounded() {
        let cache = UnknownKeys::new(Duration::from_millis(50), 3);
        cache.insert([1; 32]);
        assert!(cache.contains(&[1; 32]));
        assert!(!cache.contains(&[2; 32]));
        std::thread::sleep(Duration::from_millis(80));
        assert!(!cache.contains(&[1; 32]), "expired");
        for i in 0..10u8 {
            cache.insert([i; 32]);
            assert!(cache.len() <= 3, "bounded: {}", cache.len());
        }
        assert!(cache.contains(&[9; 32]), "the newest is held");
    }

    #[test]
    fn failure_log_is_one_line_per_interval_with_a_count() {
        let cache = UnknownKeys::default();
        assert_eq!(cache.log_failure(), Some(1), "the first failure is logged");
        for _ in 0..299 {
            assert_eq!(cache.log_failure(), None, "then summarised");
        }
        lock(&cache.log).last = Instant::now().checked_sub(FAILURE_LOG_INTERVAL);
        assert_eq!(cache.log_failure(), Some(300), "the next line counts them");
    }
}
