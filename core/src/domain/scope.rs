//! What an API key may do. A key carries one or more scopes; each route names the one it
//! needs (Stripe's restricted keys, coarser). Keys issued before scopes existed hold all.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::UnknownVariant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Create deposits.
    #[serde(rename = "payments:write")]
    PaymentsWrite,
    /// Create withdrawals (payouts), which spend the merchant's balance.
    #[serde(rename = "payouts:write")]
    PayoutsWrite,
    /// Read transactions, events, the balance and its ledger entries.
    #[serde(rename = "read")]
    Read,
    /// Manage webhook endpoints and secrets, and redeliver events.
    #[serde(rename = "webhooks:manage")]
    WebhooksManage,
}

impl Scope {
    pub const ALL: [Self; 4] = [
        Self::PaymentsWrite,
        Self::PayoutsWrite,
        Self::Read,
        Self::WebhooksManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentsWrite => "payments:write",
            Self::PayoutsWrite => "payouts:write",
            Self::Read => "read",
            Self::WebhooksManage => "webhooks:manage",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownVariant {
                kind: "scope",
                value: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_round_trips_through_its_name() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert!("payouts".parse::<Scope>().is_err());
        assert!("READ".parse::<Scope>().is_err());
    }
}
