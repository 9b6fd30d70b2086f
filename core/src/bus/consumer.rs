//! The consumer runner every service uses to read a topic.
//!
//! - A consumer group member with auto-commit off.
//! - Bounded concurrency: at most `concurrency` messages are taken from the broker and not
//!   yet finished (running or queued), so memory and downstream load stay bounded.
//! - Per-key ordering: messages with the same key (one transaction) are handled one after
//!   another in offset order; different keys run in parallel.
//! - An offset is committed only once every message at or below it is handled
//!   ([`OffsetTracker`]); a crash replays from the first unfinished message.
//! - [`HandlerError::Retry`] retries the message in place with capped exponential backoff
//!   until it succeeds or the runner shuts down (it is then redelivered after restart);
//!   [`HandlerError::Reject`] sends the original bytes and the reason to the DLQ and moves on.
//! - Shutdown: stop taking messages, let running handlers finish (up to a grace period),
//!   commit synchronously, leave the group.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::events::{Body, DeadLetter, Envelope};
use super::offsets::{OffsetTracker, Take, Ticket};
use super::producer::client_config;
use super::trace::{TraceParent, TRACEPARENT};
use super::{BusError, Producer, Topic, Topics};
use crate::config::{KafkaConfig, HEARTBEAT_INTERVAL_MS};
use crate::pipeline_wait::WaitGauge;

/// One message as a handler sees it (owned: it outlives the broker's buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Delivery {
    fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let mut headers = BTreeMap::new();
        if let Some(kafka_headers) = message.headers() {
            for header in kafka_headers.iter() {
                if let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) {
                    headers.insert(header.key.to_owned(), value.to_owned());
                }
            }
        }
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        }
    }

    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    pub fn traceparent(&self) -> Option<TraceParent> {
        self.headers
            .get(TRACEPARENT)
            .and_then(|h| TraceParent::parse(h))
    }
}

/// What a handler tells the runner when it could not finish a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A passing failure (database or broker unreachable, lock busy): try the same message
    /// again later. Nothing after it in the partition is committed until it succeeds.
    #[error("retry: {0}")]
    Retry(String),
    /// This message can never be handled (undecodable, refers to nothing): dead-letter it.
    #[error("reject: {0}")]
    Reject(String),
}

/// The work a service does per message. It must be idempotent: after a crash, messages
/// since the last commit are delivered again.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;
}

/// How a runner behaves; see the module docs.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Full consumer group id.
    pub group_id: String,
    pub topics: Vec<Topic>,
    /// Messages taken and not yet finished, at most.
    pub concurrency: usize,
    pub commit_interval: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    /// How long shutdown waits for running handlers.
    pub shutdown_grace: Duration,
}

