//! One typed configuration for every paygate process.
//!
//! Sources, later ones winning: built-in local defaults, an optional TOML file (path in
//! `PAYGATE_CONFIG`), then `PAYGATE_*` environment variables, mapped to keys by figment's
//! `Env` provider (see [`env`]): `PAYGATE_DATABASE_URL` sets `database.url`,
//! `PAYGATE_KAFKA_TOPIC_PREFIX` sets `kafka.topic_prefix`, and `__` nests deeper:
//! `PAYGATE_GATEWAYS_SANDBOX-JSON__BASE_URL` sets `gateways.sandbox-json.base_url`.
//! docs/ARCHITECTURE.md ("Configuration") has the table of sections.
//!
//! Every section refuses keys it does not know (a misspelt key is an error naming it);
//! `[gateways.<name>]` hands the keys it does not know to the gateway's connector
//! ([`GatewayConfig::extra`]). Durations are [`Duration`]s from load on, each key keeping
//! its unit in its name (`lock_ttl_ms`, `stuck_after_secs`; see [`units`]). Settings passed
//! to librdkafka as millisecond strings (`kafka.*_ms`) stay integers.
//!
//! A configuration that cannot be used stops start-up with every problem found, each
//! naming the variable (or file key) to fix and why.

pub mod env;
mod gateway;
mod kafka_security;
mod secrets;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::{Figment, Metadata, Provider};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub use gateway::{
    BreakerConfig, GatewayConfig, DEFAULT_ACTION_EXPIRES_AFTER, DEFAULT_CALLBACK_BURST,
    DEFAULT_CALLBACK_PER_SECOND, DEFAULT_CALLBACK_TOLERANCE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CALLBACK_BYTES, DEFAULT_STATUS_NOT_FOUND_AFTER, DEFAULT_TIMEOUT,
};
pub use kafka_security::{KafkaSecurity, SaslMechanism, SecurityProtocol};
pub use secrets::{SecretsConfig, INSECURE_DEV_KEY, INSECURE_DEV_KEY_ID};

