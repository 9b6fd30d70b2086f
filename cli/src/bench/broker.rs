//! `paygate bench broker`: what the Kafka broker costs per message, and how long a consumer
//! waits for one, for each number of partitions and fetch wait asked for.
//!
//! Why apart from `bench e2e`: on tansu (the local broker) a payment's three Kafka hops cost
//! a fifth of the machine's CPU at 300 payments/s, and each hop's latency follows the
//! consumers' fetch wait; end to end those effects drown in the pipeline's run-to-run noise.
//! Here the broker carries only a scratch topic, written by paygate's own producer and read
//! by consumers with paygate's own settings ([`consumer_client_config`]), at a fixed rate, so
//! one setting's cost is read off directly. The broker's CPU comes from `/proc` when it runs
//! on this machine as `tansu`; against another broker that column is empty.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use paygate_core::bus::trace::{TraceParent, TRACEPARENT};
use paygate_core::bus::{consumer_client_config, create_topic, delete_topic, Producer};
use paygate_core::config::KafkaConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cpu::CpuSnapshot;
use super::load::{self, Latencies, LoadSpec, Percentiles, Recorder};
use super::net::{TcpReport, TcpSnapshot};

/// How long the consumers may take to join their groups and read a first message.
const WARM_UP_LIMIT: Duration = Duration::from_secs(60);
/// How long after the last send the consumers may take to read the window's messages.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Sends waiting for their acknowledgement at once, at most (a stalled broker makes the
/// bench wait instead of queueing without bound).
const MAX_IN_FLIGHT: usize = 20_000;
/// The warm-up sends in steps of this long, checking between them whether every group reads.
const WARM_UP_STEP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Messages produced per second (the pipeline writes three per payment).
    #[arg(long, default_value_t = 450, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rate: u64,
    /// Seconds measured per row, after a warm-up that lasts until every consumer has read.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub duration: u64,
    /// Partitions of the scratch topic; a comma-separated list runs a row for each.
    #[arg(long, value_delimiter = ',', default_value = "1,4",
          value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: Vec<i32>,
    /// The consumers' fetch wait (`fetch.wait.max.ms`, `kafka.fetch_wait_max_ms`) in ms; a
    /// comma-separated list runs a row for each.
    #[arg(long = "fetch-wait-ms", value_delimiter = ',', default_value = "25",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub fetch_wait_ms: Vec<u64>,
    /// Consumer groups, each reading every message (the pipeline has three, one per topic).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub consumers: u16,
    /// Payload bytes per message (paygate's events are a few hundred bytes of protobuf).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub message_bytes: u32,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The whole run: one row per (partitions, fetch wait).
#[derive(Debug, Serialize)]
pub struct BrokerReport {
    pub rate: u64,
    pub duration_secs: u64,
    pub consumers: u16,
    pub message_bytes: u32,
    pub rows: Vec<BrokerRow>,
}

/// One setting, measured.
#[derive(Debug, Serialize)]
pub struct BrokerRow {
    pub partitions: i32,
    pub fetch_wait_ms: u64,
    pub produced: u64,
    pub produced_per_sec: f64,
    pub send_errors: u64,
    /// Messages of the window read, per consumer group, per second of the window.
    pub read_per_sec: f64,
    /// Messages of the window some group had not read when the drain limit passed.
    pub unread: u64,
    /// From the producer's timestamp to the consumer's hands.
    pub latency_ms: Percentiles,
    /// The broker's CPU in % of one core (`tansu` on this machine), if it runs here.
    pub broker_cpu_pct: Option<f64>,
    pub broker_cpu_ms_per_message: Option<f64>,
    /// This process (producer and consumers: librdkafka's threads) per message.
    pub bench_cpu_ms_per_message: f64,
    pub tcp: TcpReport,
}

impl BrokerArgs {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.partitions.is_empty(),
            "--partitions needs at least one value"
        );
        anyhow::ensure!(
            !self.fetch_wait_ms.is_empty(),
            "--fetch-wait-ms needs at least one value"
        );
        Ok(())
    }
}

/// Runs every row in turn, each on a topic of its own that is deleted afterwards.
pub async fn broker(args: BrokerArgs, config: &KafkaConfig) -> anyhow::Result<BrokerReport> {
    args.check()?;
    anyhow::ensure!(
        !config.brokers.trim().is_empty(),
        "kafka.brokers is empty: `paygate bench broker` measures a running broker (scripts/stack up)"
    );
    let producer = Producer::new(config).context("creating the producer")?;
    let mut rows = Vec::new();
    for &partitions in &args.partitions {
        for &fetch_wait_ms in &args.fetch_wait_ms {
            let setting = Setting {
                partitions,
                fetch_wait_ms,
            };
            rows.push(row(&args, config, &producer, setting).await?);
        }
    }
    Ok(BrokerReport {
        rate: args.rate,
        duration_secs: args.duration,
        consumers: args.consumers,
        message_bytes: args.message_bytes,
        rows,
    })
}

