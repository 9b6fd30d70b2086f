//! paygate-api: the merchant REST API (`/v1`), the provider callback ingress
//! (`/callbacks/{gateway}`), the outbox relay to Kafka, and `/healthz`, `/readyz`,
//! `/metrics`, `/openapi.json`.
//!
//! [`Application::build`] connects to Postgres, Redis and Kafka, applies migrations when
//! configured, ensures the topics and binds the listener; [`Application::run`] serves until
//! the shutdown token is cancelled, then drains requests and stops the relay.
//!
//! Kafka being unreachable does not stop the API: payments are committed with their outbox
//! rows and wait; `/readyz` reports `degraded` and callbacks get 503 until it is back.

pub mod admission;
pub mod auth;
pub mod body;
pub mod cache;
pub mod error;
pub mod idempotency;
pub mod key_memo;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
pub mod relay;
pub mod resources;
pub mod routes;
pub mod serve;
pub mod url_policy;
pub mod validation;

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use paygate_core::bus::relay::{OutboxRelay, RelayHealth};
use paygate_core::bus::{ensure_topics, Producer};
use paygate_core::config::{ApiConfig, Config, KafkaConfig};
use paygate_core::db;
use paygate_core::destination::DestinationPolicy;
use paygate_core::startup::{Foundation, Topics};
use paygate_gateways::GatewayRegistry;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, HttpError};

/// How long start-up waits for topic creation before going on degraded (and retrying).
const TOPICS_TIMEOUT: Duration = Duration::from_secs(10);
/// Provider callbacks wait at most this long for the broker's ack before a 503.
const CALLBACK_PRODUCE_TIMEOUT_MS: u64 = 10_000;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub pool: PgPool,
    pub cache: cache::TransactionCache,
    pub rate_limiter: Arc<rate_limit::RateLimiter>,
    /// Failed authentications per client address, checked before any database work.
    pub address_limiter: Arc<rate_limit::AddressLimiter>,
    /// Provider callbacks per gateway and client address, checked before any verification.
    pub callback_limiter: Arc<rate_limit::CallbackLimiter>,
    pub registry: GatewayRegistry,
    /// Produces authenticated callbacks; also probes the broker for `/readyz`.
    pub producer: Producer,
    pub relay_health: Arc<RelayHealth>,
    pub topics_ready: Arc<AtomicBool>,
    pub backlog: Arc<relay::Backlog>,
    pub config: ApiConfig,
    pub metrics: Option<PrometheusHandle>,
    /// Who may read `/metrics` on the public listener (`[telemetry]`).
    pub metrics_gate: routes::health::MetricsGate,
    /// The SSRF guard's policy for webhook and callback URLs: `[destinations]`, which the
    /// dispatcher applies too, so the API never accepts a URL the dispatcher would refuse.
    pub destinations: DestinationPolicy,
    /// Seals and opens webhook signing secrets (`[secrets]`).
    pub keyring: Arc<paygate_core::keyring::Keyring>,
    /// Well-formed API keys Postgres did not know, remembered briefly (by hash).
    pub unknown_keys: auth::UnknownKeys,
    /// Live keys remembered for creates (`api.key_cache_secs`).
    pub known_keys: auth::KnownKeys,
    /// `/readyz`'s last answer, reused for a second.
    pub readiness: routes::health::ReadinessCache,
    /// Refuses new payments while the pipeline is far behind (`api.shed_after_wait_ms`).
    pub admission: Arc<admission::Admission>,
    /// The OpenAPI document served at `/openapi.json`, made exact for this registry's
    /// gateways once at start-up (`openapi::served_document`).
    pub openapi: Arc<String>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The API process, bound and ready to run.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
    relay: OutboxRelay,
    relay_producer: Producer,
    kafka: KafkaConfig,
    /// Where `/metrics` is served apart from the API, with `telemetry.metrics_bind`.
    metrics_addr: Option<std::net::SocketAddr>,
    /// The web console (`console.enabled`), nested at `/console`.
    console: Option<paygate_console::ConsoleState>,
    /// What the admission sampler reads the workers' waits with: Redis and its key prefix.
    waits: (ConnectionManager, String),
}