/// Environment variable naming an optional TOML file.
pub const CONFIG_FILE_VAR: &str = "PAYGATE_CONFIG";

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
    /// `[outbox]`: the relay every service runs.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// `[destinations]`: which webhook URLs the API accepts and the dispatcher delivers to.
    #[serde(default)]
    pub destinations: DestinationsConfig,
    pub processor: ProcessorConfig,
    pub callbacks: CallbacksConfig,
    pub dispatcher: DispatcherConfig,
    /// `[gateways.<name>]` tables; the gateway registry builds the connectors from them.
    #[serde(default)]
    pub gateways: BTreeMap<String, GatewayConfig>,
    /// `[recovery]`: healing what the broker lost, readiness probes.
    #[serde(default)]
    pub recovery: RecoveryConfig,
    /// `[secrets]`: the keyring sealing webhook signing secrets at rest ([`secrets`]).
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// `[console]`: the web console the API serves at `/console`.
    #[serde(default)]
    pub console: ConsoleConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host:port/db`. Connections carry the program's name as their
    /// `application_name` (`pg_stat_activity` shows which service holds one) unless the URL
    /// sets `?application_name=…`.
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before failing.
    #[serde(rename = "acquire_timeout_ms", with = "units::ms")]
    pub acquire_timeout: Duration,
    /// Apply embedded migrations when a service starts.
    pub migrate_on_start: bool,
    /// A pooled connection idle at least this long is pinged before it is handed out (one
    /// round trip); one used more recently is handed out as it is. sqlx's default pings
    /// before every use, a second round trip per statement: on the API's accept, one
    /// statement per request, it cost 13–25 % of the CPU per request (BENCHMARKS.md, session
    /// 15). A connection that died in the meantime fails its statement instead, and every
    /// caller already treats a failed statement as retryable. 0 pings before every use.
    #[serde(
        rename = "ping_after_idle_ms",
        with = "units::ms",
        default = "DatabaseConfig::default_ping_after_idle"
    )]
    pub ping_after_idle: Duration,
}

impl DatabaseConfig {
    fn default_ping_after_idle() -> Duration {
        Duration::from_millis(1_000)
    }
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
    /// Partitions of each topic paygate creates: at least the most instances of any worker
    /// (each member of a group reads its own partitions). More buy one instance nothing and
    /// change what the broker spends (on tansu, more or less by rate: docs/ARCHITECTURE.md,
    /// change 26). Kafka cannot take partitions back, and adding some later moves keys
    /// between partitions, so size it for the scale-out planned (`scripts/up`: one per
    /// instance; `deploy/k8s`: 12).
    pub partitions: i32,
    pub replication_factor: i32,
    /// Consumer group ids are `<group_prefix>.<service>`.
    pub group_prefix: String,
    /// How long the producer keeps retrying one message before reporting failure.
    pub message_timeout_ms: u64,
    /// Longest a consumer's fetch waits at the broker for data (`fetch.wait.max.ms`). Kafka
    /// answers a fetch as soon as data arrives; tansu (the local broker) holds it this long,
    /// so on tansu each of a payment's three hops waits up to this. 25 ms (librdkafka's
    /// default is 500): hops cost milliseconds, for 10 % of a core of idle polling at tansu
    /// (measured: 16 % at 10 ms, 2 % at 500 ms). The 10 ms once made a consumer restarted
    /// after a crash miss messages on tansu 0.6.0 (2 runs in 7, 2026-11-22); on the tansu
    /// now installed, with the idle-rejoin watchdog and Postgres re-driving pending work,
    /// every kill-and-restart phase of `paygate chaos` at 10 ms lost nothing (BENCHMARKS.md).
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
    /// 0 turns the watchdog off. Key: `idle_rejoin_secs`.
    #[serde(
        rename = "idle_rejoin_secs",
        with = "units::secs",
        default = "default_idle_rejoin"
    )]
    pub idle_rejoin: Duration,
    /// How long a consumer keeps reading a partition again after a fetch skipped offsets
    /// (a message's offset past the one after the last it was given). paygate's topics have
    /// no compaction and no transactions, so their offsets have no holes: a skip means the
    /// broker answered before an earlier batch was written (tansu's memory storage reserves a
    /// batch's offsets before it stores it; docs/ARCHITECTURE.md, change 22). Past this the
    /// hole is taken as real, logged and counted. 0 takes every hole at once.
    /// Key: `offset_gap_patience_ms`.
    #[serde(
        rename = "offset_gap_patience_ms",
        with = "units::ms",
        default = "default_offset_gap_patience"
    )]
    pub offset_gap_patience: Duration,
    /// `[kafka.security]`: TLS and SASL for every client (librdkafka's own properties).
    #[serde(default)]
    pub security: KafkaSecurity,
}

/// Consumers heartbeat this often (`heartbeat.interval.ms`); the session timeout must
/// allow a few missed ones.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;

fn default_session_timeout_ms() -> u64 {
    10_000
}

fn default_idle_rejoin() -> Duration {
    Duration::from_secs(15)
}

fn default_offset_gap_patience() -> Duration {
    Duration::from_secs(1)
}

fn default_linger_ms() -> u64 {
    5
}

fn default_fetch_wait_ms() -> u64 {
    25
}

/// Metrics exposure for processes without their own HTTP server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `host:port` where the payment processor, callback processor and dispatcher serve
    /// Prometheus `/metrics` when run as their own processes; absent = not served.
    #[serde(default)]
    pub metrics_bind: Option<String>,
    /// When set, every `/metrics` (the API's and the workers' exporter) answers only a
    /// request with `Authorization: Bearer <token>`; others get 401. At least 32
    /// characters. An API listening beyond loopback must set this or `metrics_bind`
    /// (which moves the API's `/metrics` off its public listener): metrics name merchants'
    /// destinations, gateways and volumes.
    #[serde(default)]
    pub metrics_token: Option<Secret>,
}

/// Shortest `telemetry.metrics_token` accepted.
pub const METRICS_TOKEN_MIN_LEN: usize = 32;

impl TelemetryConfig {
    /// Why these settings would expose metrics or cannot be used, as (key, why).
    fn metrics_problem(&self, api_bind: &str) -> Option<(&'static str, &'static str)> {
        match &self.metrics_token {
            Some(token) if token.expose().chars().count() < METRICS_TOKEN_MIN_LEN => {
                Some(("telemetry.metrics_token", "must be at least 32 characters"))
            }
            Some(_) => None,
            None if self.metrics_bind.is_none() && !bind_is_loopback(api_bind) => Some((
                "telemetry.metrics_token",
                "must be set (or telemetry.metrics_bind) when api.bind is not a loopback \
                 address: the API's /metrics would be open to anyone who can reach it",
            )),
            None => None,
        }
    }
}

/// Whether a `host:port` listens on this machine only (`localhost` or a loopback address).
fn bind_is_loopback(bind: &str) -> bool {
    let host = bind.rsplit_once(':').map_or(bind, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The API process: merchant REST API, provider callback ingress.
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
    /// Idempotency keys are remembered at least this long (Stripe: 24 h). Key:
    /// `idempotency_retention_hours`.
    #[serde(rename = "idempotency_retention_hours", with = "units::hours")]
    pub idempotency_retention: Duration,
    /// TTL of the Redis cache-aside entry for `GET /v1/transactions/{id}`. Key:
    /// `cache_ttl_ms`.
    #[serde(rename = "cache_ttl_ms", with = "units::ms")]
    pub cache_ttl: Duration,
    /// Longest a request may take from its headers being read to its response, body read
    /// included (a slowloris body is cut off): 408 with the error shape past it. Key:
    /// `request_timeout_ms`.
    #[serde(rename = "request_timeout_ms", with = "units::ms")]
    pub request_timeout: Duration,
    /// Failed authentications allowed per second per client address (governor), sustained.
    /// An address past it is refused with 429 before any database work, valid keys
    /// included, until its `Retry-After`. Requests that authenticate cost nothing here.
    pub unauthenticated_per_second: u32,
    /// Failed authentications an address may make at once.
    pub unauthenticated_burst: u32,
    /// Longest a client may take to send a request's headers once it has connected (or
    /// between two requests on a kept-alive connection): past it the connection is closed.
    /// `request_timeout_ms` starts only once the headers are read, so without this a client
    /// trickling its headers held a connection forever. Key: `header_read_timeout_ms`.
    #[serde(
        rename = "header_read_timeout_ms",
        with = "units::ms",
        default = "default_header_read_timeout"
    )]
    pub header_read_timeout: Duration,
    /// Open connections served at once; further ones wait in the listen backlog (the
    /// kernel's), so a flood of idle connections cannot take every socket and task.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long an authenticated API key is remembered in the API process, so a create
    /// costs one statement instead of two. Only creates use it, and their insert re-checks
    /// in the same statement that the key is live and the named gateway still enabled, so
    /// revocation stays immediate; every other route looks the key up each time. 0 turns it
    /// off. Key: `key_cache_secs`.
    #[serde(
        rename = "key_cache_secs",
        with = "units::secs",
        default = "default_key_cache"
    )]
    pub key_cache: Duration,
    /// Admission control: once the workers' messages have waited longer than this before a
    /// handler took them (`paygate_core::pipeline_wait`) for a second, new deposits and
    /// withdrawals are refused with 503 and a `Retry-After`, nothing written. Some thirty times a loaded pipeline's
    /// p99 accept→webhook at 300 payments/s (BENCHMARKS.md), so only one falling behind its
    /// load sheds; overloaded, it keeps a payment's queueing near this bound (session 19: p99
    /// 6.4 s with 5 s, 17 s unbounded, in 30 s). A worker restarted after a crash also reads
    /// messages that waited out its restart, and creates are refused for the seconds it takes
    /// to catch up. 0 turns it off. Key: `shed_after_wait_ms`.
    #[serde(
        rename = "shed_after_wait_ms",
        with = "units::ms",
        default = "default_shed_after_wait"
    )]
    pub shed_after_wait: Duration,
}

/// A quarter of the default `dispatcher.concurrency`: three merchants at their share
/// still leave a quarter of the workers to everyone else.
fn default_per_merchant_concurrency() -> usize {
    32
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_connections() -> usize {
    4_096
}

fn default_shed_after_wait() -> Duration {
    Duration::from_secs(5)
}

fn default_key_cache() -> Duration {
    Duration::from_secs(60)
}

/// `[outbox]`: the outbox relay, which every service runs (a service's committed events
/// reach Kafka even when the others are down).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Outbox rows published per relay round.
    pub batch_size: i64,
    /// Poll interval for rows written by other processes (a relay is woken at once by
    /// commits in its own process); at least 10 ms is used. Key: `poll_ms`.
    #[serde(rename = "poll_ms", with = "units::ms")]
    pub poll: Duration,
}

impl OutboxConfig {
    /// The relay's settings: polls at least 10 ms apart, a second's pause after a failure.
    pub fn relay_settings(&self) -> crate::bus::RelaySettings {
        crate::bus::RelaySettings {
            batch_size: self.batch_size,
            poll_interval: self.poll.max(Duration::from_millis(10)),
            failure_backoff: Duration::from_secs(1),
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            poll: Duration::from_millis(200),
        }
    }
}

/// `[destinations]`: what the SSRF guard (`paygate_core::destination`) allows beyond
/// public `https` URLs, for webhook endpoints and callback URLs. The API applies it when a
/// URL is registered and the dispatcher before every delivery, so both read it here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationsConfig {
    /// Admit loopback addresses, on any port (tests and `paygate dev` only).
    pub allow_loopback: bool,
    /// Admit plain http (tests and `paygate dev` only).
    pub allow_http: bool,
    /// The ports a (non-loopback) destination may use: 1 to 16 of them. Default 443, 80
    /// (reachable only with `allow_http`) and 8443; a merchant's webhook on another port is
    /// refused, so the guard cannot be pointed at e.g. a database or SSH port of a host.
    /// A list (`[443, 8443]`) or `PAYGATE_DESTINATIONS_ALLOWED_PORTS=443,8443`.
    #[serde(with = "units::ports_list")]
    pub allowed_ports: Vec<u16>,
}

impl Default for DestinationsConfig {
    fn default() -> Self {
        Self {
            allow_loopback: false,
            allow_http: false,
            allowed_ports: crate::destination::AllowedPorts::DEFAULT
                .as_slice()
                .to_vec(),
        }
    }
}

/// The payment processor: pending transactions to provider calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Transactions handled at once (bounded worker pool).
    pub concurrency: usize,
    /// Lease on a transaction while one attempt runs; longer than the slowest provider call.
    #[serde(rename = "lock_ttl_ms", with = "units::ms")]
    pub lock_ttl: Duration,
    #[serde(rename = "lock_wait_ms", with = "units::ms")]
    pub lock_wait: Duration,
    /// Exponential backoff with full jitter: `random(0, min(cap, base * 2^attempt))`.
    #[serde(rename = "retry_base_ms", with = "units::ms")]
    pub retry_base: Duration,
    #[serde(rename = "retry_cap_ms", with = "units::ms")]
    pub retry_cap: Duration,
    /// Provider calls per transaction before it fails with `max_attempts_exceeded`.
    pub max_attempts: i32,
    /// When every route's breaker is open, try again after this long (no attempt used).
    #[serde(rename = "breaker_deferral_ms", with = "units::ms")]
    pub breaker_deferral: Duration,
    /// How often the retry scheduler looks for due transactions, and how many it takes.
    #[serde(rename = "scheduler_poll_ms", with = "units::ms")]
    pub scheduler_poll: Duration,
    pub scheduler_batch: i64,
    /// The most reads, or version-checked updates, of transactions sent as one statement:
    /// those that concurrent attempts send while a statement is running go together in the
    /// next (grouped by merchant), one round trip and commit for all. 1 sends each alone.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// A transaction in `submitting`/`submitted` untouched this long is reconciled.
    #[serde(rename = "stuck_after_secs", with = "units::secs")]
    pub stuck_after: Duration,
    /// A provider's `Retry-After` is honoured up to this; a larger one (or a garbage one) is
    /// capped, so no provider header can park a payment for years or overflow a timestamp.
    #[serde(
        rename = "max_retry_after_secs",
        with = "units::secs",
        default = "defaults::max_retry_after"
    )]
    pub max_retry_after: Duration,
    /// After an ambiguous attempt, status answers that settle nothing (errors, "in
    /// progress") for this long make the transaction `unresolved` and tell the merchant.
    #[serde(
        rename = "unresolved_after_secs",
        with = "units::secs",
        default = "defaults::unresolved_after"
    )]
    pub unresolved_after: Duration,
    /// Reconciliation keeps asking about an `unresolved` transaction for this long after its
    /// ambiguous attempt (72 h), then leaves it for a person.
    #[serde(
        rename = "reconcile_horizon_secs",
        with = "units::secs",
        default = "defaults::reconcile_horizon"
    )]
    pub reconcile_horizon: Duration,
    /// Bounds of the wait between two status queries about one payment: it grows with the
    /// time since the ambiguous attempt (half of it), within these.
    #[serde(
        rename = "status_check_min_ms",
        with = "units::ms",
        default = "defaults::status_check_min"
    )]
    pub status_check_min: Duration,
    #[serde(
        rename = "status_check_max_ms",
        with = "units::ms",
        default = "defaults::status_check_max"
    )]
    pub status_check_max: Duration,
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
    #[serde(rename = "lock_ttl_ms", with = "units::ms")]
    pub lock_ttl: Duration,
    #[serde(rename = "lock_wait_ms", with = "units::ms")]
    pub lock_wait: Duration,
    /// The most settlements written per round of the group commit (one database transaction
    /// per merchant among them): settlements that arrive while a round is being written go
    /// in the next one, so one merchant's ledger account row is locked and flushed once per
    /// round. 1 writes each alone.
    #[serde(default = "default_settle_batch_max")]
    pub settle_batch_max: usize,
}

fn default_settle_batch_max() -> usize {
    64
}

fn default_batch_max() -> usize {
    64
}

/// The callback dispatcher: signed merchant webhooks. Which URLs it may deliver to is
/// `[destinations]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Deliveries in flight at once, over all endpoints.
    pub concurrency: usize,
    /// Deliveries in flight at once to one endpoint (bulkhead).
    pub per_endpoint_concurrency: usize,
    /// Deliveries in flight at once for one merchant, over all its endpoints: its fair
    /// share, so a merchant with several slow endpoints cannot hold every worker (four
    /// endpoints × `per_endpoint_concurrency` used to fill `concurrency`). Key:
    /// `per_merchant_concurrency`.
    #[serde(default = "default_per_merchant_concurrency")]
    pub per_merchant_concurrency: usize,
    #[serde(rename = "request_timeout_ms", with = "units::ms")]
    pub request_timeout: Duration,
    /// Delay before each attempt: the first is attempt 1. Key: `retry_schedule_secs`, a
    /// list of seconds (`0,5,300` in a variable).
    #[serde(rename = "retry_schedule_secs", with = "units::secs_list")]
    pub retry_schedule: Vec<Duration>,
    /// ± this percentage of jitter on each delay.
    pub jitter_percent: u32,
    /// A `Retry-After` longer than this is capped to it.
    #[serde(rename = "retry_after_max_secs", with = "units::secs")]
    pub retry_after_max: Duration,
    /// An endpoint failing without a success for this long is disabled.
    #[serde(rename = "disable_after_failing_secs", with = "units::secs")]
    pub disable_after_failing: Duration,
    /// How often the scheduler looks for due deliveries when nothing woke it. New events
    /// are recorded by other processes (with the state change that makes them), so this is
    /// how soon a webhook leaves: 20 ms, an idle query of a few µs on a partial index,
    /// cheaper than the Kafka hop it replaced (docs/ARCHITECTURE.md, change 27).
    #[serde(rename = "scheduler_poll_ms", with = "units::ms")]
    pub scheduler_poll: Duration,
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
                acquire_timeout: Duration::from_millis(5_000),
                migrate_on_start: true,
                ping_after_idle: DatabaseConfig::default_ping_after_idle(),
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
                idle_rejoin: default_idle_rejoin(),
                offset_gap_patience: default_offset_gap_patience(),
                security: KafkaSecurity::default(),
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
                idempotency_retention: Duration::from_secs(24 * 3_600),
                cache_ttl: Duration::from_millis(2_000),
                request_timeout: Duration::from_millis(30_000),
                unauthenticated_per_second: 20,
                unauthenticated_burst: 100,
                header_read_timeout: default_header_read_timeout(),
                max_connections: default_max_connections(),
                key_cache: default_key_cache(),
                shed_after_wait: default_shed_after_wait(),
            },
            outbox: OutboxConfig::default(),
            destinations: DestinationsConfig::default(),
            processor: ProcessorConfig {
                concurrency: 64,
                lock_ttl: Duration::from_millis(30_000),
                lock_wait: Duration::from_millis(2_000),
                retry_base: Duration::from_millis(1_000),
                retry_cap: Duration::from_millis(300_000),
                max_attempts: 8,
                breaker_deferral: Duration::from_millis(5_000),
                scheduler_poll: Duration::from_millis(500),
                scheduler_batch: 256,
                batch_max: default_batch_max(),
                stuck_after: Duration::from_secs(300),
                max_retry_after: defaults::max_retry_after(),
                unresolved_after: defaults::unresolved_after(),
                reconcile_horizon: defaults::reconcile_horizon(),
                status_check_min: defaults::status_check_min(),
                status_check_max: defaults::status_check_max(),
                routes: Vec::new(),
            },
            callbacks: CallbacksConfig {
                concurrency: 64,
                lock_ttl: Duration::from_millis(10_000),
                lock_wait: Duration::from_millis(5_000),
                settle_batch_max: default_settle_batch_max(),
            },
            dispatcher: DispatcherConfig {
                // A busy merchant gets hundreds of webhooks a second on one endpoint; 4 at a
                // time capped it near 150/s (BENCHMARKS.md). A dead endpoint still holds at
                // most a quarter of the workers.
                concurrency: 128,
                per_endpoint_concurrency: 32,
                per_merchant_concurrency: default_per_merchant_concurrency(),
                request_timeout: Duration::from_millis(10_000),
                retry_schedule: [0, 5, 300, 1_800, 7_200, 18_000, 36_000, 36_000]
                    .map(Duration::from_secs)
                    .to_vec(),
                jitter_percent: 20,
                retry_after_max: Duration::from_secs(3_600),
                disable_after_failing: Duration::from_secs(5 * 24 * 3_600),
                scheduler_poll: Duration::from_millis(20),
            },
            gateways: BTreeMap::new(),
            recovery: RecoveryConfig::default(),
            secrets: SecretsConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

