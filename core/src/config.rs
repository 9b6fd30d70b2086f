//! One typed configuration for every paygate process.
//!
//! Sources, later ones winning: built-in local defaults, an optional TOML file (path in
//! `PAYGATE_CONFIG`), then `PAYGATE_*` environment variables. A variable is the upper-cased
//! key path joined by `_`, the first `_` separating the section: `PAYGATE_DATABASE_URL` sets
//! `database.url`, `PAYGATE_KAFKA_TOPIC_PREFIX` sets `kafka.topic_prefix`. Deeper keys use
//! `__`: `PAYGATE_GATEWAYS_SANDBOX__BASE_URL` sets `gateways.sandbox.base_url`.
//!
//! A bad value stops start-up with a message naming the variable (or file key) and why.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Environment variable naming an optional TOML file.
pub const CONFIG_FILE_VAR: &str = "PAYGATE_CONFIG";
const ENV_PREFIX: &str = "PAYGATE_";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub log: LogConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    pub api: ApiConfig,
    pub processor: ProcessorConfig,
    pub callbacks: CallbacksConfig,
    pub dispatcher: DispatcherConfig,
    /// `[gateways.<name>]` tables, kept raw here and parsed by the gateway registry, which
    /// owns what a gateway's settings mean.
    #[serde(default)]
    pub gateways: BTreeMap<String, serde_json::Value>,
    /// `[recovery]`: healing what the broker lost, readiness probes.
    #[serde(default)]
    pub recovery: RecoveryConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host:port/db`.
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before failing.
    pub acquire_timeout_ms: u64,
    /// Apply embedded migrations when a service starts.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Prefix of every key paygate writes, so several deployments (or tests) share one Redis.
    pub key_prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list. Empty means "no broker": `paygate dev` then starts
    /// an in-process mock cluster.
    pub brokers: String,
    /// Topic names are `<prefix>.transactions.pending` etc.
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Consumer group ids are `<group_prefix>.<service>`.
    pub group_prefix: String,
    /// How long the producer keeps retrying one message before reporting failure.
    pub message_timeout_ms: u64,
    /// Longest a consumer's fetch waits at the broker for data (`fetch.wait.max.ms`,
    /// librdkafka's 500 ms by default). Kafka answers a fetch as soon as data arrives; tansu
    /// (the local broker) waits this out, so on tansu each hop costs up to this long. 10 ms
    /// takes that away, but with it a consumer restarted after a crash sometimes never got
    /// some messages from tansu 0.6 (2 runs in 7 of the processor's crash test, 0 in 6 at
    /// 500 ms): keep the default unless measuring latency on tansu (BENCHMARKS.md).
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_max_ms: u64,
    /// How long a producer gathers messages into one request (`linger.ms`). Broker cost is
    /// per request more than per message, so a few milliseconds buy a lot under load.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// This process's stable identity in its consumer groups (`group.instance.id`, KIP-345
    /// static membership). Set it per instance (e.g. the pod name, `PAYGATE_KAFKA_INSTANCE_ID`)
    /// and an instance restarted within `session_timeout_ms` takes back its own partitions
    /// without a rebalance; two live processes must never share one. Absent = dynamic
    /// membership (what tests and `paygate dev` use).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How long the group coordinator waits for a silent member before giving its
    /// partitions to others (`session.timeout.ms`). It bounds how long a crashed (kill -9)
    /// member's partitions sit unread: 10 s, the low end of what is safe with a 1 s
    /// heartbeat and multi-second pauses (GC-free, but Postgres stalls) on a loaded host.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// A consumer that holds no partitions while its group has lag and the group's
    /// committed offsets have not moved for this long leaves and rejoins the group
    /// (issue 13: a worker restarted after a crash sat with no partitions for minutes).
    /// 0 turns the watchdog off.
    #[serde(default = "default_idle_rejoin_secs")]
    pub idle_rejoin_secs: u64,
}

/// Consumers heartbeat this often (`heartbeat.interval.ms`); the session timeout must
/// allow a few missed ones.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;

fn default_session_timeout_ms() -> u64 {
    10_000
}

fn default_idle_rejoin_secs() -> u64 {
    15
}

fn default_linger_ms() -> u64 {
    5
}

fn default_fetch_wait_ms() -> u64 {
    500
}

/// Metrics exposure for processes without their own HTTP server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `host:port` where the payment processor, callback processor and dispatcher serve
    /// Prometheus `/metrics` when run as their own processes; absent = not served.
    #[serde(default)]
    pub metrics_bind: Option<String>,
}

/// The API process: merchant REST API, provider callback ingress, outbox relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `host:port` to listen on; port 0 picks a free port (tests).
    pub bind: String,
    /// Largest merchant request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Largest provider callback body accepted (413 above).
    pub callback_max_body_bytes: usize,
    /// Sustained requests per second allowed per API key (governor; 429 above).
    pub rate_limit_per_second: u32,
    /// Burst allowance per API key.
    pub rate_limit_burst: u32,
    /// Idempotency keys are remembered at least this long (Stripe: 24 h).
    pub idempotency_retention_hours: u64,
    /// TTL of the Redis cache-aside entry for `GET /v1/transactions/{id}`.
    pub cache_ttl_ms: u64,
    /// Outbox rows published per relay round.
    pub outbox_batch_size: i64,
    /// Relay poll interval for rows written by other processes (a relay is woken at once by
    /// commits in its own process).
    pub outbox_poll_ms: u64,
}

/// The payment processor: pending transactions to provider calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Transactions handled at once (bounded worker pool).
    pub concurrency: usize,
    /// Lease on a transaction while one attempt runs; longer than the slowest provider call.
    pub lock_ttl_ms: u64,
    pub lock_wait_ms: u64,
    /// Exponential backoff with full jitter: `random(0, min(cap, base * 2^attempt))`.
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Provider calls per transaction before it fails with `max_attempts_exceeded`.
    pub max_attempts: i32,
    /// When every route's breaker is open, try again after this long (no attempt used).
    pub breaker_deferral_ms: u64,
    /// How often the retry scheduler looks for due transactions, and how many it takes.
    pub scheduler_poll_ms: u64,
    pub scheduler_batch: i64,
    /// A transaction in `submitting`/`submitted` untouched this long is reconciled.
    pub stuck_after_secs: u64,
    /// A provider's `Retry-After` is honoured up to this; a larger one (or a garbage one) is
    /// capped, so no provider header can park a payment for years or overflow a timestamp.
    #[serde(default = "defaults::max_retry_after_secs")]
    pub max_retry_after_secs: u64,
    /// After an ambiguous attempt, status answers that settle nothing (errors, "in
    /// progress") for this long make the transaction `unresolved` and tell the merchant.
    #[serde(default = "defaults::unresolved_after_secs")]
    pub unresolved_after_secs: u64,
    /// Reconciliation keeps asking about an `unresolved` transaction for this long after its
    /// ambiguous attempt (72 h), then leaves it for a person.
    #[serde(default = "defaults::reconcile_horizon_secs")]
    pub reconcile_horizon_secs: u64,
    /// Bounds of the wait between two status queries about one payment: it grows with the
    /// time since the ambiguous attempt (half of it), within these.
    #[serde(default = "defaults::status_check_min_ms")]
    pub status_check_min_ms: u64,
    #[serde(default = "defaults::status_check_max_ms")]
    pub status_check_max_ms: u64,
    /// Routing rules, first match wins; a transaction naming a gateway skips them.
    #[serde(default)]
    pub routes: Vec<RouteRule>,
}

/// One routing rule: which gateways (in priority order) take matching transactions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// `deposit` or `withdrawal`; absent matches both.
    #[serde(default)]
    pub kind: Option<String>,
    /// ISO 4217 code; absent matches any.
    #[serde(default)]
    pub currency: Option<String>,
    /// ISO 3166 alpha-2 country from the transaction's metadata `country`; absent matches any.
    #[serde(default)]
    pub country: Option<String>,
    /// Gateway names, highest priority first.
    pub gateways: Vec<String>,
    /// Whether a retryable failure or an open breaker moves on to the next gateway.
    #[serde(default = "default_true")]
    pub failover: bool,
}

fn default_true() -> bool {
    true
}

/// The callback processor: provider callbacks to state transitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksConfig {
    pub concurrency: usize,
    pub lock_ttl_ms: u64,
    pub lock_wait_ms: u64,
}

/// The callback dispatcher: signed merchant webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Deliveries in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Deliveries in flight at once to one endpoint (bulkhead).
    pub per_endpoint_concurrency: usize,
    pub request_timeout_ms: u64,
    /// Delay before each attempt, in seconds: the first is attempt 1.
    pub retry_schedule_secs: Vec<u64>,
    /// ± this percentage of jitter on each delay.
    pub jitter_percent: u32,
    /// A `Retry-After` longer than this is capped to it.
    pub retry_after_max_secs: u64,
    /// An endpoint failing without a success for this long is disabled.
    pub disable_after_failing_secs: u64,
    /// Deliver to loopback addresses (tests and `paygate dev` only).
    pub allow_loopback: bool,
    /// Deliver over plain http (tests and `paygate dev` only).
    pub allow_http: bool,
    pub scheduler_poll_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directives; `RUST_LOG` overrides when set.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database: DatabaseConfig {
                url: "postgres://postgres@127.0.0.1:5432/paygate".into(),
                max_connections: 16,
                acquire_timeout_ms: 5_000,
                migrate_on_start: true,
            },
            redis: RedisConfig {
                url: "redis://127.0.0.1:6379".into(),
                key_prefix: "paygate".into(),
            },
            kafka: KafkaConfig {
                brokers: "127.0.0.1:9092".into(),
                topic_prefix: "paygate".into(),
                partitions: 4,
                replication_factor: 1,
                group_prefix: "paygate".into(),
                message_timeout_ms: 30_000,
                fetch_wait_max_ms: default_fetch_wait_ms(),
                linger_ms: default_linger_ms(),
                instance_id: None,
                session_timeout_ms: default_session_timeout_ms(),
                idle_rejoin_secs: default_idle_rejoin_secs(),
            },
            log: LogConfig {
                format: LogFormat::Pretty,
                filter: "info,sqlx=warn".into(),
            },
            telemetry: TelemetryConfig::default(),
            api: ApiConfig {
                bind: "127.0.0.1:8080".into(),
                max_body_bytes: 64 * 1024,
                callback_max_body_bytes: 256 * 1024,
                rate_limit_per_second: 2_000,
                rate_limit_burst: 4_000,
                idempotency_retention_hours: 24,
                cache_ttl_ms: 2_000,
                outbox_batch_size: 256,
                outbox_poll_ms: 200,
            },
            processor: ProcessorConfig {
                concurrency: 64,
                lock_ttl_ms: 30_000,
                lock_wait_ms: 2_000,
                retry_base_ms: 1_000,
                retry_cap_ms: 300_000,
                max_attempts: 8,
                breaker_deferral_ms: 5_000,
                scheduler_poll_ms: 500,
                scheduler_batch: 256,
                stuck_after_secs: 300,
                max_retry_after_secs: defaults::max_retry_after_secs(),
                unresolved_after_secs: defaults::unresolved_after_secs(),
                reconcile_horizon_secs: defaults::reconcile_horizon_secs(),
                status_check_min_ms: defaults::status_check_min_ms(),
                status_check_max_ms: defaults::status_check_max_ms(),
                routes: Vec::new(),
            },
            callbacks: CallbacksConfig {
                concurrency: 64,
                lock_ttl_ms: 10_000,
                lock_wait_ms: 5_000,
            },
            dispatcher: DispatcherConfig {
                // A busy merchant gets hundreds of webhooks a second on one endpoint; 4 at a
                // time capped it near 150/s (BENCHMARKS.md). A dead endpoint still holds at
                // most a quarter of the workers.
                concurrency: 128,
                per_endpoint_concurrency: 32,
                request_timeout_ms: 10_000,
                retry_schedule_secs: vec![0, 5, 300, 1_800, 7_200, 18_000, 36_000, 36_000],
                jitter_percent: 20,
                retry_after_max_secs: 3_600,
                disable_after_failing_secs: 5 * 24 * 3_600,
                allow_loopback: false,
                allow_http: false,
                scheduler_poll_ms: 500,
            },
            gateways: BTreeMap::new(),
            recovery: RecoveryConfig::default(),
        }
    }
}

/// `[recovery]`: Postgres heals what the broker lost (see `paygate_core::heal`), and how
/// workers' `/readyz` probes behave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// A `pending` transaction not claimed this long is announced again (payment processor).
    pub pending_unclaimed_secs: u64,
    /// A terminal transaction with no webhook event this long after it became terminal has
    /// its `completed` event announced again (callback dispatcher).
    pub webhook_missing_secs: u64,
    /// How often each healer scans.
    pub heal_poll_ms: u64,
    /// Rows re-announced per scan, at most (a scan that fills it runs again at once).
    pub heal_batch: i64,
    /// How far back the webhook healer looks when a process starts.
    pub heal_lookback_secs: u64,
    /// How long a worker's `/readyz` answer is reused (probes are cheap under tight polling).
    pub ready_cache_ms: u64,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            pending_unclaimed_secs: 30,
            webhook_missing_secs: 60,
            heal_poll_ms: 5_000,
            heal_batch: 256,
            heal_lookback_secs: 24 * 3_600,
            ready_cache_ms: 1_500,
        }
    }
}

/// A configuration that cannot be used, with the variable or key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Defaults, then the file named by `PAYGATE_CONFIG` (if set), then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var_os(CONFIG_FILE_VAR).map(PathBuf::from);
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the file and environment given explicitly (for tests).
    pub fn load_from(
        file: Option<PathBuf>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "{CONFIG_FILE_VAR}: no such file {}",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != CONFIG_FILE_VAR)
            .collect();
        for (key, value) in &vars {
            let path = env_key_to_path(key);
            figment = figment.merge(Serialized::default(&path, env_value(value)));
        }
        let config: Config = figment
            .extract()
            .map_err(|e| describe(e, &vars, file.as_deref()))?;
        config.validate()?;
        Ok(config)
    }

    /// Rules serde cannot express; each names the variable to fix.
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |var: &str, why: &str| Err(ConfigError(format!("PAYGATE_{var}: {why}")));
        if !(self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return fail("DATABASE_URL", "must be a postgres:// URL");
        }
        if self.database.max_connections == 0 {
            return fail("DATABASE_MAX_CONNECTIONS", "must be at least 1");
        }
        if !(self.redis.url.starts_with("redis://") || self.redis.url.starts_with("rediss://")) {
            return fail("REDIS_URL", "must be a redis:// URL");
        }
        if self.kafka.partitions < 1 {
            return fail("KAFKA_PARTITIONS", "must be at least 1");
        }
        if self.kafka.replication_factor < 1 {
            return fail("KAFKA_REPLICATION_FACTOR", "must be at least 1");
        }
        if self.kafka.session_timeout_ms < 3 * HEARTBEAT_INTERVAL_MS {
            return fail(
                "KAFKA_SESSION_TIMEOUT_MS",
                "must be at least 3000 (three heartbeats of 1 s)",
            );
        }
        if let Some(id) = &self.kafka.instance_id {
            if id.trim().is_empty() {
                return fail("KAFKA_INSTANCE_ID", "must not be empty when set");
            }
        }
        let prefix_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !prefix_ok(&self.kafka.topic_prefix) {
            return fail(
                "KAFKA_TOPIC_PREFIX",
                "must be non-empty letters, digits, '.', '-' or '_'",
            );
        }
        if !prefix_ok(&self.kafka.group_prefix) {
            return fail(
                "KAFKA_GROUP_PREFIX",
                "must be non-empty letters, digits, '.', '-' or '_'",
            );
        }
        if self.api.idempotency_retention_hours < 24 {
            return fail(
                "API_IDEMPOTENCY_RETENTION_HOURS",
                "must be at least 24 (merchants rely on a day of replay)",
            );
        }
        if self.api.rate_limit_per_second == 0 || self.api.rate_limit_burst == 0 {
            return fail(
                "API_RATE_LIMIT_PER_SECOND",
                "rate limit and burst must be at least 1",
            );
        }
        if self.api.outbox_batch_size < 1 {
            return fail("API_OUTBOX_BATCH_SIZE", "must be at least 1");
        }
        if self.processor.concurrency == 0
            || self.callbacks.concurrency == 0
            || self.dispatcher.concurrency == 0
        {
            return fail(
                "PROCESSOR_CONCURRENCY",
                "every service concurrency must be at least 1",
            );
        }
        if self.processor.max_attempts < 1 {
            return fail("PROCESSOR_MAX_ATTEMPTS", "must be at least 1");
        }
        if self.dispatcher.retry_schedule_secs.is_empty() {
            return fail(
                "DISPATCHER_RETRY_SCHEDULE_SECS",
                "needs at least one delay (0 = at once)",
            );
        }
        if self.dispatcher.per_endpoint_concurrency == 0 {
            return fail("DISPATCHER_PER_ENDPOINT_CONCURRENCY", "must be at least 1");
        }
        for (i, rule) in self.processor.routes.iter().enumerate() {
            if rule.gateways.is_empty() {
                return Err(ConfigError(format!(
                    "processor.routes[{i}]: needs at least one gateway"
                )));
            }
        }
        Ok(())
    }
}

impl DatabaseConfig {
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }
}

/// `PAYGATE_KAFKA_TOPIC_PREFIX` → `kafka.topic_prefix`; `PAYGATE_GATEWAYS_X__BASE_URL` →
/// `gateways.x.base_url`.
fn env_key_to_path(var: &str) -> String {
    let rest = var.trim_start_matches(ENV_PREFIX).to_ascii_lowercase();
    let (section, key) = rest.split_once('_').unwrap_or((rest.as_str(), ""));
    if key.is_empty() {
        return section.to_owned();
    }
    format!("{section}.{}", key.replace("__", "."))
}

/// Environment values are strings; numbers and booleans are recognised so typed fields
/// accept them, and anything else stays a string for serde to judge.
fn env_value(raw: &str) -> figment::value::Value {
    use figment::value::Value;
    if let Ok(i) = raw.parse::<i64>() {
        return Value::from(i);
    }
    // `0,5,300`: a list of integers (retry schedules).
    if raw.contains(',') {
        let numbers: Result<Vec<i64>, _> =
            raw.split(',').map(|p| p.trim().parse::<i64>()).collect();
        if let Ok(numbers) = numbers {
            return Value::from(numbers);
        }
    }
    match raw {
        "true" => Value::from(true),
        "false" => Value::from(false),
        _ => Value::from(raw.to_owned()),
    }
}

fn describe(
    error: figment::Error,
    vars: &[(String, String)],
    file: Option<&std::path::Path>,
) -> ConfigError {
    let messages: Vec<String> = error
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let from_env = vars
                .iter()
                .find(|(k, _)| env_key_to_path(k) == path)
                .map(|(k, _)| k.clone());
            let place = match (from_env, file) {
                (Some(var), _) => var,
                (None, Some(file)) if !path.is_empty() => format!("{} key {path}", file.display()),
                (None, _) if !path.is_empty() => {
                    format!("PAYGATE_{}", path.replace('.', "_").to_ascii_uppercase())
                }
                _ => "configuration".to_owned(),
            };
            format!("{place}: {}", e.kind)
        })
        .collect();
    ConfigError(messages.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_local_stack() {
        let config = Config::load_from(None, env(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.database.url,
            "postgres://postgres@127.0.0.1:5432/paygate"
        );
        assert_eq!(config.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.log.format, LogFormat::Pretty);
    }

    #[test]
    fn environment_overrides_with_single_underscore_keys() {
        let config = Config::load_from(
            None,
            env(&[
                ("PAYGATE_KAFKA_BROKERS", "10.1.1.1:9092"),
                ("PAYGATE_KAFKA_TOPIC_PREFIX", "t1"),
                ("PAYGATE_DATABASE_MAX_CONNECTIONS", "3"),
                ("PAYGATE_LOG_FORMAT", "json"),
                ("PAYGATE_DISPATCHER_RETRY_SCHEDULE_SECS", "0,1,2"),
                ("PAYGATE_DISPATCHER_ALLOW_LOOPBACK", "true"),
                ("OTHER_THING", "ignored"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.kafka.brokers, "10.1.1.1:9092");
        assert_eq!(config.kafka.topic_prefix, "t1");
        assert_eq!(config.database.max_connections, 3);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.dispatcher.retry_schedule_secs, vec![0, 1, 2]);
        assert!(config.dispatcher.allow_loopback);
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let cases = [
            ("PAYGATE_DATABASE_MAX_CONNECTIONS", "lots"),
            ("PAYGATE_LOG_FORMAT", "xml"),
            ("PAYGATE_DATABASE_URL", "mysql://x"),
            ("PAYGATE_KAFKA_PARTITIONS", "0"),
            ("PAYGATE_REDIS_URL", "http://nope"),
        ];
        for (var, value) in cases {
            let err = Config::load_from(None, env(&[(var, value)]))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(var), "{var}={value}: {err}");
        }
        let err = Config::load_from(None, env(&[("PAYGATE_DATABASE_PORT", "1")]))
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("PAYGATE_DATABASE_PORT"));
    }

    #[test]
    fn toml_file_then_environment() {
        let dir = std::env::temp_dir().join(format!("paygate-config-{}", uuid::Uuid::new_v4()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("paygate.toml");
        let toml = "[kafka]\ntopic_prefix = \"from-file\"\npartitions = 8\n\n[gateways.sandbox-json]\nkind = \"json\"\nbase_url = \"http://127.0.0.1:1\"\n";
        std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
        let config = Config::load_from(
            Some(path.clone()),
            env(&[("PAYGATE_KAFKA_PARTITIONS", "2")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.kafka.topic_prefix, "from-file");
        assert_eq!(config.kafka.partitions, 2);
        assert_eq!(config.gateways["sandbox-json"]["kind"], "json");

        std::fs::write(&path, "[kafka]\npartitions = \"many\"\n").unwrap_or_else(|e| panic!("{e}"));
        let err = Config::load_from(Some(path.clone()), env(&[]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("kafka.partitions"), "{err}");
        let missing = Config::load_from(Some(dir.join("absent.toml")), env(&[]))
            .err()
            .map(|e| e.to_string());
        assert!(missing.unwrap_or_default().contains(CONFIG_FILE_VAR));
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Defaults of settings added after the first release, so a config file written before
/// them still loads.
mod defaults {
    pub fn max_retry_after_secs() -> u64 {
        3_600
    }
    pub fn unresolved_after_secs() -> u64 {
        15 * 60
    }
    pub fn reconcile_horizon_secs() -> u64 {
        72 * 3_600
    }
    pub fn status_check_min_ms() -> u64 {
        1_000
    }
    pub fn status_check_max_ms() -> u64 {
        10 * 60 * 1_000
    }
}
