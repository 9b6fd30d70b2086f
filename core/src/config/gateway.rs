//! `[gateways.<name>]`: one table per gateway instance, read by serde like every other
//! section.
//!
//! ```toml
//! [gateways.paystack-ng]
//! kind = "paystack"                  # a connector of the registry's CONNECTORS
//! base_url = "https://api.example.com/"
//! secret_key = "sk_live_…"           # authenticates our requests
//! webhook_secret = "whsec_…"         # verifies callbacks; defaults to secret_key
//! timeout_ms = 10000                 # whole request
//! connect_timeout_ms = 2000
//! callback_tolerance_secs = 300      # max callback timestamp skew
//! max_callback_bytes = 65536
//! status_not_found_after_ms = 120000 # settle window of a status query
//! reconcile_after_ms = 60000         # optional; the processor's stuck_after_secs otherwise
//! action_expires_after_ms = 3600000  # a customer's time for a 3-D Secure / hosted step
//! callback_per_second = 500          # callbacks per client address, sustained
//! callback_burst = 1000              # … and at once; past it 429 before any verification
//! [gateways.paystack-ng.breaker]     # optional, see BreakerConfig
//! error_threshold_percent = 50
//! ```
//!
//! The keys every connector shares are typed here (with their defaults); any other key of
//! the table is the connector's own and lands in [`GatewayConfig::extra`], which the
//! connector deserializes (the built-in connectors take none and refuse any, so a misspelt
//! key still stops start-up, naming the key).

use std::collections::BTreeMap;
use std::time::Duration;

use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{units, ConfigError, Problem};
use crate::domain::GatewayName;
use crate::secret::Secret;

/// Whole-request timeout of a provider call when `timeout_ms` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_CALLBACK_TOLERANCE: Duration = Duration::from_secs(300);
/// How long after an ambiguous attempt a provider's "not found" is still read as "not yet
/// visible" rather than "never executed". Status endpoints of real providers lag their
/// payment endpoints by seconds; two minutes leaves a wide margin.
pub const DEFAULT_STATUS_NOT_FOUND_AFTER: Duration = Duration::from_secs(120);

/// How long a customer has to finish a `requires_action` step (3-D Secure, a hosted
/// page) before the payment is failed: an hour, the lifetime of a Paystack access code
/// and well inside Stripe's 24 h for an unconfirmed PaymentIntent.
pub const DEFAULT_ACTION_EXPIRES_AFTER: Duration = Duration::from_secs(3600);
/// Callbacks are small; anything bigger is refused before its signature is even computed.
pub const DEFAULT_MAX_CALLBACK_BYTES: usize = 64 * 1024;
/// Callbacks one client address may send to one gateway per second, sustained. A provider
/// sends one callback per payment outcome (and retries): the measured peak of the whole
/// pipeline is about 200 payments/s over three gateways from one address (BENCHMARKS.md),
/// so 500/s leaves room while a flood of forged callbacks is refused before any HMAC.
pub const DEFAULT_CALLBACK_PER_SECOND: u32 = 500;
/// Callbacks one client address may send to one gateway at once (a provider's retry queue
/// draining after an outage arrives in a burst).
pub const DEFAULT_CALLBACK_BURST: u32 = 1000;