/// `[recovery]`: Postgres heals what the broker lost (see `paygate_core::heal`), and how
/// workers' `/readyz` probes behave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    /// A `pending` transaction not claimed this long is announced again (payment processor).
    #[serde(rename = "pending_unclaimed_secs", with = "units::secs")]
    pub pending_unclaimed: Duration,
    /// A terminal transaction with no webhook event this long after it became terminal has
    /// its `completed` event announced again (callback dispatcher).
    #[serde(rename = "webhook_missing_secs", with = "units::secs")]
    pub webhook_missing: Duration,
    /// How often each healer scans.
    #[serde(rename = "heal_poll_ms", with = "units::ms")]
    pub heal_poll: Duration,
    /// Rows re-announced per scan, at most (a scan that fills it runs again at once).
    pub heal_batch: i64,
    /// How far back the webhook healer looks when a process starts.
    #[serde(rename = "heal_lookback_secs", with = "units::secs")]
    pub heal_lookback: Duration,
    /// How long a worker's `/readyz` answer is reused (probes are cheap under tight polling).
    #[serde(rename = "ready_cache_ms", with = "units::ms")]
    pub ready_cache: Duration,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            pending_unclaimed: Duration::from_secs(30),
            webhook_missing: Duration::from_secs(60),
            heal_poll: Duration::from_millis(5_000),
            heal_batch: 256,
            heal_lookback: Duration::from_secs(24 * 3_600),
            ready_cache: Duration::from_millis(1_500),
        }
    }
}