#[derive(Debug, Clone, Copy)]
struct Setting {
    partitions: i32,
    fetch_wait_ms: u64,
}

async fn row(
    args: &BrokerArgs,
    config: &KafkaConfig,
    producer: &Producer,
    setting: Setting,
) -> anyhow::Result<BrokerRow> {
    let topic = format!(
        "{}.bench-broker.{}",
        config.topic_prefix,
        Uuid::new_v4().simple()
    );
    create_topic(config, &topic, setting.partitions)
        .await
        .with_context(|| format!("creating the scratch topic {topic}"))?;
    let measured = measure(args, config, producer, &topic, setting).await;
    if let Err(error) = delete_topic(config, &topic).await {
        eprintln!("  (the scratch topic {topic} stays: {error})");
    }
    measured
}

/// What the consumers saw, shared by their tasks.
struct Reads {
    /// Messages stamped at or after this (ms since the epoch) are the window's.
    window_from_ms: i64,
    latencies: Latencies,
    /// Window messages read, summed over the groups.
    in_window: u64,
    /// Whether each group has read any message yet (the warm-up waits until all have).
    started: Vec<bool>,
}

fn lock(reads: &Mutex<Reads>) -> MutexGuard<'_, Reads> {
    reads.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn measure(
    args: &BrokerArgs,
    config: &KafkaConfig,
    producer: &Producer,
    topic: &str,
    setting: Setting,
) -> anyhow::Result<BrokerRow> {
    let groups = usize::from(args.consumers);
    let readers = Readers::start(config, topic, setting, groups)?;
    let sender = Sender::new(producer.clone(), topic, args.message_bytes as usize);

    // Warm-up at the same rate until every group has read something.
    let warm = Instant::now();
    while !readers.all_reading() {
        anyhow::ensure!(
            warm.elapsed() < WARM_UP_LIMIT,
            "the consumers read nothing within {} s (is the broker up?)",
            WARM_UP_LIMIT.as_secs()
        );
        sender.send_for(args.rate, WARM_UP_STEP).await?;
    }

    readers.open_window();
    let (cpu_before, tcp_before) = (CpuSnapshot::take(), TcpSnapshot::take());
    let window = Duration::from_secs(args.duration);
    let sent = sender.send_for(args.rate, window).await?;
    let cpu = cpu_before.until(&CpuSnapshot::take());
    let tcp = tcp_before.until(&TcpSnapshot::take(), sent.ok());
    let produced = sent.ok();
    let expected = produced.saturating_mul(groups as u64);
    let (read, latency_ms) = readers.stop_after(expected).await;

    let secs = window.as_secs_f64();
    let per_message = cpu.per_unit_ms(produced);
    let broker = cpu.by_kind_cpu_secs.get("tansu").copied();
    Ok(BrokerRow {
        partitions: setting.partitions,
        fetch_wait_ms: setting.fetch_wait_ms,
        produced,
        produced_per_sec: produced as f64 / secs,
        send_errors: sent.errors(),
        read_per_sec: read as f64 / groups as f64 / secs,
        unread: expected.saturating_sub(read),
        latency_ms,
        broker_cpu_pct: broker.map(|s| s * 100.0 / cpu.seconds.max(f64::EPSILON)),
        broker_cpu_ms_per_message: per_message.get("tansu").copied(),
        bench_cpu_ms_per_message: per_message.get("bench").copied().unwrap_or(0.0),
        tcp,
    })
}

