//! Builds the configured gateways: one `[gateways.<name>]` table per instance, read by the
//! configuration into a [`GatewayConfig`] (its keys and defaults are documented there).
//! The registry checks the `kind` against [`CONNECTORS`] and hands the connector its
//! [`GatewaySettings`], including the table's connector-specific keys (`extra`).
//!
//! Every gateway gets its own circuit [`Breaker`]; the registry hands out both, so the
//! payment processor wraps calls without the connector knowing.
//!
//! Adding a connector is one new file plus one line in [`CONNECTORS`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paygate_core::config::{GatewayConfig, Problem};
use paygate_core::domain::GatewayName;
use serde_json::Value;
use url::Url;

use crate::breaker::{Breaker, BreakerSettings};
use crate::secret::Secret;
use crate::PaymentGateway;

pub use paygate_core::config::{
    DEFAULT_ACTION_EXPIRES_AFTER, DEFAULT_CALLBACK_TOLERANCE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CALLBACK_BYTES, DEFAULT_STATUS_NOT_FOUND_AFTER, DEFAULT_TIMEOUT,
};

/// Builds one gateway instance from its parsed settings.
pub type Constructor = fn(GatewaySettings) -> Result<Arc<dyn PaymentGateway>, RegistryError>;

/// The connector kinds `kind = "…"` may name. **Add a provider here** (one line).
pub const CONNECTORS: &[(&str, Constructor)] = &[
    ("sandbox-json", crate::json::JsonGateway::from_settings),
    ("sandbox-soap", crate::soap::SoapGateway::from_settings),
    (
        "sandbox-proto",
        crate::protobuf::ProtobufGateway::from_settings,
    ),
    ("paystack", crate::paystack::PaystackGateway::from_settings),
    ("mpesa", crate::mpesa::MpesaGateway::from_settings),
    ("stripe", crate::stripe::StripeGateway::from_settings),
];

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

impl From<Problem> for RegistryError {
    fn from(problem: Problem) -> Self {
        Self::new(problem.at, problem.message)
    }
}

/// Everything a connector needs, from its `[gateways.<name>]` table, checked.
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

    /// Checks one `[gateways.<name>]` table (read by the configuration, or built in code)
    /// and turns it into a connector's settings. The first problem names its key.
    pub fn from_config(name: &str, config: &GatewayConfig) -> Result<Self, RegistryError> {
        let mut problems = Vec::new();
        config.check(name, &mut problems);
        if let Some(problem) = problems.into_iter().next() {
            return Err(problem.into());
        }
        let path = |field: &str| format!("gateways.{name}.{field}");
        if !CONNECTORS.iter().any(|(k, _)| *k == config.kind) {
            let known: Vec<&str> = CONNECTORS.iter().map(|(k, _)| *k).collect();
            return Err(RegistryError::new(
                path("kind"),
                format!("unknown kind {:?}, expected one of {known:?}", config.kind),
            ));
        }
        let gateway = GatewayName::parse(name)
            .map_err(|e| RegistryError::new(format!("gateways.{name}"), e.to_string()))?;
        let base_url = Url::parse(&config.base_url)
            .map_err(|e| RegistryError::new(path("base_url"), e.to_string()))?;
        Ok(Self {
            name: gateway,
            kind: config.kind.clone(),
            base_url: with_trailing_slash(base_url),
            secret_key: config.secret_key.clone(),
            webhook_secret: config.webhook_secret().clone(),
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            callback_tolerance: config.callback_tolerance,
            max_callback_bytes: config.max_callback_bytes,
            breaker: config.breaker.clone(),
            timings: Timings {
                status_not_found_after: config.status_not_found_after,
                reconcile_after: config.reconcile_after,
                action_expires_after: config.action_expires_after,
            },
            extra: config.extra.clone(),
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
    /// `action_expires_after_ms`: how long a `requires_action` payment waits for its
    /// customer before the provider is asked and, unless it completed, the payment fails.
    pub action_expires_after: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            status_not_found_after: DEFAULT_STATUS_NOT_FOUND_AFTER,
            reconcile_after: None,
            action_expires_after: DEFAULT_ACTION_EXPIRES_AFTER,
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
    pub fn from_config(gateways: &BTreeMap<String, GatewayConfig>) -> Result<Self, RegistryError> {
        let mut registry = Self::default();
        for (name, table) in gateways {
            let settings = GatewaySettings::from_config(name, table)?;
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
