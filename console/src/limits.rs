//! Sign-in attempts limited per account and per client address (governor, in process).
//!
//! Every attempt counts, before the password is checked, so guessing costs the attacker
//! the same whether it guesses right or wrong. Limits are per API instance: with N
//! instances behind a balancer an attacker gets at most N times the rate, still a few
//! guesses a minute per account.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use paygate_core::config::ConsoleConfig;

pub struct SignInLimits {
    accounts: DefaultKeyedRateLimiter<String>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
}

/// An attempt refused: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

fn per_minute(n: u32) -> Quota {
    let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl SignInLimits {
    pub fn new(config: &ConsoleConfig) -> Self {
        Self {
            accounts: RateLimiter::keyed(per_minute(config.attempts_per_account_per_minute)),
            addresses: RateLimiter::keyed(per_minute(config.attempts_per_address_per_minute)),
        }
    }

    /// Counts an attempt at `email` from `address`; refused when either is past its limit.
    /// The address is checked first, so a spray over many accounts from one address stops
    /// there without using up those accounts' allowances.
    pub fn attempt(&self, email: &str, address: Option<IpAddr>) -> Result<(), Limited> {
        let clock = DefaultClock::default();
        if let Some(address) = address {
            self.addresses
                .check_key(&address)
                .map_err(|not_until| Limited {
                    retry_after: not_until.wait_time_from(clock.now()),
                })?;
        }
        self.accounts
            .check_key(&email.trim().to_lowercase())
            .map_err(|not_until| Limited {
                retry_after: not_until.wait_time_from(clock.now()),
            })
    }

    /// Forgets keys whose allowance has refilled (call now and then).
    pub fn retain_recent(&self) {
        self.accounts.retain_recent();
        self.addresses.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(account: u32, address: u32) -> ConsoleConfig {
        ConsoleConfig {
            attempts_per_account_per_minute: account,
            attempts_per_address_per_minute: address,
            ..ConsoleConfig::default()
        }
    }

    #[test]
    fn an_account_is_limited_whatever_the_case_of_its_email() {
        let limits = SignInLimits::new(&config(2, 100));
        let here = Some(IpAddr::from([10, 0, 0, 1]));
        assert!(limits.attempt("a@example.com", here).is_ok());
        assert!(limits.attempt("A@Example.com ", here).is_ok());
        let refused = limits.attempt("a@example.com", here);
        assert!(matches!(refused, Err(Limited { retry_after }) if retry_after > Duration::ZERO));
        assert!(limits.attempt("b@example.com", here).is_ok());
    }

    #[test]
    fn an_address_is_limited_across_accounts() {
        let limits = SignInLimits::new(&config(100, 2));
        let here = Some(IpAddr::from([10, 0, 0, 2]));
        assert!(limits.attempt("a@example.com", here).is_ok());
        assert!(limits.attempt("b@example.com", here).is_ok());
        assert!(limits.attempt("c@example.com", here).is_err());
        assert!(limits
            .attempt("c@example.com", Some(IpAddr::from([10, 0, 0, 3])))
            .is_ok());
    }
}
