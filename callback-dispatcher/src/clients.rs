//! One HTTP client per checked destination, kept so that a merchant's endpoint is reached
//! over a kept-alive connection instead of a new one (and, on https, a new TLS handshake)
//! per webhook.
//!
//! Why a client per destination and not one for all: a client for a host name is pinned
//! (`resolve_to_addrs`) to the addresses the SSRF guard has just checked, so its
//! connections can only ever go there. The cache key is the host *and* those addresses:
//! every attempt checks the name again, and a changed DNS answer gets a new client pinned
//! to the new addresses, never the old client's connections. A kept connection to an
//! address that is checked again now is as safe as a new one to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paygate_core::destination::CheckedDestination;

const USER_AGENT: &str = concat!("paygate-webhooks/", env!("CARGO_PKG_VERSION"));

/// Destinations with a kept client at most: past it, one kept client is dropped (its idle
/// connections close) before another is added, so memory and open sockets stay bounded
/// whatever the number of endpoints.
pub const MAX_CLIENTS: usize = 1_024;

/// How long an unused kept-alive connection stays open: below the 60 s or more that
/// common servers and load balancers keep one, so paygate closes first and rarely sends on
/// a connection the other side has just dropped.
const IDLE_CONNECTION: Duration = Duration::from_secs(30);

/// Which client serves a destination: its host as written and the checked addresses a
/// connection to it may use (empty for an IP literal, which is its own address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl Key {
    fn of(destination: &CheckedDestination) -> Self {
        let mut addrs = if destination.is_domain {
            destination.addrs.clone()
        } else {
            Vec::new()
        };
        addrs.sort_unstable();
        addrs.dedup();
        Self {
            host: destination.host.clone(),
            addrs,
        }
    }
}

/// The kept clients. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Clients {
    timeout: Duration,
    kept: Arc<Mutex<HashMap<Key, reqwest::Client>>>,
}

impl Clients {
    /// `timeout` bounds each whole request; connecting is bounded by it too, and by 10 s.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            kept: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The client for `destination`, built and kept on first use.
    pub fn for_destination(
        &self,
        destination: &CheckedDestination,
    ) -> Result<reqwest::Client, reqwest::Error> {
        let key = Key::of(destination);
        if let Some(client) = self.lock().get(&key) {
            return Ok(client.clone());
        }
        let client = self.build(destination)?;
        let mut kept = self.lock();
        if kept.len() >= MAX_CLIENTS && !kept.contains_key(&key) {
            if let Some(evicted) = kept.keys().next().cloned() {
                kept.remove(&evicted);
            }
        }
        Ok(kept.entry(key).or_insert(client).clone())
    }

    /// The whole-request timeout every client is built with.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many destinations have a kept client.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no destination has a kept client yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn build(&self, destination: &CheckedDestination) -> Result<reqwest::Client, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(IDLE_CONNECTION)
            .user_agent(USER_AGENT);
        if destination.is_domain {
            // Connect only to the addresses just checked (no second, unchecked lookup).
            builder = builder.resolve_to_addrs(&destination.host, &destination.addrs);
        }
        builder.build()
    }

    /// The map holds only clients, each usable as it is, so a panic elsewhere while it was
    /// locked leaves nothing half-changed: the poisoned lock is taken over.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, reqwest::Client>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(host: &str, is_domain: bool, addrs: &[&str]) -> CheckedDestination {
        CheckedDestination {
            url: url::Url::parse(&format!("https://{host}/hook")).unwrap_or_else(|e| panic!("{e}")),
            host: host.to_owned(),
            is_domain,
            addrs: addrs
                .iter()
                .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
                .collect(),
        }
    }

    #[test]
    fn a_destination_keeps_its_client_and_a_new_dns_answer_gets_another() {
        let clients = Clients::new(Duration::from_secs(5));
        let first = destination("hooks.example", true, &["93.184.216.34:443"]);
        clients
            .for_destination(&first)
            .unwrap_or_else(|e| panic!("{e}"));
        // The same name and addresses, in another order or repeated: the same client.
        let again = destination(
            "hooks.example",
            true,
            &["93.184.216.34:443", "93.184.216.34:443"],
        );
        clients
            .for_destination(&again)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(clients.len(), 1);
        // The name now resolves elsewhere: a client pinned there, not the old one.
        let moved = destination("hooks.example", true, &["93.184.216.35:443"]);
        clients
            .for_destination(&moved)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(clients.len(), 2);
        assert!(clients.lock().contains_key(&Key::of(&moved)));
    }

    #[test]
    fn the_kept_clients_are_bounded() {
        let clients = Clients::new(Duration::from_secs(5));
        for i in 0..MAX_CLIENTS + 10 {
            let host = format!("h{i}.example");
            clients
                .for_destination(&destination(&host, true, &["93.184.216.34:443"]))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(clients.len(), MAX_CLIENTS);
    }
}