/// One `[gateways.<name>]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// The connector, one of the registry's `CONNECTORS` (checked when the registry builds).
    pub kind: String,
    /// Root of the provider's API (`http(s)://host/…`); connectors join their paths onto it.
    pub base_url: String,
    pub secret_key: Secret,
    /// Verifies callbacks; absent = `secret_key` (Paystack signs webhooks with it).
    #[serde(default)]
    pub webhook_secret: Option<Secret>,
    /// Whole-request timeout. Past it the attempt is `Ambiguous` (the request was sent).
    #[serde(rename = "timeout_ms", with = "units::ms", default = "timeout")]
    pub timeout: Duration,
    /// Connect timeout. Past it the attempt is `Retryable` (nothing was sent).
    #[serde(
        rename = "connect_timeout_ms",
        with = "units::ms",
        default = "connect_timeout"
    )]
    pub connect_timeout: Duration,
    /// How far a callback's signed timestamp may be from its receipt time.
    #[serde(
        rename = "callback_tolerance_secs",
        with = "units::secs",
        default = "callback_tolerance"
    )]
    pub callback_tolerance: Duration,
    #[serde(default = "max_callback_bytes")]
    pub max_callback_bytes: usize,
    /// `[gateways.<name>.breaker]`.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// The settle window of this provider's status query (see
    /// [`DEFAULT_STATUS_NOT_FOUND_AFTER`]). Set it longer than the provider's documented lag:
    /// too short, and a lagging "not found" would send a payment to a second provider.
    #[serde(
        rename = "status_not_found_after_ms",
        with = "units::ms",
        default = "status_not_found_after"
    )]
    pub status_not_found_after: Duration,
    /// A payment this provider accepted with no callback for this long is asked about (a
    /// status query first). `None`: the processor's `stuck_after_secs`. Shorter for a
    /// provider whose callbacks may be lost (e.g. while paygate's API is down).
    #[serde(rename = "reconcile_after_ms", with = "units::opt_ms", default)]
    pub reconcile_after: Option<Duration>,
    /// How long a payment may wait in `requires_action` for its customer (see
    /// [`DEFAULT_ACTION_EXPIRES_AFTER`]); then the provider is asked, and a payment it has
    /// not completed fails with `action_expired` (a withdrawal's hold is voided).
    #[serde(
        rename = "action_expires_after_ms",
        with = "units::ms",
        default = "action_expires_after"
    )]
    pub action_expires_after: Duration,
    /// Admit a plain `http` `base_url` whose host is not loopback: the secret key then
    /// travels in clear, so only for a sandbox on a private network (docker compose), never
    /// a real provider. Loopback `http` (tests, `paygate dev`) needs no flag.
    #[serde(default)]
    pub allow_http: bool,
    /// Callbacks per second one client address may send to this gateway (issue 17). Checked
    /// before the body is read or its signature computed: past it, 429 with `Retry-After`
    /// (providers retry). Each gateway has its own limiter, so a flood aimed at one leaves
    /// the others' callbacks untouched.
    #[serde(default = "callback_per_second")]
    pub callback_per_second: u32,
    /// Callbacks one client address may send to this gateway at once.
    #[serde(default = "callback_burst")]
    pub callback_burst: u32,
    /// The table's other keys: the connector's own settings, deserialized by the connector.
    #[serde(skip)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn callback_tolerance() -> Duration {
    DEFAULT_CALLBACK_TOLERANCE
}
fn max_callback_bytes() -> usize {
    DEFAULT_MAX_CALLBACK_BYTES
}
fn status_not_found_after() -> Duration {
    DEFAULT_STATUS_NOT_FOUND_AFTER
}

fn action_expires_after() -> Duration {
    DEFAULT_ACTION_EXPIRES_AFTER
}
fn callback_per_second() -> u32 {
    DEFAULT_CALLBACK_PER_SECOND
}
fn callback_burst() -> u32 {
    DEFAULT_CALLBACK_BURST
}

