//! Builds the configured gateways: one `[gateways.<name>]` table per instance.
//!
//! ```toml
//! [gateways.paystack-ng]
//! kind = "json"                      # json | soap | protobuf (see CONNECTORS)
//! base_url = "https://api.example.com/"
//! secret_key = "sk_live_…"           # authenticates our requests
//! webhook_secret = "whsec_…"         # verifies callbacks; defaults to secret_key
//! timeout_ms = 10000                 # whole request, optional
//! connect_timeout_ms = 2000          # optional
//! callback_tolerance_secs = 300      # max callback timestamp skew, optional
//! max_callback_bytes = 65536         # optional
//! [gateways.paystack-ng.breaker]     # optional, see BreakerSettings
//! error_threshold_percent = 50
//! ```
//!
//! Every gateway gets its own circuit [`Breaker`]; the registry hands out both, so the
//! payment processor wraps calls without the connector knowing.
//!
//! Adding a connector is one new file plus one line in [`CONNECTORS`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paygate_core::domain::GatewayName;
use serde_json::Value;
use url::Url;

use crate::breaker::{Breaker, BreakerSettings};
use crate::secret::Secret;
use crate::PaymentGateway;

/// Builds one gateway instance from its parsed settings.
pub type Constructor = fn(GatewaySettings) -> Result<Arc<dyn PaymentGateway>, RegistryError>;

/// The connector kinds `kind = "…"` may name. **Add a provider here** (one line).
pub const CONNECTORS: &[(&str, Constructor)] = &[
    ("json", crate::json::JsonGateway::from_settings),
    ("soap", crate::soap::SoapGateway::from_settings),
    ("protobuf", crate::protobuf::ProtobufGateway::from_settings),
];

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_CALLBACK_TOLERANCE: Duration = Duration::from_secs(300);
/// How long after an ambiguous attempt a provider's "not found" is still read as "not yet
/// visible" rather than "never executed". Status endpoints of real providers lag their
/// payment endpoints by seconds; two minutes leaves a wide margin.
pub const DEFAULT_STATUS_NOT_FOUND_AFTER: Duration = Duration::from_secs(120);
/// Callbacks are small; anything bigger is refused before its signature is even computed.
pub const DEFAULT_MAX_CALLBACK_BYTES: usize = 64 * 1024;

/// A `[gateways.<name>]` table that cannot be used. `path` names the offending key, e.g.
/// `gateways.paystack-ng.base_url`, so start-up can say exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RegistryError {
    pub path: String,
    pub message: String,
}

impl RegistryError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Everything a connector needs, parsed and validated from its table.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub name: GatewayName,
    /// The `kind` string, one of [`CONNECTORS`].
    pub kind: String,
    /// Root of the provider's API; connectors join their paths onto it. Always ends in `/`
    /// so joining keeps any path prefix.
    pub base_url: Url,
    pub secret_key: Secret,
    pub webhook_secret: Secret,
    /// Whole-request timeout. Past it the attempt is `Ambiguous` (the request was sent).
    pub timeout: Duration,
    /// Connect timeout. Past it the attempt is `Retryable` (nothing was sent).
    pub connect_timeout: Duration,
    /// How far a callback's signed timestamp may be from its receipt time.
    pub callback_tolerance: Duration,
    pub max_callback_bytes: usize,
    pub breaker: BreakerSettings,
    /// How long the processor waits on this provider before asking it about a payment
    /// (`status_not_found_after_ms`, `reconcile_after_ms`).
    pub timings: Timings,
    /// Keys of the table not understood by the common parser, for connector-specific
    /// settings. Built-in connectors refuse any (see [`GatewaySettings::deny_extra`]).
    pub extra: BTreeMap<String, Value>,
}

impl GatewaySettings {
    /// Settings with defaults for everything but the essentials: handy in tests.
    pub fn new(
        name: GatewayName,
        kind: &str,
        base_url: Url,
        secret_key: Secret,
        webhook_secret: Secret,
    ) -> Self {
        Self {
            name,
            kind: kind.to_owned(),
            base_url: with_trailing_slash(base_url),
            secret_key,
            webhook_secret,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            callback_tolerance: DEFAULT_CALLBACK_TOLERANCE,
            max_callback_bytes: DEFAULT_MAX_CALLBACK_BYTES,
            breaker: BreakerSettings::default(),
            timings: Timings::default(),
            extra: BTreeMap::new(),
        }
    }

    /// The error for one of this gateway's keys.
    pub fn field_error(&self, field: &str, message: impl Into<String>) -> RegistryError {
        RegistryError::new(format!("gateways.{}.{field}", self.name), message)
    }