impl ConsumerSettings {
    pub fn new(group_id: impl Into<String>, topics: Vec<Topic>) -> Self {
        Self {
            group_id: group_id.into(),
            topics,
            concurrency: 64,
            commit_interval: Duration::from_millis(500),
            retry_backoff_min: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Shared between the runner and librdkafka's rebalance callbacks.
struct RunnerContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    /// Partitions held right now (for readiness: a member holding none while its group has
    /// lag is not doing its work).
    assigned: Arc<AtomicUsize>,
}

impl ClientContext for RunnerContext {}

impl ConsumerContext for RunnerContext {
    /// Before partitions are taken away, commit what was handled on them and forget them,
    /// so the next owner starts right after our last handled message and our late
    /// completions cannot commit on its behalf.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let mut commit = TopicPartitionList::new();
        {
            let mut tracker = lock(&self.tracker);
            for element in revoked.elements() {
                if let Some(offset) = tracker.revoke(element.topic(), element.partition()) {
                    let _ = commit.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(offset),
                    );
                }
            }
        }
        if commit.count() > 0 {
            if let Err(error) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(%error, "commit on partition revoke failed; the next owner replays from the last commit");
            }
        }
        self.assigned.store(0, Ordering::Relaxed);
        tracing::info!(partitions = revoked.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(assigned) => {
                self.assigned.store(assigned.count(), Ordering::Relaxed);
                tracing::info!(partitions = assigned.count(), "partitions assigned");
            }
            Rebalance::Revoke(_) => self.assigned.store(0, Ordering::Relaxed),
            Rebalance::Error(_) => {}
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the tracker half-updated (every method
    // is a few map operations), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Job {
    delivery: Delivery,
    ticket: Ticket,
    /// When the broker's message was produced (its timestamp), for the age metric.
    produced_at_ms: Option<i64>,
    _permit: OwnedSemaphorePermit,
}

/// Everything a spawned message task needs.
struct Worker {
    handler: Arc<dyn Handler>,
    producer: Producer,
    tracker: Arc<Mutex<OffsetTracker>>,
    settings: ConsumerSettings,
    shutdown: CancellationToken,
    /// Jobs waiting behind a running job with the same key.
    queues: Mutex<HashMap<Vec<u8>, VecDeque<Job>>>,
    /// The longest wait before a handler started, for admission control
    /// ([`crate::pipeline_wait`]).
    wait: WaitGauge,
}

/// A consumer group member running one [`Handler`].
pub struct ConsumerRunner {
    consumer: Arc<StreamConsumer<RunnerContext>>,
    worker: Arc<Worker>,
    topics: Topics,
    assigned: Arc<AtomicUsize>,
    /// `kafka.idle_rejoin_secs` (zero: no watchdog).
    idle_rejoin: Duration,
    /// `kafka.offset_gap_patience_ms`: how long a hole in a partition's offsets is read again.
    gap_patience: Duration,
}

/// What `/readyz` asks a running consumer: does it hold partitions, and if not, does its
/// group have messages waiting (then it is idle while work waits).
#[derive(Clone)]
pub struct ConsumerProbe {
    consumer: Arc<StreamConsumer<RunnerContext>>,
    assigned: Arc<AtomicUsize>,
    topics: Vec<String>,
}

impl ConsumerProbe {
    /// Partitions this member holds now.
    pub fn assigned(&self) -> usize {
        self.assigned.load(Ordering::Relaxed)
    }

    /// Leaves the group and joins it again (unsubscribe, subscribe to the same topics);
    /// what the idle-member watchdog does. Handled offsets of the partitions given up are
    /// committed on the way out (the revoke callback), so nothing is handled twice.
    pub fn rejoin(&self) {
        self.consumer.unsubscribe();
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(error) = self.consumer.subscribe(&names) {
            tracing::warn!(%error, "resubscribing after a rejoin failed; the next look tries again");
        }
    }

    /// Whether one of this consumer's topics is absent at the broker (no partitions in its
    /// metadata): after a broker restarts empty, a member that rejoined before the topics
    /// were recreated holds nothing and librdkafka only looks again at its next metadata
    /// refresh (minutes).
    pub async fn topics_missing(&self, timeout: Duration) -> Result<bool, BusError> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || {
            for topic in &topics {
                let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
                let present = metadata.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                });
                if !present {
                    return Ok(true);
                }
            }
            Ok(false)
        })
        .await
        .map_err(|e| BusError::Other(e.to_string()))?
    }

    /// The group's lag (messages after its committed offsets, over every partition of its
    /// topics), asked of the broker. Blocking calls run off the runtime's workers.
    pub async fn group_lag(&self, timeout: Duration) -> Result<i64, BusError> {
        Ok(self.group_progress(timeout).await?.lag)
    }

    /// The group's lag and the sum of its committed offsets: if the sum does not move while
    /// there is lag, no member of the group is doing the work.
    pub async fn group_progress(&self, timeout: Duration) -> Result<GroupProgress, BusError> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for topic in &topics {
                let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
                for t in metadata.topics() {
                    for p in t.partitions() {
                        list.add_partition(t.name(), p.id());
                    }
                }
            }
            let committed = consumer.committed_offsets(list, timeout)?;
            let mut progress = GroupProgress::default();
            for element in committed.elements() {
                let (low, high) =
                    consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
                let from = match element.offset() {
                    Offset::Offset(o) => {
                        progress.committed = progress.committed.saturating_add(o);
                        o.max(low)
                    }
                    _ => low,
                };
                progress.lag = progress
                    .lag
                    .saturating_add(high.saturating_sub(from).max(0));
            }
            Ok(progress)
        })
        .await
        .map_err(|e| BusError::Other(e.to_string()))?
    }
}

/// What [`ConsumerProbe::group_progress`] finds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupProgress {
    /// Messages after the group's committed offsets.
    pub lag: i64,
    /// Sum of the committed offsets (partitions with none count 0).
    pub committed: i64,
}

/// The idle-member watchdog's memory: since when this member has held nothing while the
/// group had lag and its committed offsets stood at `committed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Idle {
    since: std::time::Instant,
    committed: i64,
}