/// `[console]`: the web console served by the API process at `/console` (issue 19). Its
/// sessions are signed with a key derived from `[secrets]`'s current key, so every API
/// instance accepts every other's sessions with nothing more to configure.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console at all.
    pub enabled: bool,
    /// How long a sign-in lasts without activity; a session past half of it is renewed by
    /// the next page. Key: `session_mins`.
    #[serde(rename = "session_mins", with = "units::mins")]
    pub session: Duration,
    /// Send cookies only over HTTPS (`Secure`). Off only for `paygate dev` on plain HTTP.
    pub secure_cookies: bool,
    /// Sign-in attempts per account (by email) allowed per minute, sustained; the burst is
    /// the same number. Counted before the password is checked.
    pub attempts_per_account_per_minute: u32,
    /// Sign-in attempts per client address allowed per minute (and as a burst).
    pub attempts_per_address_per_minute: u32,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session: Duration::from_secs(15 * 60),
            secure_cookies: true,
            attempts_per_account_per_minute: 5,
            attempts_per_address_per_minute: 30,
        }
    }
}

/// One thing wrong with a configuration: where (the variable, or the file key, to fix) and
/// why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl Problem {
    pub fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            at: at.into(),
            message: message.into(),
        }
    }
}

/// A configuration that cannot be used: every problem found, each naming its variable or
/// key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(Vec<Problem>);

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn problems(&self) -> &[Problem] {
        &self.0
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid configuration: ")?;
        for (i, p) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{}: {}", p.at, p.message)?;
        }
        Ok(())
    }
}

