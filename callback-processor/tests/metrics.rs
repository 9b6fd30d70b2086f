//! `paygate_callbacks_total{outcome}` counts every outcome, read through a recorder
//! installed for this test binary.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{declined, fields, Format, Harness};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use paygate_callback_processor::{CallbackHandler, Outcome};
use paygate_core::bus::HandlerError;
use paygate_core::domain::{Money, TransactionId, TransactionStatus};
use paygate_gateways::ReportedStatus;

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

#[derive(Default, Clone)]
struct Counters(Arc<Mutex<HashMap<String, Arc<Cell>>>>);

impl Counters {
    fn name(key: &Key) -> String {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(name).map(|c| c.0.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = match self.0.lock() {
            Ok(mut map) => map.entry(Self::name(key)).or_default().clone(),
            Err(_) => Arc::new(Cell::default()),
        };
        Counter::from_arc(cell)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_counted_by_outcome() -> anyhow::Result<()> {
    let counters = Counters::default();
    metrics::set_global_recorder(counters.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;

    let h = Harness::new().await?;
    let handler = CallbackHandler::new(
        h.pool.clone(),
        h.registry.clone(),
        h.redis.clone(),
        &h.config,
    );
    let tx = h
        .transaction(Format::Soap, TransactionStatus::Submitted)
        .await?;
    let other = h
        .transaction(Format::Soap, TransactionStatus::Submitted)
        .await?;
    let mut wrong = fields(&other, ReportedStatus::Succeeded, "evt_m");
    wrong.money = Money::from_parts(999, "USD")?;
    let mut ghost = fields(&tx, ReportedStatus::Succeeded, "evt_ghost");
    ghost.transaction_id = TransactionId::new();

    let cases = [
        (
            fields(&tx, ReportedStatus::Succeeded, "evt_1"),
            Some(Outcome::Applied),
        ),
        (
            fields(&tx, ReportedStatus::Succeeded, "evt_1"),
            Some(Outcome::Duplicate),
        ),
        (
            fields(&tx, ReportedStatus::Succeeded, "evt_2"),
            Some(Outcome::Late),
        ),
        (fields(&tx, declined(), "evt_3"), Some(Outcome::Conflict)),
        (wrong, Some(Outcome::Mismatch)),
        (ghost, None),
    ];
    for (callback, expected) in cases {
        let result = handler.process(&h.delivery(Format::Soap, &callback)).await;
        match (result, expected) {
            (Ok(settled), Some(outcome)) => assert_eq!(settled.outcome, outcome),
            (Err(HandlerError::Reject(reason)), None) => {
                assert!(reason.contains("unknown transaction"), "{reason}")
            }
            (other, expected) => anyhow::bail!("{expected:?}: got {other:?}"),
        }
    }
    for outcome in [
        "applied",
        "duplicate",
        "late",
        "conflict",
        "mismatch",
        "unknown",
    ] {
        assert_eq!(
            counters.get(&format!("paygate_callbacks_total{{outcome={outcome}}}")),
            1,
            "{outcome}"
        );
    }
    Ok(())
}