/// The consumer groups' readers, and what they saw.
struct Readers {
    reads: Arc<Mutex<Reads>>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl Readers {
    /// One consumer per group, each with paygate's settings and the row's fetch wait.
    fn start(
        config: &KafkaConfig,
        topic: &str,
        setting: Setting,
        groups: usize,
    ) -> anyhow::Result<Self> {
        let reads = Arc::new(Mutex::new(Reads {
            window_from_ms: i64::MAX,
            latencies: Latencies::new()?,
            in_window: 0,
            started: vec![false; groups],
        }));
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut consumer_config = config.clone();
        consumer_config.fetch_wait_max_ms = setting.fetch_wait_ms;
        for group in 0..groups {
            let group_id = format!("{topic}.g{group}");
            let consumer: StreamConsumer =
                consumer_client_config(&consumer_config, &group_id).create()?;
            consumer.subscribe(&[topic])?;
            tasks.spawn(read(consumer, group, reads.clone(), stop.clone()));
        }
        Ok(Self { reads, tasks, stop })
    }

    /// Whether every group has read a message.
    fn all_reading(&self) -> bool {
        lock(&self.reads).started.iter().all(|s| *s)
    }

    /// From now on, messages are the window's: timed and counted.
    fn open_window(&self) {
        lock(&self.reads).window_from_ms = epoch_ms();
    }

    /// Waits (at most [`DRAIN_LIMIT`]) until the groups read `expected` window messages,
    /// then stops the readers: the window messages they read, and how long those waited.
    async fn stop_after(mut self, expected: u64) -> (u64, Percentiles) {
        let drain = Instant::now();
        while lock(&self.reads).in_window < expected && drain.elapsed() < DRAIN_LIMIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let reads = lock(&self.reads);
        (reads.in_window, reads.latencies.percentiles())
    }
}

/// Now, in ms since the epoch: the clock Kafka's message timestamps use.
fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One consumer group's reader: records, for each message of the window, how long after its
/// producer stamped it the message arrived here.
async fn read(
    consumer: StreamConsumer,
    group: usize,
    reads: Arc<Mutex<Reads>>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            received = consumer.recv() => received,
        };
        let Ok(message) = message else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let now_ms = epoch_ms();
        let stamped = message.timestamp().to_millis();
        let mut reads = lock(&reads);
        if let Some(started) = reads.started.get_mut(group) {
            *started = true;
        }
        if let Some(stamped) = stamped.filter(|s| *s >= reads.window_from_ms) {
            let waited = u64::try_from(now_ms.saturating_sub(stamped)).unwrap_or(0);
            reads.latencies.record(Duration::from_millis(waited));
            reads.in_window = reads.in_window.saturating_add(1);
        }
    }
}

/// What a message carries: a random key (so messages spread over the partitions), a payload
/// of the asked size and a `traceparent` header, as paygate's events do.
#[derive(Clone)]
struct Sender {
    producer: Producer,
    topic: Arc<str>,
    payload: Arc<[u8]>,
    headers: Arc<BTreeMap<String, String>>,
}

impl Sender {
    fn new(producer: Producer, topic: &str, bytes: usize) -> Self {
        let headers =
            BTreeMap::from([(TRACEPARENT.to_owned(), TraceParent::new_root().to_string())]);
        Self {
            producer,
            topic: topic.into(),
            payload: vec![b'x'; bytes].into(),
            headers: Arc::new(headers),
        }
    }

    /// Sends `rate` messages a second for `length` with the benches' open loop
    /// ([`load::drive`]: each send on its own task when it is due, as the relays and the API
    /// send), and returns once every one has its acknowledgement.
    async fn send_for(&self, rate: u64, length: Duration) -> anyhow::Result<Arc<Recorder>> {
        let spec = LoadSpec {
            duration: length,
            concurrency: MAX_IN_FLIGHT,
            rate: Some(rate),
        };
        let recorder = Arc::new(Recorder::new()?);
        let sender = self.clone();
        load::drive(spec, &recorder, String::new, move |_, _| {
            let sender = sender.clone();
            async move {
                sender
                    .producer
                    .send_to(
                        &sender.topic,
                        Uuid::new_v4().as_bytes(),
                        &sender.payload,
                        &sender.headers,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        Ok(recorder)
    }
}

pub fn print(report: &BrokerReport) {
    println!(
        "paygate bench broker ({} messages/s, {} consumer group{}, {}-byte messages, {} s per row)",
        report.rate,
        report.consumers,
        if report.consumers == 1 { "" } else { "s" },
        report.message_bytes,
        report.duration_secs
    );
    println!(
        "  partitions  fetch wait  produced/s  read/s  unread  broker CPU  broker ms/msg  bench ms/msg  TCP segs/msg  latency p50 / p90 / p99 ms"
    );
    for row in &report.rows {
        let broker_pct = row
            .broker_cpu_pct
            .map_or_else(|| "—".to_owned(), |p| format!("{p:.1} %"));
        let broker_ms = row
            .broker_cpu_ms_per_message
            .map_or_else(|| "—".to_owned(), |m| format!("{m:.3}"));
        println!(
            "  {:>10}  {:>7} ms  {:>10.1}  {:>6.1}  {:>6}  {:>10}  {:>13}  {:>12.3}  {:>12.2}  {:.1} / {:.1} / {:.1}",
            row.partitions,
            row.fetch_wait_ms,
            row.produced_per_sec,
            row.read_per_sec,
            row.unread,
            broker_pct,
            broker_ms,
            row.bench_cpu_ms_per_message,
            row.tcp.segments_per_unit,
            row.latency_ms.p50,
            row.latency_ms.p90,
            row.latency_ms.p99,
        );
        if row.send_errors > 0 {
            println!("              {} sends failed", row.send_errors);
        }
    }
}