/// What the watchdog does after one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Busy, or nothing waits, or someone else makes progress.
    Fine,
    /// Idle while work waits, not yet for `bound`.
    Watching(Idle),
    /// Idle while work waits and nobody made progress for `bound`: rejoin.
    Rejoin,
}

/// One watchdog decision, pure so it is tested without a broker. `progress` is `None` when
/// the broker could not be asked (then nothing changes: the broker being down is not a
/// reason to rejoin, and readiness reports it).
fn judge(
    previous: Option<Idle>,
    assigned: usize,
    progress: Option<GroupProgress>,
    now: std::time::Instant,
    bound: Duration,
) -> Verdict {
    if assigned > 0 {
        return Verdict::Fine;
    }
    let Some(progress) = progress else {
        return previous.map_or(Verdict::Fine, Verdict::Watching);
    };
    if progress.lag <= 0 {
        return Verdict::Fine;
    }
    match previous {
        Some(idle) if idle.committed == progress.committed => {
            if now.saturating_duration_since(idle.since) >= bound {
                Verdict::Rejoin
            } else {
                Verdict::Watching(idle)
            }
        }
        // First look, or another member moved the offsets: start (again) from now.
        _ => Verdict::Watching(Idle {
            since: now,
            committed: progress.committed,
        }),
    }
}

/// The librdkafka settings of every paygate consumer: the runner's, and `paygate bench
/// broker`'s, which measures what the broker costs for exactly these (the fetch wait and the
/// heartbeat set how often a consumer asks, and on tansu each ask costs the broker CPU).
pub fn consumer_client_config(config: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut client = client_config(config);
    client
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS.to_string())
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string());
    client
}