impl Application {
    /// Builds with the gateways configured in `config.gateways`.
    pub async fn build(config: Config) -> Result<Self, ApiError> {
        let registry = GatewayRegistry::from_config(&config.gateways)
            .map_err(|e| ApiError::Gateways(e.to_string()))?;
        Self::build_with(config, registry).await
    }

    /// Builds with an explicit gateway registry (tests, embedders).
    pub async fn build_with(config: Config, registry: GatewayRegistry) -> Result<Self, ApiError> {
        let keyring = Arc::new(config.secrets.keyring()?);
        let metrics = metrics::install();
        let metrics_addr = match (&config.telemetry.metrics_bind, &metrics) {
            (Some(bind), Some(handle)) => Some(
                paygate_core::telemetry::serve_exporter(
                    bind,
                    handle.clone(),
                    config.telemetry.metrics_token.clone(),
                )
                .map_err(ApiError::Metrics)?,
            ),
            _ => None,
        };
        let base = Foundation::start(&config, Topics::BestEffort(TOPICS_TIMEOUT)).await?;
        let pool = base.pool.clone();

        let client = redis::Client::open(config.redis.url.as_str())?;
        let redis_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2);
        let redis = ConnectionManager::new_with_config(client, redis_config).await?;
        let console = config.console.enabled.then(|| {
            paygate_console::ConsoleState::new(paygate_console::ConsoleParts {
                pool: pool.clone(),
                redis: redis.clone(),
                redis_prefix: config.redis.key_prefix.clone(),
                keyring: keyring.clone(),
                config: config.console.clone(),
                kafka: config.kafka.clone(),
                gateways: registry.names().map(|g| g.as_str().to_owned()).collect(),
                shed_after_wait: config.api.shed_after_wait,
            })
        });
        let admission_redis = redis.clone();
        let cache = cache::TransactionCache::new(
            redis,
            config.redis.key_prefix.clone(),
            config.api.cache_ttl,
        );

        let topics_ready = Arc::new(AtomicBool::new(base.topics_ready));
        let relay_producer = base.producer.clone();
        let mut callback_kafka = config.kafka.clone();
        callback_kafka.message_timeout_ms = callback_kafka
            .message_timeout_ms
            .min(CALLBACK_PRODUCE_TIMEOUT_MS);
        let producer = Producer::new(&callback_kafka)?;
        let relay = base.relay();
        let relay_health = relay.health();

        let listener = TcpListener::bind(&config.api.bind)
            .await
            .map_err(|source| ApiError::Bind {
                addr: config.api.bind.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| ApiError::Bind {
                addr: config.api.bind.clone(),
                source,
            })?
            .port();

        let state = AppState(Arc::new(Shared {
            pool,
            cache,
            rate_limiter: Arc::new(rate_limit::RateLimiter::new(
                config.api.rate_limit_per_second,
                config.api.rate_limit_burst,
            )),
            address_limiter: Arc::new(rate_limit::AddressLimiter::new(
                config.api.unauthenticated_per_second,
                config.api.unauthenticated_burst,
            )),
            callback_limiter: Arc::new(rate_limit::CallbackLimiter::new(
                registry.names(),
                &config.gateways,
            )),
            openapi: Arc::new(openapi::served_document(&registry)),
            registry,
            producer,
            relay_health,
            topics_ready,
            backlog: Arc::new(relay::Backlog::default()),
            config: config.api.clone(),
            metrics,
            metrics_gate: routes::health::MetricsGate::from_config(&config.telemetry),
            destinations: DestinationPolicy::from_config(&config.destinations),
            keyring,
            unknown_keys: auth::UnknownKeys::default(),
            known_keys: auth::known_keys(config.api.key_cache),
            readiness: routes::health::ReadinessCache::default(),
            admission: Arc::new(admission::Admission::new(config.api.shed_after_wait)),
        }));
        Ok(Self {
            listener,
            port,
            state,
            relay,
            relay_producer,
            kafka: config.kafka,
            metrics_addr,
            console,
            waits: (admission_redis, config.redis.key_prefix),
        })
    }