    /// Refuses connector-specific keys, for connectors that take none: a typo in a money
    /// path's configuration must stop start-up, not be ignored.
    pub fn deny_extra(&self) -> Result<(), RegistryError> {
        match self.extra.keys().next() {
            Some(key) => Err(self.field_error(key, "unknown key")),
            None => Ok(()),
        }
    }

    /// Parses one `[gateways.<name>]` table.
    pub fn from_table(name: &str, table: &Value) -> Result<Self, RegistryError> {
        let path = |field: &str| format!("gateways.{name}.{field}");
        let name = GatewayName::parse(name)
            .map_err(|e| RegistryError::new(format!("gateways.{name}"), e.to_string()))?;
        let Value::Object(map) = table else {
            return Err(RegistryError::new(
                format!("gateways.{name}"),
                "must be a table",
            ));
        };
        let mut map = map.clone();
        let mut take = |field: &str| map.remove(field);

        let kind = required_string(take("kind"), &path("kind"))?;
        if !CONNECTORS.iter().any(|(k, _)| *k == kind) {
            let known: Vec<&str> = CONNECTORS.iter().map(|(k, _)| *k).collect();
            return Err(RegistryError::new(
                path("kind"),
                format!("unknown kind {kind:?}, expected one of {known:?}"),
            ));
        }
        let base_url = required_string(take("base_url"), &path("base_url"))?;
        let base_url = Url::parse(&base_url)
            .map_err(|e| RegistryError::new(path("base_url"), e.to_string()))?;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.host().is_none() {
            return Err(RegistryError::new(
                path("base_url"),
                "must be an http(s) URL with a host",
            ));
        }
        let secret_key = Secret::new(required_string(take("secret_key"), &path("secret_key"))?);
        if secret_key.is_empty() {
            return Err(RegistryError::new(path("secret_key"), "must not be empty"));
        }
        let webhook_secret = match take("webhook_secret") {
            None => secret_key.clone(),
            some => {
                let secret = Secret::new(required_string(some, &path("webhook_secret"))?);
                if secret.is_empty() {
                    return Err(RegistryError::new(
                        path("webhook_secret"),
                        "must not be empty",
                    ));
                }
                secret
            }
        };
        let timeout =
            optional_millis(take("timeout_ms"), &path("timeout_ms"))?.unwrap_or(DEFAULT_TIMEOUT);
        let connect_timeout =
            optional_millis(take("connect_timeout_ms"), &path("connect_timeout_ms"))?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let callback_tolerance = optional_u64(
            take("callback_tolerance_secs"),
            &path("callback_tolerance_secs"),
            1,
        )?
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_CALLBACK_TOLERANCE);
        let max_callback_bytes =
            optional_u64(take("max_callback_bytes"), &path("max_callback_bytes"), 1)?
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .unwrap_or(DEFAULT_MAX_CALLBACK_BYTES);
        let breaker = match take("breaker") {
            None => BreakerSettings::default(),
            Some(value) => BreakerSettings::from_table(&value, &path("breaker"))?,
        };
        let status_not_found_after = optional_millis(
            take("status_not_found_after_ms"),
            &path("status_not_found_after_ms"),
        )?
        .unwrap_or(DEFAULT_STATUS_NOT_FOUND_AFTER);
        let reconcile_after =
            optional_millis(take("reconcile_after_ms"), &path("reconcile_after_ms"))?;
        Ok(Self {
            name,
            kind,
            base_url: with_trailing_slash(base_url),
            secret_key,
            webhook_secret,
            timeout,
            connect_timeout,
            callback_tolerance,
            max_callback_bytes,
            breaker,
            timings: Timings {
                status_not_found_after,
                reconcile_after,
            },
            extra: map.into_iter().collect(),
        })
    }
}

fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

pub(crate) fn required_string(value: Option<Value>, path: &str) -> Result<String, RegistryError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RegistryError::new(path, "must be a string")),
        None => Err(RegistryError::new(path, "is required")),
    }
}

/// A non-negative integer at least `min`. Environment variables arrive as strings, so a
/// string of digits is accepted too.
pub(crate) fn optional_u64(
    value: Option<Value>,
    path: &str,
    min: u64,
) -> Result<Option<u64>, RegistryError> {
    let n = match value {
        None => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n >= min => Ok(Some(n)),
        _ => Err(RegistryError::new(
            path,
            format!("must be an integer >= {min}"),
        )),
    }
}

