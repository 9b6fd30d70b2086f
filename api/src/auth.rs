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
//!
//! Creates (issue 18) authenticate through [`CachedMerchant`]: a live key is remembered in
//! process for `api.key_cache_secs`, so a create costs one statement, not two. Revocation
//! stays immediate there too: the create's insert re-checks, in the same statement, that the
//! key is live and its merchant still has the named gateway enabled
//! (`transactions::insert_checked`), and on a refusal the handler looks the key up afresh
//! ([`reauthenticate`]). Every other route looks the key up each time.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use paygate_core::db;
use paygate_core::domain::{ApiKeyId, GatewayName, MerchantId, Scope};
use paygate_core::secret::ApiKey;

use crate::error::HttpError;
use crate::key_memo::{lock, KeyMemo};
use crate::AppState;

/// The merchant a request is made for, and what its key may do.
#[derive(Debug, Clone)]
pub struct Merchant {
    pub id: MerchantId,
    pub key_id: ApiKeyId,
    pub scopes: Vec<Scope>,
    /// The gateways this merchant may name (`None`: all).
    pub enabled_gateways: Option<Vec<GatewayName>>,
    /// The SHA-256 of the key it authenticated with (what the caches are keyed by).
    key_hash: [u8; 32],
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

/// A merchant authenticated from the in-process key cache when the key is in it: only for
/// routes whose write re-checks the key inside its own statement (creates), see the module
/// documentation.
#[derive(Debug, Clone)]
pub struct CachedMerchant(pub Merchant);

impl FromRequestParts<AppState> for Merchant {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        limited(parts, state, Lookup::Always).await
    }
}

impl FromRequestParts<AppState> for CachedMerchant {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, HttpError> {
        limited(parts, state, Lookup::CacheFirst).await.map(Self)
    }
}

/// Whether a route may take a live key from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Always,
    CacheFirst,
}

/// The address limiter around [`authenticate`]: refused addresses first, failures counted.
async fn limited(parts: &Parts, state: &AppState, lookup: Lookup) -> Result<Merchant, HttpError> {
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
    let result = authenticate(parts, state, lookup).await;
    if let (Err(error), Some(address)) = (&result, peer) {
        if error.status == StatusCode::UNAUTHORIZED {
            state.address_limiter.failed(address);
        }
    }
    result
}

/// The key's form, the negative cache, the positive cache (creates only), Postgres, then
/// the per-key limit.
async fn authenticate(
    parts: &Parts,
    state: &AppState,
    lookup: Lookup,
) -> Result<Merchant, HttpError> {
    let key = presented_key(parts)?;
    let hash = key.hash();
    let cached = match lookup {
        Lookup::CacheFirst => state.known_keys.get(&hash),
        Lookup::Always => None,
    };
    let merchant = match cached {
        Some(merchant) => merchant,
        None => look_up(state, hash, Some(&key)).await?,
    };
    state
        .rate_limiter
        .check(merchant.key_id)
        .map_err(HttpError::rate_limited)?;
    Ok(merchant)
}

/// The key of the `Authorization` header, checked for form.
fn presented_key(parts: &Parts) -> Result<ApiKey, HttpError> {
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
    ApiKey::parse(token.trim()).map_err(|_| malformed())
}

/// Postgres's answer for a key digest (the negative cache first); a live key is remembered
/// in the positive cache, an unknown one in the negative cache.
async fn look_up(
    state: &AppState,
    hash: [u8; 32],
    key: Option<&ApiKey>,
) -> Result<Merchant, HttpError> {
    if state.unknown_keys.contains(&hash) {
        return Err(invalid(state, key, true));
    }
    let found = db::merchants::authenticate_hash(&state.pool, &hash)
        .await
        .map_err(HttpError::internal)?;
    let Some(auth) = found else {
        state.unknown_keys.insert(hash);
        return Err(invalid(state, key, false));
    };
    let merchant = Merchant {
        id: auth.merchant_id,
        key_id: auth.key_id,
        scopes: auth.scopes,
        enabled_gateways: auth.enabled_gateways,
        key_hash: hash,
    };
    state.known_keys.insert(hash, merchant.clone());
    Ok(merchant)
}

/// The merchant of a cached key whose create was refused as not live (revoked, or a gateway
/// disabled since it was cached): forgotten, then looked up afresh. 401 when revoked.
pub async fn reauthenticate(state: &AppState, merchant: &Merchant) -> Result<Merchant, HttpError> {
    state.known_keys.remove(&merchant.key_hash);
    look_up(state, merchant.key_hash, None).await
}

/// The 401 for an unknown or revoked key, with the summarised failure log (the key only as
/// its redacting `Debug` shows it).
fn invalid(state: &AppState, key: Option<&ApiKey>, cached: bool) -> HttpError {
    if let Some(since) = state.unknown_keys.log_failure() {
        tracing::info!(
            key = ?key,
            cached,
            failures_since_last_line = since,
            "unknown or revoked API key"
        );
    }
    HttpError::unauthenticated("invalid API key")
}

/// How long a key Postgres did not know is answered 401 without asking again.
pub const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(5);
/// Most unknown keys remembered at once; past it, expired entries go, then all of them.
pub const UNKNOWN_KEY_CAPACITY: usize = 10_000;
/// Most live keys remembered at once (the same bound: a merchant has a handful of keys).
pub const KNOWN_KEY_CAPACITY: usize = 10_000;
/// At most one "unknown or revoked API key" log line per this interval.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The positive cache: live keys' merchants, for creates ([`CachedMerchant`]).
pub type KnownKeys = KeyMemo<Merchant>;

/// A positive cache of `ttl` (`api.key_cache_secs`; zero keeps nothing).
pub fn known_keys(ttl: Duration) -> KnownKeys {
    KeyMemo::new(ttl, KNOWN_KEY_CAPACITY)
}

/// The negative cache of unknown API keys (by SHA-256) and the failure-log throttle.
pub struct UnknownKeys {
    entries: KeyMemo<()>,
    log: Mutex<LogThrottle>,
}

struct LogThrottle {
    last: Option<Instant>,
    since: u64,
}

impl Default for UnknownKeys {
    fn default() -> Self {
        Self::new(UNKNOWN_KEY_TTL, UNKNOWN_KEY_CAPACITY)
    }
}

impl UnknownKeys {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: KeyMemo::new(ttl, capacity),
            log: Mutex::new(LogThrottle {
                last: None,
                since: 0,
            }),
        }
    }

    /// Whether this hash was found unknown less than the TTL ago.
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.entries.get(hash).is_some()
    }

    /// Remembers a hash Postgres did not know (bounded, [`KeyMemo::insert`]).
    pub fn insert(&self, hash: [u8; 32]) {
        self.entries.insert(hash, ());
    }

    /// Entries held (tests, metrics).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
