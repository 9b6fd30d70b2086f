//! Worker readiness (`/readyz` beside `/metrics` at `telemetry.metrics_bind`): ready when
//! Postgres, Redis and the broker answer and, when the worker's consumer group has lag, this
//! member holds partitions. Otherwise 503 naming what is wrong. A worker answering its
//! metrics endpoint is not evidence it works: after a crash-restart a member sat with no
//! partitions for minutes while thousands of messages waited (issue 13).
//!
//! A probe costs a few round trips, so its answer is reused for `recovery.ready_cache_ms`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::bus::{ConsumerProbe, Producer};

/// How long each dependency gets to answer one probe.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// One probe's outcome: ready, or the list of what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub problems: Vec<String>,
}

impl Report {
    pub fn ready(&self) -> bool {
        self.problems.is_empty()
    }

    /// `{"status":"ok"}` or `{"status":"unavailable","problems":[...]}`.
    pub fn to_json(&self) -> String {
        if self.ready() {
            return r#"{"status":"ok"}"#.to_owned();
        }
        serde_json::json!({"status": "unavailable", "problems": self.problems}).to_string()
    }
}

/// What a worker checks. Build it after the worker's clients, then [`register`] it.
pub struct Readiness {
    pool: PgPool,
    /// `None`: not needed. An error when the URL does not parse (config validation makes
    /// that rare).
    redis: Option<Result<redis::Client, redis::RedisError>>,
    /// `None`: not needed (the dispatcher uses no broker).
    producer: Option<Producer>,
    consumer: Option<ConsumerProbe>,
    ttl: Duration,
    cached: tokio::sync::Mutex<Option<(Instant, Report)>>,
}

impl Readiness {
    pub fn new(
        pool: PgPool,
        redis_url: &str,
        producer: Producer,
        consumer: Option<ConsumerProbe>,
        ttl: Duration,
    ) -> Self {
        Self {
            pool,
            redis: Some(redis::Client::open(redis_url)),
            producer: Some(producer),
            consumer,
            ttl,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A worker's readiness from its config (`redis.url`, `recovery.ready_cache_ms`).
    pub fn for_worker(
        config: &crate::config::Config,
        pool: PgPool,
        producer: Producer,
        consumer: ConsumerProbe,
    ) -> Arc<Self> {
        Arc::new(Self::new(
            pool,
            &config.redis.url,
            producer,
            Some(consumer),
            config.recovery.ready_cache,
        ))
    }

    /// The readiness of a service that needs Postgres alone (the dispatcher: its work is
    /// in Postgres, so it delivers webhooks whether the broker and Redis are up or not).
    pub fn postgres_only(config: &crate::config::Config, pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            redis: None,
            producer: None,
            consumer: None,
            ttl: config.recovery.ready_cache,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The latest report, probing again when the cached one is older than the TTL.
    /// Concurrent callers wait for one probe instead of each running their own.
    pub async fn report(&self) -> Report {
        let mut cached = self.cached.lock().await;
        if let Some((at, report)) = cached.as_ref() {
            if at.elapsed() < self.ttl {
                return report.clone();
            }
        }
        let report = self.probe().await;
        *cached = Some((Instant::now(), report.clone()));
        report
    }

    async fn probe(&self) -> Report {
        let database = async {
            match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool))
                .await
            {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("database: {e}")),
                Err(_) => Some("database: no answer within 1 s".to_owned()),
            }
        };
        let redis = async {
            let client = match &self.redis {
                None => return None,
                Some(Ok(client)) => client,
                Some(Err(_)) => return Some("redis: invalid redis.url".to_owned()),
            };
            let ping = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await
            };
            match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("redis: {e}")),
                Err(_) => Some("redis: no answer within 1 s".to_owned()),
            }
        };
        let broker = async {
            let producer = self.producer.as_ref()?;
            if !producer.is_reachable(CHECK_TIMEOUT).await {
                return Some("broker: no metadata answer within 1 s".to_owned());
            }
            producer
                .fatal_error()
                .map(|fatal| format!("broker: producer failed fatally ({fatal})"))
        };
        let (database, redis, broker) = tokio::join!(database, redis, broker);
        let mut problems: Vec<String> = [database, redis, broker].into_iter().flatten().collect();
        if problems.is_empty() {
            if let Some(consumer) = &self.consumer {
                if let Some(problem) = idle_with_lag(consumer).await {
                    problems.push(problem);
                }
            }
        }
        Report { problems }
    }
}

/// A member holding no partitions while its group has messages waiting.
async fn idle_with_lag(consumer: &ConsumerProbe) -> Option<String> {
    if consumer.assigned() > 0 {
        return None;
    }
    match consumer.group_lag(CHECK_TIMEOUT).await {
        Ok(0) => None,
        Ok(lag) => Some(format!(
            "consumer: holds no partitions while its group has {lag} messages waiting"
        )),
        Err(e) => Some(format!("consumer: cannot read the group's lag: {e}")),
    }
}

static CURRENT: RwLock<Option<Arc<Readiness>>> = RwLock::new(None);

/// Makes `readiness` the one `/readyz` reports (a process runs one worker).
pub fn register(readiness: Arc<Readiness>) {
    *CURRENT
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(readiness);
}

/// The registered worker's report; "starting" until one is registered.
pub async fn current() -> Report {
    let readiness = CURRENT
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    match readiness {
        Some(readiness) => readiness.report().await,
        None => Report {
            problems: vec!["starting".to_owned()],
        },
    }
}