impl ConsumerRunner {
    /// Joins the group and subscribes (topics must exist: see [`super::ensure_topics`]).
    pub fn new(
        config: &KafkaConfig,
        settings: ConsumerSettings,
        handler: Arc<dyn Handler>,
        producer: Producer,
    ) -> Result<Self, BusError> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::new()));
        let assigned = Arc::new(AtomicUsize::new(0));
        let mut client = consumer_client_config(config, &settings.group_id);
        if let Some(instance) = &config.instance_id {
            // One process has one member per group, so the instance id alone is unique
            // within each group it joins.
            client.set("group.instance.id", instance.trim());
        }
        let consumer: StreamConsumer<RunnerContext> =
            client.create_with_context(RunnerContext {
                tracker: tracker.clone(),
                assigned: assigned.clone(),
            })?;
        let topics = Topics::new(config.topic_prefix.clone());
        let names: Vec<String> = settings.topics.iter().map(|t| topics.name(*t)).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&name_refs)?;
        let worker = Arc::new(Worker {
            handler,
            producer,
            tracker,
            settings,
            shutdown: CancellationToken::new(),
            queues: Mutex::new(HashMap::new()),
            wait: WaitGauge::default(),
        });
        Ok(Self {
            consumer: Arc::new(consumer),
            worker,
            topics,
            assigned,
            idle_rejoin: config.idle_rejoin,
            gap_patience: config.offset_gap_patience,
        })
    }

    /// A handle for readiness probes, valid while the runner runs.
    pub fn probe(&self) -> ConsumerProbe {
        ConsumerProbe {
            consumer: self.consumer.clone(),
            assigned: self.assigned.clone(),
            topics: self
                .worker
                .settings
                .topics
                .iter()
                .map(|t| self.topics.name(*t))
                .collect(),
        }
    }

    /// How long this runner's messages wait before their handler starts: the worker
    /// publishes it for the API's admission control ([`crate::pipeline_wait`]).
    pub fn wait_gauge(&self) -> WaitGauge {
        self.worker.wait.clone()
    }

    /// The consumer group this runner is a member of.
    pub fn group_id(&self) -> &str {
        &self.worker.settings.group_id
    }

    /// Runs until `shutdown` is cancelled, then drains and commits.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), BusError> {
        let permits = Arc::new(Semaphore::new(self.worker.settings.concurrency.max(1)));
        let tasks = TaskTracker::new();
        let mut commit_tick = tokio::time::interval(self.worker.settings.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let group = self.worker.settings.group_id.clone();
        tracing::info!(%group, "consumer started");
        let watchdog_stop = shutdown.child_token();
        let watchdog = (!self.idle_rejoin.is_zero()).then(|| {
            tokio::spawn(watch_idle(
                self.probe(),
                self.idle_rejoin,
                group.clone(),
                watchdog_stop.clone(),
            ))
        });

        loop {
            let Some(held) = permit.take() else {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = commit_tick.tick() => self.commit(CommitMode::Async, false),
                    acquired = permits.clone().acquire_owned() => {
                        permit = Some(acquired.map_err(|e| BusError::Other(e.to_string()))?);
                    }
                }
                continue;
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = commit_tick.tick() => {
                    self.commit(CommitMode::Async, false);
                    permit = Some(held);
                }
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let delivery = Delivery::from_message(&message);
                        let produced_at_ms = message.timestamp().to_millis();
                        drop(message);
                        match self.take(&delivery) {
                            Some(ticket) => self.dispatch(&tasks, Job { delivery, ticket, produced_at_ms, _permit: held }),
                            None => permit = Some(held),
                        }
                    }
                    Err(error) => {
                        // Broker unreachable and the like: librdkafka reconnects by itself.
                        tracing::warn!(%error, %group, "consumer error");
                        permit = Some(held);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }

        tracing::info!(%group, in_flight = lock(&self.worker.tracker).in_flight(), "consumer stopping");
        watchdog_stop.cancel();
        if let Some(watchdog) = watchdog {
            let _ = watchdog.await;
        }
        self.worker.shutdown.cancel();
        tasks.close();
        if tokio::time::timeout(self.worker.settings.shutdown_grace, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(%group, "handlers still running after the grace period; their messages will be redelivered");
        }
        self.commit(CommitMode::Sync, true);
        self.consumer.unsubscribe();
        tracing::info!(%group, "consumer stopped");
        Ok(())
    }

    /// Registers a message, or (a hole before it in its partition, see `offsets`) reads the
    /// partition again from the hole and answers `None`: the message comes again after it.
    fn take(&self, delivery: &Delivery) -> Option<Ticket> {
        let (topic, partition, offset) = (&delivery.topic, delivery.partition, delivery.offset);
        let taken = lock(&self.worker.tracker).take(
            topic,
            partition,
            offset,
            std::time::Instant::now(),
            self.gap_patience,
        );
        let group = &self.worker.settings.group_id;
        match taken {
            Take::Begun(ticket) => Some(ticket),
            Take::BegunAfterHole { ticket, expected } => {
                tracing::warn!(%group, %topic, partition, missing_from = expected, missing_to = offset.saturating_sub(1),
                    "offsets never came after reading the partition again; going on (Postgres re-drives what they carried)");
                metrics::counter!("paygate_consumer_offset_holes_total", "topic" => topic.clone(), "outcome" => "skipped")
                    .increment(1);
                Some(ticket)
            }
            Take::Refetch { expected, first } => {
                if first {
                    tracing::warn!(%group, %topic, partition, expected, got = offset,
                        "the fetch skipped offsets; reading the partition again from the first missing one");
                    metrics::counter!("paygate_consumer_offset_holes_total", "topic" => topic.clone(), "outcome" => "seen")
                        .increment(1);
                }
                let at = Offset::Offset(expected);
                if let Err(error) = self.consumer.seek(topic, partition, at, Duration::ZERO) {
                    tracing::warn!(%error, %group, %topic, partition, "seek back to the hole failed; the next message decides again");
                }
                None
            }
        }
    }

    /// Starts a job now, or queues it behind the running job with the same key.
    fn dispatch(&self, tasks: &TaskTracker, job: Job) {
        let worker = self.worker.clone();
        let Some(key) = job.delivery.key.clone() else {
            tasks.spawn(async move { worker.process(job).await });
            return;
        };
        {
            let mut queues = lock(&worker.queues);
            if let Some(queue) = queues.get_mut(&key) {
                queue.push_back(job);
                return;
            }
            queues.insert(key.clone(), VecDeque::new());
        }
        tasks.spawn(async move {
            let mut job = job;
            loop {
                worker.process(job).await;
                let next = {
                    let mut queues = lock(&worker.queues);
                    match queues.get_mut(&key).and_then(VecDeque::pop_front) {
                        Some(next) => next,
                        None => {
                            queues.remove(&key);
                            break;
                        }
                    }
                };
                job = next;
            }
        });
    }

    fn commit(&self, mode: CommitMode, everything: bool) {
        let offsets = {
            let tracker = lock(&self.worker.tracker);
            if everything {
                tracker.committable_all()
            } else {
                tracker.committable()
            }
        };
        if offsets.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &offsets {
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        match self.consumer.commit(&list, mode) {
            Ok(()) => {
                let mut tracker = lock(&self.worker.tracker);
                for (partition, offset) in &offsets {
                    tracker.committed(partition, *offset);
                }
            }
            Err(error) => tracing::warn!(%error, "offset commit failed; will retry"),
        }
    }

    /// The deployment's topic names (for handlers that need them).
    pub fn topics(&self) -> &Topics {
        &self.topics
    }
}