impl Config {
    /// Defaults, then the file named by `PAYGATE_CONFIG` (if set), then the process
    /// environment through figment's `Env` provider ([`env`]).
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var_os(CONFIG_FILE_VAR).map(PathBuf::from);
        Self::load_with(file, env::process())
    }

    /// As [`Config::load`], with the file and the environment given explicitly (tests, and
    /// checks of another process's environment). The variables are read exactly as `load`
    /// reads the process environment ([`env`] says how, and why this is not figment's `Env`).
    pub fn load_from(
        file: Option<PathBuf>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_with(file, env::Pairs(env.into_iter().collect()))
    }

    fn load_with(file: Option<PathBuf>, env: impl Provider) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            if !path.is_file() {
                return Err(ConfigError(vec![Problem::new(
                    CONFIG_FILE_VAR,
                    format!("no such file {}", path.display()),
                )]));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let figment = figment.merge(env);
        let places = Places {
            figment: &figment,
            file: file.as_deref(),
        };
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError(figment_problems(e, |key, m| places.name(key, m))))?;
        gateway::fill_extra(&figment, &mut config.gateways);
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError(
                problems
                    .into_iter()
                    .map(|p| Problem::new(places.name(&p.at, None), p.message))
                    .collect(),
            ))
        }
    }

    /// Every rule serde cannot express that this configuration breaks, each at its key.
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, why: &str| problems.push(Problem::new(key, why));
        let at_least_one = "must be at least 1";
        if !(self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            bad("database.url", "must be a postgres:// URL");
        }
        if self.database.max_connections == 0 {
            bad("database.max_connections", at_least_one);
        }
        if !(self.redis.url.starts_with("redis://") || self.redis.url.starts_with("rediss://")) {
            bad("redis.url", "must be a redis:// URL");
        }
        if self.kafka.partitions < 1 {
            bad("kafka.partitions", at_least_one);
        }
        if self.kafka.replication_factor < 1 {
            bad("kafka.replication_factor", at_least_one);
        }
        if self.kafka.session_timeout_ms < 3 * HEARTBEAT_INTERVAL_MS {
            bad(
                "kafka.session_timeout_ms",
                "must be at least 3000 (three heartbeats of 1 s)",
            );
        }
        if self
            .kafka
            .instance_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty())
        {
            bad("kafka.instance_id", "must not be empty when set");
        }
        for (key, why) in self.kafka.security.problems() {
            bad(&format!("kafka.security.{key}"), why);
        }
        let prefix_ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let prefix_rule = "must be non-empty letters, digits, '.', '-' or '_'";
        if !prefix_ok(&self.kafka.topic_prefix) {
            bad("kafka.topic_prefix", prefix_rule);
        }
        if !prefix_ok(&self.kafka.group_prefix) {
            bad("kafka.group_prefix", prefix_rule);
        }
        if self.api.idempotency_retention < Duration::from_secs(24 * 3_600) {
            bad(
                "api.idempotency_retention_hours",
                "must be at least 24 (merchants rely on a day of replay)",
            );
        }
        if self.console.session < Duration::from_secs(60) {
            bad("console.session_mins", at_least_one);
        }
        if self.console.attempts_per_account_per_minute == 0 {
            bad("console.attempts_per_account_per_minute", at_least_one);
        }
        if self.console.attempts_per_address_per_minute == 0 {
            bad("console.attempts_per_address_per_minute", at_least_one);
        }
        if self.api.rate_limit_per_second == 0 {
            bad("api.rate_limit_per_second", at_least_one);
        }
        if self.api.rate_limit_burst == 0 {
            bad("api.rate_limit_burst", at_least_one);
        }
        if self.api.unauthenticated_per_second == 0 {
            bad("api.unauthenticated_per_second", at_least_one);
        }
        if self.api.unauthenticated_burst == 0 {
            bad("api.unauthenticated_burst", at_least_one);
        }
        if self.api.request_timeout < Duration::from_millis(100) {
            bad("api.request_timeout_ms", "must be at least 100");
        }
        if self.api.header_read_timeout < Duration::from_millis(100) {
            bad("api.header_read_timeout_ms", "must be at least 100");
        }
        if self.api.max_connections == 0 {
            bad("api.max_connections", at_least_one);
        }
        if let Some(why) = self.telemetry.metrics_problem(&self.api.bind) {
            bad(why.0, why.1);
        }
        if self.outbox.batch_size < 1 {
            bad("outbox.batch_size", at_least_one);
        }
        for (key, n) in [
            ("processor.concurrency", self.processor.concurrency),
            ("callbacks.concurrency", self.callbacks.concurrency),
            ("dispatcher.concurrency", self.dispatcher.concurrency),
            (
                "dispatcher.per_endpoint_concurrency",
                self.dispatcher.per_endpoint_concurrency,
            ),
            (
                "dispatcher.per_merchant_concurrency",
                self.dispatcher.per_merchant_concurrency,
            ),
        ] {
            if n == 0 {
                bad(key, at_least_one);
            }
        }
        if self.processor.max_attempts < 1 {
            bad("processor.max_attempts", at_least_one);
        }
        if self.dispatcher.retry_schedule.is_empty() {
            bad(
                "dispatcher.retry_schedule_secs",
                "needs at least one delay (0 = at once)",
            );
        }
        for (i, rule) in self.processor.routes.iter().enumerate() {
            if rule.gateways.is_empty() {
                bad(
                    "processor.routes",
                    &format!("rule {i} needs at least one gateway"),
                );
            }
        }
        let ports = &self.destinations.allowed_ports;
        if ports.is_empty() || ports.len() > crate::destination::MAX_ALLOWED_PORTS {
            bad(
                "destinations.allowed_ports",
                &format!(
                    "must list 1 to {} ports",
                    crate::destination::MAX_ALLOWED_PORTS
                ),
            );
        } else if ports.contains(&0) {
            bad("destinations.allowed_ports", "0 is not a port");
        }
        for (name, gateway) in &self.gateways {
            gateway.check(name, &mut problems);
        }
        self.secrets.problems(&mut problems);
        problems
    }
}