    /// Where `/metrics` is served apart from the API (`telemetry.metrics_bind`).
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The bound port (useful with `bind = "127.0.0.1:0"`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests reach the pool through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, finishes in-flight
    /// requests, lets the relay finish its round and flushes the producers.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ApiError> {
        let Self {
            listener,
            port,
            state,
            relay,
            relay_producer,
            kafka,
            metrics_addr: _,
            console,
            waits: (waits_redis, waits_prefix),
        } = self;
        tracing::info!(port, "paygate API listening");
        let background = shutdown.child_token();

        state.rate_limiter.spawn_cleanup(background.clone());
        state.address_limiter.spawn_cleanup(background.clone());
        state.callback_limiter.spawn_cleanup(background.clone());
        let sampler = relay::spawn_lag_sampler(
            state.pool.clone(),
            state.backlog.clone(),
            background.clone(),
        );
        let purger = spawn_idempotency_purge(state.pool.clone(), &state.config, background.clone());
        let admission = admission::spawn_sampler(
            state.admission.clone(),
            waits_redis,
            waits_prefix,
            background.clone(),
        );
        if !state.topics_ready.load(Ordering::Relaxed) {
            spawn_topic_retry(kafka, state.topics_ready.clone(), background.clone());
        }
        let relay_task = tokio::spawn(relay.run(background.clone()));

        if let Some(console) = &console {
            spawn_sign_in_limit_cleanup(console.clone(), background.clone());
        }
        let console = console.map(paygate_console::router);
        let app = routes::router(state.clone(), console).layer(
            axum::middleware::from_fn_with_state(state.config.request_timeout, request_timeout),
        );
        let limits = serve::ConnectionLimits::from_config(&state.config);
        let served = serve::serve(listener, app, limits, shutdown.clone()).await;

        background.cancel();
        let _ = relay_task.await;
        let _ = sampler.await;
        let _ = purger.await;
        let _ = admission.await;
        for producer in [&relay_producer, &state.producer] {
            if let Err(error) = producer.flush(Duration::from_secs(5)) {
                tracing::warn!(%error, "producer flush at shutdown");
            }
        }
        tracing::info!("paygate API stopped");
        served.map_err(ApiError::Serve)
    }
}

/// The whole-request timeout (`api.request_timeout_ms`): the handler, body read included,
/// must finish within it, or the client gets 408 with the error shape. A request cut off
/// is dropped like a client disconnect: an open transaction rolls back.
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => HttpError::request_timeout(limit).into_response(),
    }
}

/// Forgets idempotency keys past their retention, hourly.
fn spawn_idempotency_purge(
    pool: PgPool,
    config: &ApiConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let retention = config.idempotency_retention;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match db::transactions::purge_idempotency_keys(&pool, retention).await {
                Ok(purged) if purged > 0 => {
                    tracing::info!(purged, "expired idempotency keys purged")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "idempotency key purge failed"),
            }
        }
    })
}

/// Forgets sign-in limiter keys whose allowance has refilled, every minute.
fn spawn_sign_in_limit_cleanup(
    console: paygate_console::ConsoleState,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => console.limits.retain_recent(),
            }
        }
    });
}

/// Keeps trying to create the topics after a degraded start.
fn spawn_topic_retry(kafka: KafkaConfig, ready: Arc<AtomicBool>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            if let Ok(Ok(())) = tokio::time::timeout(TOPICS_TIMEOUT, ensure_topics(&kafka)).await {
                ready.store(true, Ordering::Relaxed);
                tracing::info!("Kafka topics ensured");
                return;
            }
        }
    });
}