/// `[gateways.<name>.breaker]`: the circuit breaker's tunables (see `paygate_gateways::
/// breaker`). Defaults are Hystrix's, except a longer call timeout because payment providers
/// are slower than an in-datacenter service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Length of the rolling statistics window (`window_ms`, default 10 s).
    #[serde(rename = "window_ms", with = "units::ms")]
    pub window: Duration,
    /// Buckets the window is split into (default 10, at most 1000); old buckets roll out
    /// whole.
    pub buckets: u32,
    /// Calls the window must hold before it can open the breaker (default 20).
    pub min_requests: u32,
    /// Failure percentage that opens it (1-100, default 50).
    pub error_threshold_percent: u32,
    /// How long it stays open before one probe (`sleep_window_ms`, default 5 s).
    #[serde(rename = "sleep_window_ms", with = "units::ms")]
    pub sleep_window: Duration,
    /// Calls in flight at once (default 100).
    pub max_concurrent: u32,
    /// Per-call deadline (`call_timeout_ms`, default 30 s); past it the call is `Ambiguous`.
    #[serde(rename = "call_timeout_ms", with = "units::ms")]
    pub call_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            buckets: 10,
            min_requests: 20,
            error_threshold_percent: 50,
            sleep_window: Duration::from_secs(5),
            max_concurrent: 100,
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl GatewayConfig {
    /// A table with defaults for everything but the essentials (code and tests).
    pub fn new(kind: &str, base_url: &str, secret_key: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            base_url: base_url.to_owned(),
            secret_key: Secret::new(secret_key),
            webhook_secret: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            callback_tolerance: DEFAULT_CALLBACK_TOLERANCE,
            max_callback_bytes: DEFAULT_MAX_CALLBACK_BYTES,
            breaker: BreakerConfig::default(),
            status_not_found_after: DEFAULT_STATUS_NOT_FOUND_AFTER,
            reconcile_after: None,
            action_expires_after: DEFAULT_ACTION_EXPIRES_AFTER,
            allow_http: false,
            callback_per_second: DEFAULT_CALLBACK_PER_SECOND,
            callback_burst: DEFAULT_CALLBACK_BURST,
            extra: BTreeMap::new(),
        }
    }

    /// Reads one table given as JSON (tests, embedders), exactly as `[gateways.<name>]` in a
    /// file is read: errors name `gateways.<name>.<key>`.
    pub fn from_json(name: &str, table: serde_json::Value) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct Tables {
            gateways: BTreeMap<String, GatewayConfig>,
        }
        let mut tables = serde_json::Map::new();
        tables.insert(name.to_owned(), table);
        let figment = Figment::from(Serialized::defaults(serde_json::json!({
            "gateways": tables,
        })));
        let at_keys = |problems: Vec<Problem>| ConfigError(problems);
        let mut gateways = figment
            .extract::<Tables>()
            .map_err(|e| at_keys(super::figment_problems(e, |key, _| key.to_owned())))?
            .gateways;
        fill_extra(&figment, &mut gateways);
        let mut problems = Vec::new();
        for (name, gateway) in &gateways {
            gateway.check(name, &mut problems);
        }
        if !problems.is_empty() {
            return Err(at_keys(problems));
        }
        gateways.remove(name).ok_or_else(|| {
            at_keys(vec![Problem::new(
                format!("gateways.{name}"),
                "is not a table",
            )])
        })
    }

    /// The webhook secret in effect (`secret_key` unless set).
    pub fn webhook_secret(&self) -> &Secret {
        self.webhook_secret.as_ref().unwrap_or(&self.secret_key)
    }

    /// Everything wrong with this table that serde cannot tell, each at its key
    /// (`gateways.<name>.<key>`). The registry asks again for tables built in code.
    pub fn check(&self, name: &str, problems: &mut Vec<Problem>) {
        let mut bad = |key: &str, message: &str| {
            problems.push(Problem::new(format!("gateways.{name}.{key}"), message))
        };
        match Url::parse(&self.base_url) {
            Err(e) => bad("base_url", &e.to_string()),
            Ok(url) if !matches!(url.scheme(), "http" | "https") || url.host().is_none() => {
                bad("base_url", "must be an http(s) URL with a host")
            }
            Ok(url) if url.scheme() == "http" && !self.allow_http && !is_loopback(&url) => bad(
                "base_url",
                "plain http would send the secret key in clear: use https (http is admitted \
                 only for a loopback host, or with allow_http = true for a sandbox)",
            ),
            Ok(_) => {}
        }
        if self.secret_key.is_empty() {
            bad("secret_key", "must not be empty");
        }
        if self.webhook_secret.as_ref().is_some_and(Secret::is_empty) {
            bad("webhook_secret", "must not be empty");
        }
        let positive = [
            ("timeout_ms", self.timeout),
            ("connect_timeout_ms", self.connect_timeout),
            ("callback_tolerance_secs", self.callback_tolerance),
            ("status_not_found_after_ms", self.status_not_found_after),
            ("breaker.window_ms", self.breaker.window),
            ("breaker.sleep_window_ms", self.breaker.sleep_window),
            ("breaker.call_timeout_ms", self.breaker.call_timeout),
            ("action_expires_after_ms", self.action_expires_after),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                bad(key, "must be at least 1");
            }
        }
        if self.reconcile_after.is_some_and(|d| d.is_zero()) {
            bad("reconcile_after_ms", "must be at least 1");
        }
        let b = &self.breaker;
        let counts = [
            (
                "max_callback_bytes",
                u64::try_from(self.max_callback_bytes).unwrap_or(u64::MAX),
            ),
            ("breaker.buckets", u64::from(b.buckets)),
            ("breaker.min_requests", u64::from(b.min_requests)),
            ("breaker.max_concurrent", u64::from(b.max_concurrent)),
            ("callback_per_second", u64::from(self.callback_per_second)),
            ("callback_burst", u64::from(self.callback_burst)),
        ];
        for (key, value) in counts {
            if value == 0 {
                bad(key, "must be at least 1");
            }
        }
        if !(1..=100).contains(&b.error_threshold_percent) {
            bad("breaker.error_threshold_percent", "must be 1-100");
        }
        if b.window.as_millis() < u128::from(b.buckets) {
            bad(
                "breaker.window_ms",
                "must be at least one millisecond per bucket",
            );
        }
        if let Err(e) = GatewayName::parse(name) {
            problems.push(Problem::new(format!("gateways.{name}"), e.to_string()));
        }
    }

    /// The keys this struct reads; every other key of a table is the connector's. Taken
    /// from what serde writes, so it cannot drift from the fields.
    fn known_keys() -> Vec<String> {
        match serde_json::to_value(Self::new("", "", "")) {
            Ok(serde_json::Value::Object(map)) => map.into_iter().map(|(k, _)| k).collect(),
            _ => Vec::new(),
        }
    }
}

/// Whether a URL's host is this machine: `localhost` or a loopback address.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Puts each table's keys the common struct does not read into its `extra`.
pub(super) fn fill_extra(figment: &Figment, gateways: &mut BTreeMap<String, GatewayConfig>) {
    type Raw = BTreeMap<String, BTreeMap<String, serde_json::Value>>;
    if gateways.is_empty() {
        return;
    }
    let Ok(raw) = figment.extract_inner::<Raw>("gateways") else {
        return;
    };
    let known = GatewayConfig::known_keys();
    for (name, mut table) in raw {
        if let Some(gateway) = gateways.get_mut(&name) {
            table.retain(|key, _| !known.contains(key));
            gateway.extra = table;
        }
    }
}