/// The idle-member watchdog: looks every `bound / 3` (at most 5 s). A member whose topic
/// went missing at the broker (restarted empty) reports it ([`super::reset::noticed`]) and
/// rejoins as soon as the topic exists again: librdkafka itself would look only at its next
/// metadata refresh (5 min). Otherwise, when this member has held no partitions, its group
/// has had lag, and the group's committed offsets have not moved for `bound`, it leaves and
/// rejoins the group. A member a broker forgot (tansu
/// after a crash-restart within the session timeout) is thereby assigned again; a member
/// idle because others hold every partition and make progress stays put, so a spare
/// instance does not force rebalances on a working group.
async fn watch_idle(probe: ConsumerProbe, bound: Duration, group: String, stop: CancellationToken) {
    let every = (bound / 3).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut idle: Option<Idle> = None;
    // Whether the last look found one of our topics missing at the broker.
    let mut topics_were_missing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Every look, assigned or not: a broker that came back empty may still hand out
        // partitions of topics it no longer has, and the sooner the loss is seen, the
        // sooner every process heals (super::reset).
        match probe.topics_missing(Duration::from_secs(2)).await {
            Ok(true) => {
                if !topics_were_missing {
                    tracing::warn!(%group, "a subscribed topic is missing at the broker");
                }
                // This process's reset watch recreates it and records the sighting, so
                // every process renews its producer and heals; rejoin once it exists.
                super::reset::noticed();
                topics_were_missing = true;
                idle = None;
                continue;
            }
            Ok(false) if topics_were_missing => {
                topics_were_missing = false;
                idle = None;
                tracing::warn!(%group, "a subscribed topic is back at the broker; rejoining the group to be assigned its partitions");
                metrics::counter!("paygate_consumer_rejoins_total", "group" => group.clone())
                    .increment(1);
                probe.rejoin();
                continue;
            }
            _ => {}
        }
        let assigned = probe.assigned();
        let progress = if assigned > 0 {
            None
        } else {
            match probe.group_progress(Duration::from_secs(2)).await {
                Ok(progress) => Some(progress),
                Err(error) => {
                    tracing::debug!(%error, %group, "watchdog could not read the group's progress");
                    None
                }
            }
        };
        match judge(idle, assigned, progress, std::time::Instant::now(), bound) {
            Verdict::Fine => idle = None,
            Verdict::Watching(now_idle) => idle = Some(now_idle),
            Verdict::Rejoin => {
                idle = None;
                let lag = progress.map(|p| p.lag).unwrap_or_default();
                tracing::warn!(%group, lag, idle_secs = bound.as_secs(), "holding no partitions while the group has lag and makes no progress; rejoining the group");
                metrics::counter!("paygate_consumer_rejoins_total", "group" => group.clone())
                    .increment(1);
                probe.rejoin();
            }
        }
    }
}