pub(crate) fn optional_millis(
    value: Option<Value>,
    path: &str,
) -> Result<Option<Duration>, RegistryError> {
    Ok(optional_u64(value, path, 1)?.map(Duration::from_millis))
}

/// A gateway and the breaker that guards it.
#[derive(Clone)]
pub struct RegisteredGateway {
    pub gateway: Arc<dyn PaymentGateway>,
    pub breaker: Arc<Breaker>,
    pub timings: Timings,
}

/// How long the processor waits on a gateway before asking it about a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// `status_not_found_after_ms`: the settle window of its status query (see
    /// [`DEFAULT_STATUS_NOT_FOUND_AFTER`]). Set it longer than the provider's documented lag:
    /// too short, and a lagging "not found" would send a payment to a second provider.
    pub status_not_found_after: Duration,
    /// `reconcile_after_ms`: a payment this provider accepted with no callback for this long
    /// is asked about (a status query first). `None`: the processor's `stuck_after_secs`.
    /// Shorter for a provider whose callbacks may be lost (e.g. while paygate's API is down).
    pub reconcile_after: Option<Duration>,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            status_not_found_after: DEFAULT_STATUS_NOT_FOUND_AFTER,
            reconcile_after: None,
        }
    }
}

/// The gateways this process can use, by name.
#[derive(Clone, Default)]
pub struct GatewayRegistry {
    entries: BTreeMap<GatewayName, RegisteredGateway>,
}

impl std::fmt::Debug for GatewayRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl GatewayRegistry {
    /// Builds every `[gateways.<name>]` table (`Config.gateways`). The first bad table
    /// stops the build with an error naming `gateways.<name>.<field>`.
    pub fn from_config(gateways: &BTreeMap<String, Value>) -> Result<Self, RegistryError> {
        let mut registry = Self::default();
        for (name, table) in gateways {
            let settings = GatewaySettings::from_table(name, table)?;
            let breaker_settings = settings.breaker.clone();
            let timings = settings.timings;
            let gateway = build(settings)?;
            registry.insert_with(gateway, breaker_settings, timings);
        }
        Ok(registry)
    }

    /// A registry of explicit gateways (tests, embedders), each with a default breaker.
    /// A later gateway with the same name replaces an earlier one.
    pub fn from_gateways(gateways: Vec<Arc<dyn PaymentGateway>>) -> Self {
        let mut registry = Self::default();
        for gateway in gateways {
            registry.insert(gateway, BreakerSettings::default());
        }
        registry
    }

    /// Adds (or replaces) a gateway with a fresh breaker built from `breaker` and the
    /// default timings.
    pub fn insert(&mut self, gateway: Arc<dyn PaymentGateway>, breaker: BreakerSettings) {
        self.insert_with(gateway, breaker, Timings::default());
    }

    /// [`Self::insert`] with the gateway's own timings.
    pub fn insert_with(
        &mut self,
        gateway: Arc<dyn PaymentGateway>,
        breaker: BreakerSettings,
        timings: Timings,
    ) {
        let name = gateway.name().clone();
        let breaker = Arc::new(Breaker::new(name.clone(), breaker));
        self.entries.insert(
            name,
            RegisteredGateway {
                gateway,
                breaker,
                timings,
            },
        );
    }

    /// The shortest reconciliation bound over the gateways (`default` for those without one).
    pub fn shortest_reconcile_after(&self, default: Duration) -> Duration {
        self.entries
            .values()
            .map(|e| e.timings.reconcile_after.unwrap_or(default))
            .fold(default, Duration::min)
    }

    pub fn get(&self, name: &GatewayName) -> Option<Arc<dyn PaymentGateway>> {
        self.entries.get(name).map(|e| Arc::clone(&e.gateway))
    }

    /// The breaker guarding `name`; wrap every deposit/withdraw/status call in it.
    pub fn breaker(&self, name: &GatewayName) -> Option<Arc<Breaker>> {
        self.entries.get(name).map(|e| Arc::clone(&e.breaker))
    }

    /// Gateway and breaker together.
    pub fn entry(&self, name: &GatewayName) -> Option<RegisteredGateway> {
        self.entries.get(name).cloned()
    }

    /// Names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &GatewayName> {
        self.entries.keys()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Builds one gateway through the constructor its `kind` names.
pub fn build(settings: GatewaySettings) -> Result<Arc<dyn PaymentGateway>, RegistryError> {
    match CONNECTORS.iter().find(|(kind, _)| *kind == settings.kind) {
        Some((_, construct)) => construct(settings),
        None => Err(settings.field_error("kind", format!("unknown kind {:?}", settings.kind))),
    }
}

#[cfg(test)]
mod tests;