/// Names the place to fix a key: the variable when the environment set it, the file key
/// when the file did, and otherwise the variable that would set it.
struct Places<'a> {
    figment: &'a Figment,
    file: Option<&'a Path>,
}

impl Places<'_> {
    /// `metadata`: the source figment gave the error, if any.
    fn name(&self, key: &str, metadata: Option<&Metadata>) -> String {
        let source = self.source_of(key).or(metadata);
        match source {
            Some(m) if env::is_env(m) => env::var_for(key),
            Some(Metadata {
                source: Some(figment::Source::File(_)),
                ..
            }) => match self.file {
                Some(file) => format!("{} key {key}", file.display()),
                None => key.to_owned(),
            },
            _ if key.is_empty() => "configuration".to_owned(),
            _ => env::var_for(key),
        }
    }

    /// The source of the value at `key`, or of the nearest table above it that has one.
    fn source_of(&self, key: &str) -> Option<&Metadata> {
        let mut key = key;
        loop {
            if let Some(m) = self.figment.find_metadata(key) {
                return Some(m);
            }
            key = key.rsplit_once('.')?.0;
        }
    }
}

/// A figment extraction error as problems, each at its key: the error's path, and the field
/// for a missing or unknown one.
fn figment_problems(
    error: figment::Error,
    place: impl Fn(&str, Option<&Metadata>) -> String,
) -> Vec<Problem> {
    error
        .into_iter()
        .map(|e| {
            let mut path = e.path.clone();
            match &e.kind {
                figment::error::Kind::MissingField(field) => path.push(field.to_string()),
                figment::error::Kind::UnknownField(field, _) if path.last() != Some(field) => {
                    path.push(field.clone())
                }
                _ => {}
            }
            let key = path.join(".");
            Problem::new(place(&key, e.metadata.as_ref()), e.kind.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests;

/// Defaults of settings added after the first release, so a config file written before
/// them still loads.
mod defaults {
    use std::time::Duration;

    pub fn max_retry_after() -> Duration {
        Duration::from_secs(3_600)
    }
    pub fn unresolved_after() -> Duration {
        Duration::from_secs(15 * 60)
    }
    pub fn reconcile_horizon() -> Duration {
        Duration::from_secs(72 * 3_600)
    }
    pub fn status_check_min() -> Duration {
        Duration::from_millis(1_000)
    }
    pub fn status_check_max() -> Duration {
        Duration::from_millis(10 * 60 * 1_000)
    }
}