impl Worker {
    async fn process(&self, job: Job) {
        let delivery = &job.delivery;
        let trace_id = delivery
            .traceparent()
            .map(|t| t.trace_id())
            .unwrap_or_default();
        let span = tracing::info_span!("message", topic = %delivery.topic, partition = delivery.partition,
            offset = delivery.offset, trace_id = %trace_id);
        // Where a message's time goes: waiting (broker, this runner's queue, per-key order)
        // before its handler starts, then the handler itself (all attempts).
        if let Some(produced) = job.produced_at_ms {
            let age_ms = chrono::Utc::now()
                .timestamp_millis()
                .saturating_sub(produced)
                .max(0);
            metrics::histogram!("paygate_consumer_wait_seconds", "topic" => delivery.topic.clone())
                .record(age_ms as f64 / 1000.0);
            self.wait
                .record(Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)));
        }
        let started = std::time::Instant::now();
        let handled = self.handle_until_done(delivery).instrument(span).await;
        metrics::histogram!("paygate_consumer_handle_seconds", "topic" => delivery.topic.clone())
            .record(started.elapsed().as_secs_f64());
        if handled {
            lock(&self.tracker).complete(&job.ticket);
        }
    }

    /// True once the message is handled or dead-lettered; false if shutdown came first.
    async fn handle_until_done(&self, delivery: &Delivery) -> bool {
        let mut backoff = self.settings.retry_backoff_min;
        loop {
            let attempt = AssertUnwindSafe(self.handler.handle(delivery))
                .catch_unwind()
                .await;
            let outcome = attempt
                .unwrap_or_else(|_| Err(HandlerError::Reject("handler panicked".to_owned())));
            match outcome {
                Ok(()) => {
                    metrics::counter!("paygate_consumer_messages_total", "topic" => delivery.topic.clone(), "outcome" => "handled").increment(1);
                    return true;
                }
                Err(HandlerError::Reject(reason)) => {
                    metrics::counter!("paygate_consumer_messages_total", "topic" => delivery.topic.clone(), "outcome" => "dead_lettered").increment(1);
                    tracing::warn!(%reason, "message rejected; sending to the DLQ");
                    return self.dead_letter(delivery, &reason).await;
                }
                Err(HandlerError::Retry(reason)) => {
                    metrics::counter!("paygate_consumer_messages_total", "topic" => delivery.topic.clone(), "outcome" => "retried").increment(1);
                    tracing::warn!(%reason, backoff_ms = backoff.as_millis() as u64, "handler failed; retrying");
                    if !self.pause(backoff).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(self.settings.retry_backoff_max);
                }
            }
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> bool {
        let letter = Envelope::new(Body::DeadLetter(DeadLetter {
            source_topic: delivery.topic.clone(),
            partition: delivery.partition,
            offset: delivery.offset,
            key: delivery.key.clone().unwrap_or_default(),
            payload: delivery.payload.clone(),
            reason: reason.to_owned(),
            consumer_group: self.settings.group_id.clone(),
        }))
        .encode_to_bytes();
        let key = delivery.key.clone().unwrap_or_default();
        let mut backoff = self.settings.retry_backoff_min;
        loop {
            match self
                .producer
                .send(
                    Topic::Dlq,
                    &String::from_utf8_lossy(&key),
                    &letter,
                    &delivery.headers,
                )
                .await
            {
                Ok(_) => return true,
                Err(error) => {
                    tracing::warn!(%error, "could not write to the DLQ; retrying");
                    if !self.pause(backoff).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(self.settings.retry_backoff_max);
                }
            }
        }
    }

    /// Sleeps, unless shutdown comes first (then false).
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(duration) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const BOUND: Duration = Duration::from_secs(15);

    fn lagging(committed: i64) -> Option<GroupProgress> {
        Some(GroupProgress { lag: 10, committed })
    }

    #[test]
    fn a_member_holding_partitions_is_fine() {
        let now = Instant::now();
        assert_eq!(judge(None, 2, lagging(5), now, BOUND), Verdict::Fine);
    }

    #[test]
    fn an_idle_member_without_lag_is_fine() {
        let now = Instant::now();
        let none_waiting = Some(GroupProgress {
            lag: 0,
            committed: 5,
        });
        assert_eq!(judge(None, 0, none_waiting, now, BOUND), Verdict::Fine);
    }

    #[test]
    fn an_idle_member_rejoins_only_after_the_bound_without_progress() {
        let start = Instant::now();
        let Verdict::Watching(idle) = judge(None, 0, lagging(5), start, BOUND) else {
            panic!("the first idle look starts watching");
        };
        assert_eq!(
            judge(Some(idle), 0, lagging(5), start + BOUND / 2, BOUND),
            Verdict::Watching(idle)
        );
        assert_eq!(
            judge(Some(idle), 0, lagging(5), start + BOUND, BOUND),
            Verdict::Rejoin
        );
    }

    #[test]
    fn progress_by_another_member_restarts_the_clock() {
        let start = Instant::now();
        let idle = Idle {
            since: start,
            committed: 5,
        };
        let later = start + BOUND * 2;
        assert_eq!(
            judge(Some(idle), 0, lagging(6), later, BOUND),
            Verdict::Watching(Idle {
                since: later,
                committed: 6
            })
        );
    }

    #[test]
    fn an_unreachable_broker_changes_nothing() {
        let start = Instant::now();
        let idle = Idle {
            since: start,
            committed: 5,
        };
        assert_eq!(
            judge(Some(idle), 0, None, start + BOUND * 2, BOUND),
            Verdict::Watching(idle)
        );
        assert_eq!(judge(None, 0, None, start, BOUND), Verdict::Fine);
    }
}
