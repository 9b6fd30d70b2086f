//! Per-API-key rate limiting (governor's GCRA): `api.rate_limit_per_second` sustained with
//! `api.rate_limit_burst` allowed at once. Over the limit: 429 with `Retry-After`.
//!
//! [`AddressLimiter`]: failed authentications per client address
//! (`api.unauthenticated_per_second`, `api.unauthenticated_burst`). An address past its
//! quota is refused with 429 *before* the key is parsed or looked up, so a flood of bad keys
//! costs Postgres at most that rate per address. Only failures count: the benchmarks'
//! thousands of authenticated requests a second from one address are never limited here.
//!
//! [`CallbackLimiter`]: provider callbacks per gateway and client address (`[gateways.x]
//! callback_per_second`, `callback_burst`), checked before the body is read or verified, so a
//! flood of forged callbacks costs no HMAC and no parse, and a flood aimed at one gateway
//! leaves every other gateway's callbacks alone (each gateway has its own limiter).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use paygate_core::config::{GatewayConfig, DEFAULT_CALLBACK_BURST, DEFAULT_CALLBACK_PER_SECOND};
use paygate_core::domain::{ApiKeyId, GatewayName};
use tokio_util::sync::CancellationToken;

pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<ApiKeyId>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            limiter: governor::RateLimiter::keyed(quota(per_second, burst)),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` if this key may make a request now; otherwise how long until it may.
    pub fn check(&self, key: ApiKeyId) -> Result<(), Duration> {
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys idle long enough to be back at full burst, so memory stays bounded by
    /// the keys active recently.
    pub fn spawn_cleanup(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = Arc::clone(self);
        every_minute(shutdown, move || {
            this.limiter.retain_recent();
            this.limiter.shrink_to_fit();
        });
    }
}

/// Most addresses held as refused at once; past it, expired ones go, then all of them.
const MAX_REFUSED: usize = 100_000;

/// Failed authentications per client address, and the addresses refused until a time.
pub struct AddressLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    refused: Mutex<HashMap<IpAddr, Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AddressLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            limiter: governor::RateLimiter::keyed(quota(per_second, burst)),
            clock: DefaultClock::default(),
            refused: Mutex::new(HashMap::new()),
        }
    }

    /// Before any work on a request from `address`: `Err(wait)` while it is refused.
    pub fn admit(&self, address: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut refused = lock(&self.refused);
        match refused.get(&address) {
            Some(until) if *until > now => Err(*until - now),
            Some(_) => {
                refused.remove(&address);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts one failed authentication from `address`; past the quota, the address is
    /// refused until it may fail again.
    pub fn failed(&self, address: IpAddr) {
        if let Err(not_until) = self.limiter.check_key(&address) {
            let now = Instant::now();
            let wait = not_until.wait_time_from(self.clock.now());
            let mut refused = lock(&self.refused);
            if refused.len() >= MAX_REFUSED {
                refused.retain(|_, until| *until > now);
                if refused.len() >= MAX_REFUSED {
                    refused.clear();
                }
            }
            refused.insert(address, now + wait);
        }
    }

    /// Forgets addresses idle long enough to be back at full burst, every minute.
    pub fn spawn_cleanup(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = Arc::clone(self);
        every_minute(shutdown, move || {
            this.limiter.retain_recent();
            this.limiter.shrink_to_fit();
            let now = Instant::now();
            lock(&this.refused).retain(|_, until| *until > now);
        });
    }
}

/// Provider callbacks per client address, one limiter (and quota) per gateway.
pub struct CallbackLimiter {
    gateways: HashMap<GatewayName, DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl CallbackLimiter {
    /// One limiter for each gateway in `names`, with its table's quota in `configs`
    /// (`callback_per_second`, `callback_burst`), or the defaults for a gateway built in code.
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a GatewayName>,
        configs: &std::collections::BTreeMap<String, GatewayConfig>,
    ) -> Self {
        let gateways = names
            .into_iter()
            .map(|name| {
                let (per_second, burst) = configs
                    .get(name.as_str())
                    .map(|c| (c.callback_per_second, c.callback_burst))
                    .unwrap_or((DEFAULT_CALLBACK_PER_SECOND, DEFAULT_CALLBACK_BURST));
                (
                    name.clone(),
                    governor::RateLimiter::keyed(quota(per_second, burst)),
                )
            })
            .collect();
        Self {
            gateways,
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` if `address` may send `gateway` a callback now; otherwise how long until it may.
    /// A gateway without a limiter (not configured: the route answers 404) is not limited.
    pub fn check(&self, gateway: &GatewayName, address: IpAddr) -> Result<(), Duration> {
        match self.gateways.get(gateway) {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(&address)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Forgets addresses idle long enough to be back at full burst, every minute.
    pub fn spawn_cleanup(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = Arc::clone(self);
        every_minute(shutdown, move || {
            for limiter in this.gateways.values() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
    }
}

/// `per_second` with bursts of `burst` (config validation keeps both ≥ 1; a zero here
/// falls back to the smallest quota rather than panicking).
fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Quota::per_second(rate).allow_burst(burst)
}

/// Runs `work` once a minute until `shutdown`: the limiters' housekeeping.
fn every_minute(shutdown: CancellationToken, mut work: impl FnMut() + Send + 'static) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => work(),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_failures_is_refused_then_readmitted() {
        let limiter = AddressLimiter::new(20, 3);
        let bad = IpAddr::from([192, 0, 2, 1]);
        let other = IpAddr::from([192, 0, 2, 2]);
        for _ in 0..3 {
            assert!(limiter.admit(bad).is_ok());
            limiter.failed(bad);
        }
        assert!(limiter.admit(bad).is_ok(), "the burst is not exceeded yet");
        limiter.failed(bad);
        let wait = limiter.admit(bad).err();
        assert!(
            wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_millis(50)),
            "{wait:?}"
        );
        assert!(
            limiter.admit(other).is_ok(),
            "addresses are limited separately"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.admit(bad).is_ok(), "readmitted after the wait");
    }

    #[test]
    fn callbacks_are_limited_per_gateway_and_address() -> Result<(), Box<dyn std::error::Error>> {
        let flooded = GatewayName::parse("psp-a")?;
        let other = GatewayName::parse("psp-b")?;
        let mut configs = std::collections::BTreeMap::new();
        let mut tight = GatewayConfig::new("sandbox-json", "http://127.0.0.1:1/", "sk");
        tight.callback_per_second = 1;
        tight.callback_burst = 2;
        configs.insert("psp-a".to_owned(), tight);
        let limiter = CallbackLimiter::new([&flooded, &other], &configs);
        let attacker = IpAddr::from([192, 0, 2, 1]);
        let provider = IpAddr::from([192, 0, 2, 2]);
        assert!(limiter.check(&flooded, attacker).is_ok());
        assert!(limiter.check(&flooded, attacker).is_ok());
        let wait = limiter.check(&flooded, attacker).err();
        assert!(
            wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(1)),
            "{wait:?}"
        );
        assert!(limiter.check(&flooded, provider).is_ok(), "per address");
        for _ in 0..100 {
            assert!(
                limiter.check(&other, attacker).is_ok(),
                "another gateway keeps its own (default) quota"
            );
        }
        Ok(())
    }

    #[test]
    fn burst_then_refusal_with_a_wait() {
        let limiter = RateLimiter::new(1, 2);
        let key = ApiKeyId::new();
        assert!(limiter.check(key).is_ok());
        assert!(limiter.check(key).is_ok());
        let wait = limiter.check(key).err();
        assert!(
            wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(1)),
            "{wait:?}"
        );
        assert!(
            limiter.check(ApiKeyId::new()).is_ok(),
            "keys are limited separately"
        );
    }
}
