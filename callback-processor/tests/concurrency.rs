//! Exactly one effect under contention, and a stale lock holder refused by the version check.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{declined, fields, Format, Harness};
use futures::future::join_all;
use paygate_callback_processor::handler::lock_name;
use paygate_callback_processor::{
    settle, settle_against, CallbackHandler, Outcome, ReceivedCallback,
};
use paygate_core::cache_keys::transaction_cache_key;
use paygate_core::db;
use paygate_core::domain::TransactionStatus;
use paygate_core::lock::RedisLock;
use paygate_gateways::ReportedStatus;

/// 20 deliveries of one callback at the same moment (two handler instances with their own
/// pools, as two processes would be, plus the same 20 through Kafka): one transition, one
/// log row, one webhook event for the merchant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_deliveries_of_one_callback_apply_exactly_once() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let tx = h
        .transaction(Format::Json, TransactionStatus::Submitted)
        .await?;
    let cache_key = transaction_cache_key(&h.config.redis.key_prefix, tx.id);
    let mut redis = h.redis.clone();
    let _: () = redis::cmd("SET")
        .arg(&cache_key)
        .arg("{\"stale\":true}")
        .query_async(&mut redis)
        .await?;

    let second_pool = db::connect(&h.config.database).await?;
    let handlers = [
        Arc::new(CallbackHandler::new(
            h.pool.clone(),
            h.registry.clone(),
            h.redis.clone(),
            &h.config,
        )),
        Arc::new(CallbackHandler::new(
            second_pool,
            h.registry.clone(),
            h.redis.clone(),
            &h.config,
        )),
    ];
    let callback = fields(&tx, ReportedStatus::Succeeded, "evt_concurrent_1");
    let delivery = h.delivery(Format::Json, &callback);

    let processor = h.start_processor().await?;
    // The same 20 through Kafka as well, racing the direct deliveries.
    for _ in 0..20 {
        h.produce(Format::Json, &callback).await?;
    }
    let start = Arc::new(tokio::sync::Barrier::new(20));
    let tasks = (0..20).map(|i| {
        let handler = handlers[i % 2].clone();
        let delivery = delivery.clone();
        let start = start.clone();
        tokio::spawn(async move {
            start.wait().await;
            // A busy lock is a Retry: the runner would back off and deliver again.
            loop {
                match handler.process(&delivery).await {
                    Err(paygate_core::bus::HandlerError::Retry(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        })
    });
    let results = join_all(tasks).await;
    let mut outcomes = Vec::new();
    for result in results {
        outcomes.push(result?.map_err(|e| anyhow::anyhow!("{e}"))?.outcome);
    }
    let applied = outcomes.iter().filter(|o| **o == Outcome::Applied).count();
    let duplicates = outcomes
        .iter()
        .filter(|o| **o == Outcome::Duplicate)
        .count();

    // A later callback with the same key is handled after the 20 Kafka copies (per-key
    // order): once it is logged, they have all been handled.
    h.produce(
        Format::Json,
        &fields(&tx, ReportedStatus::Succeeded, "evt_marker"),
    )
    .await?;
    common::eventually(Duration::from_secs(60), "the marker callback", || async {
        Ok((h.log(tx.id).await?.len() >= 2).then_some(()))
    })
    .await?;
    // Every delivery, direct or through Kafka, has been handled: nothing more is recorded.
    processor.shutdown().await?;

    let after = h.reload(tx.id).await?;
    let log = h.log(tx.id).await?;
    let cached: Option<String> = redis::cmd("GET")
        .arg(&cache_key)
        .query_async(&mut redis)
        .await?;

    // Kafka's copies may win the race, so the direct ones are at most one applied.
    assert!(applied <= 1, "applied {applied} times: {outcomes:?}");
    assert_eq!(applied + duplicates, 20, "{outcomes:?}");
    assert_eq!(after.status, TransactionStatus::Succeeded);
    assert_eq!(after.version, tx.version + 1, "exactly one transition");
    let rows: Vec<_> = log
        .iter()
        .map(|e| (e.provider_event_id.as_str(), e.outcome))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("evt_concurrent_1", Outcome::Applied),
            ("evt_marker", Outcome::Late)
        ],
        "one callback log row for the 40 deliveries"
    );
    eprintln!("direct deliveries: {applied} applied, {duplicates} duplicates");
    let event = h.the_event(tx.id, TransactionStatus::Succeeded).await?;
    assert!(
        h.committed_together(tx.id, event.id).await?,
        "the event was recorded in the one transition's commit"
    );
    assert_eq!(h.completed_in_outbox().await?, 0, "nothing for the outbox");
    assert_eq!(cached, None, "the cached transaction was dropped");
    Ok(())
}

/// Holder A takes the lock with a short lease, loads the transaction and "pauses" past its
/// lease; B takes the lock and applies another outcome. A's write against its stale
/// snapshot is refused; deciding again on a fresh load, A's callback is recorded as a
/// conflict and the newer state stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_paused_past_its_lease_cannot_overwrite_the_newer_state() -> anyhow::Result<()>
{
    let h = Harness::new().await?;
    let tx = h
        .transaction(Format::Soap, TransactionStatus::Submitted)
        .await?;
    let lock = RedisLock::new(h.redis.clone(), h.config.redis.key_prefix.clone());
    let lease = Duration::from_millis(300);

    let Some(lease_a) = lock.try_acquire(&lock_name(tx.id), lease).await? else {
        anyhow::bail!("lock unexpectedly held");
    };
    let snapshot_a = h.reload(tx.id).await?;
    let callback_a = ReceivedCallback {
        gateway: Format::Soap.gateway(),
        outcome: outcome_of(
            &h,
            Format::Soap,
            &fields(&tx, ReportedStatus::Succeeded, "evt_a"),
        )?,
        received_at: Utc::now(),
        traceparent: None,
        contradicted: None,
    };

    // A pauses; its lease runs out and B takes the lock.
    tokio::time::sleep(lease * 2).await;
    let Some(lease_b) = lock
        .try_acquire(&lock_name(tx.id), Duration::from_secs(10))
        .await?
    else {
        anyhow::bail!("B could not take an expired lock");
    };
    let callback_b = ReceivedCallback {
        gateway: Format::Soap.gateway(),
        outcome: outcome_of(&h, Format::Soap, &fields(&tx, declined(), "evt_b"))?,
        received_at: Utc::now(),
        traceparent: None,
        contradicted: None,
    };
    let b = settle(&h.writer, &callback_b).await?;
    assert_eq!(b.outcome, Outcome::Applied);
    assert_eq!(b.transaction.status, TransactionStatus::Failed);
    assert!(lock.release(lease_b).await?);

    // A wakes up and writes against its snapshot: refused, nothing written.
    let refused = settle_against(&h.writer, &callback_a, &snapshot_a, Utc::now()).await?;
    assert_eq!(refused, None, "a stale snapshot must change nothing");
    let now = h.reload(tx.id).await?;
    assert_eq!(now.status, TransactionStatus::Failed);
    assert_eq!(now.version, tx.version + 1);
    assert_eq!(h.log(tx.id).await?.len(), 1, "A wrote no log row");

    // A's own loop reloads and decides again: recorded as a conflict, never applied.
    let a = settle(&h.writer, &callback_a).await?;
    assert_eq!(a.outcome, Outcome::Conflict);
    assert!(a.needs_review);
    assert!(!lock.release(lease_a).await?, "A's lease was long gone");

    let after = h.reload(tx.id).await?;
    assert_eq!(after.status, TransactionStatus::Failed);
    assert_eq!(after.version, tx.version + 1);
    assert_eq!(after.failure.map(|f| f.code), Some("declined".to_owned()));
    let log = h.log(tx.id).await?;
    let outcomes: Vec<_> = log
        .iter()
        .map(|e| (e.provider_event_id.as_str(), e.outcome, e.needs_review))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("evt_b", Outcome::Applied, false),
            ("evt_a", Outcome::Conflict, true)
        ]
    );
    // One event, B's: A's refused write and its conflict told the merchant nothing.
    h.the_event(tx.id, TransactionStatus::Failed).await?;
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}

/// A stale snapshot is refused for a decision that records too (not only for one that
/// applies): a callback judged on an old version is judged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_decision_on_a_stale_snapshot_is_also_refused() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let tx = h
        .transaction(Format::Protobuf, TransactionStatus::Submitted)
        .await?;
    let mut wrong = fields(&tx, ReportedStatus::Succeeded, "evt_mismatch");
    wrong.money = paygate_core::domain::Money::from_parts(1, "USD")?;
    let callback = ReceivedCallback {
        gateway: Format::Protobuf.gateway(),
        outcome: outcome_of(&h, Format::Protobuf, &wrong)?,
        received_at: Utc::now(),
        traceparent: None,
        contradicted: None,
    };
    let stale = h.reload(tx.id).await?;
    // Someone else moves the transaction on.
    let update = stale.advance(TransactionStatus::RetryScheduled, Utc::now())?;
    assert!(db::transactions::apply(&h.pool, &update).await?.is_some());

    assert_eq!(
        settle_against(&h.writer, &callback, &stale, Utc::now()).await?,
        None
    );
    assert!(h.log(tx.id).await?.is_empty());
    let settled = settle(&h.writer, &callback).await?;
    assert_eq!(settled.outcome, Outcome::Mismatch);
    assert_eq!(h.log(tx.id).await?[0].status_before, "retry_scheduled");
    Ok(())
}

/// The settling statement locks the row only at the expected version: when another writer
/// holds the row and then commits a version change, the statement waits for it, finds the
/// version moved and writes nothing at all (no log row, no update, no webhook event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_change_committed_while_settling_leaves_nothing_written() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let tx = h
        .transaction(Format::Json, TransactionStatus::Submitted)
        .await?;
    let callback = received(
        &h,
        Format::Json,
        &fields(&tx, ReportedStatus::Succeeded, "evt_race"),
    )?;
    let snapshot = h.reload(tx.id).await?;
    let update = snapshot.advance(TransactionStatus::RetryScheduled, Utc::now())?;

    let mut other = h.pool.begin().await?;
    assert!(db::transactions::apply(&mut *other, &update)
        .await?
        .is_some());
    let settling = spawn_settle(&h, &callback, &snapshot);
    wait_for_a_lock_wait(&h).await?;
    other.commit().await?;

    assert_eq!(
        settling.await??,
        None,
        "a stale snapshot must change nothing"
    );
    assert!(h.log(tx.id).await?.is_empty(), "no log row");
    let now = h.reload(tx.id).await?;
    assert_eq!(now.status, TransactionStatus::RetryScheduled);
    assert_eq!(now.version, snapshot.version + 1);
    assert!(h.events(tx.id).await?.is_empty(), "no webhook event");
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}

/// The same race for a decision that only records (a mismatch): the log row is written
/// only if the version is still the one decided on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_decision_racing_a_version_change_leaves_no_log_row() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let tx = h
        .transaction(Format::Json, TransactionStatus::Submitted)
        .await?;
    let mut wrong = fields(&tx, ReportedStatus::Succeeded, "evt_race_mismatch");
    wrong.money = paygate_core::domain::Money::from_parts(1, "USD")?;
    let callback = received(&h, Format::Json, &wrong)?;
    let snapshot = h.reload(tx.id).await?;
    let update = snapshot.advance(TransactionStatus::RetryScheduled, Utc::now())?;

    let mut other = h.pool.begin().await?;
    assert!(db::transactions::apply(&mut *other, &update)
        .await?
        .is_some());
    let settling = spawn_settle(&h, &callback, &snapshot);
    wait_for_a_lock_wait(&h).await?;
    other.commit().await?;

    assert_eq!(settling.await??, None);
    assert!(h.log(tx.id).await?.is_empty(), "no log row");
    let settled = settle(&h.writer, &callback).await?;
    assert_eq!(settled.outcome, Outcome::Mismatch);
    assert_eq!(h.log(tx.id).await?.len(), 1);
    Ok(())
}

/// A concurrent write that keeps the version (scheduling bookkeeping) is not a reason to
/// refuse: the statement waits for it, then logs, applies and records the webhook event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_write_that_keeps_the_version_does_not_refuse_the_callback(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let tx = h
        .transaction(Format::Json, TransactionStatus::Submitted)
        .await?;
    let callback = received(
        &h,
        Format::Json,
        &fields(&tx, ReportedStatus::Succeeded, "evt_bookkeeping"),
    )?;
    let snapshot = h.reload(tx.id).await?;

    let mut other = h.pool.begin().await?;
    sqlx::query("UPDATE transactions SET next_attempt_at = now() WHERE id = $1")
        .bind(tx.id.as_uuid())
        .execute(&mut *other)
        .await?;
    let settling = spawn_settle(&h, &callback, &snapshot);
    wait_for_a_lock_wait(&h).await?;
    other.commit().await?;

    let settled = settling
        .await??
        .ok_or_else(|| anyhow::anyhow!("refused though the version did not move"))?;
    assert_eq!(settled.outcome, Outcome::Applied);
    let now = h.reload(tx.id).await?;
    assert_eq!(now.status, TransactionStatus::Succeeded);
    assert_eq!(now.version, snapshot.version + 1);
    assert_eq!(h.log(tx.id).await?.len(), 1);
    h.the_event(tx.id, TransactionStatus::Succeeded).await?;
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}

/// The same event logged by another worker whose commit comes while this one settles: the
/// statement waits for it, writes nothing, and the event is answered as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_logged_concurrently_is_a_duplicate_and_applies_nothing() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let tx = h
        .transaction(Format::Json, TransactionStatus::Submitted)
        .await?;
    let callback = received(
        &h,
        Format::Json,
        &fields(&tx, ReportedStatus::Succeeded, "evt_twice"),
    )?;
    let snapshot = h.reload(tx.id).await?;

    let mut other = h.pool.begin().await?;
    sqlx::query(
        "INSERT INTO callback_log (gateway, provider_event_id, transaction_id, reported_status,
             reported_amount, reported_currency, outcome, status_before, version_before, received_at)
         VALUES ($1, 'evt_twice', $2, 'succeeded', $3, $4, 'late', 'submitted', $5, now())",
    )
    .bind(Format::Json.gateway().as_str())
    .bind(tx.id.as_uuid())
    .bind(tx.money.amount.minor_units())
    .bind(tx.money.currency.code())
    .bind(snapshot.version)
    .execute(&mut *other)
    .await?;
    let settling = spawn_settle(&h, &callback, &snapshot);
    wait_for_a_lock_wait(&h).await?;
    other.commit().await?;

    let settled = settling
        .await??
        .ok_or_else(|| anyhow::anyhow!("the version did not move"))?;
    assert_eq!(settled.outcome, Outcome::Duplicate);
    let now = h.reload(tx.id).await?;
    assert_eq!(now.status, TransactionStatus::Submitted);
    assert_eq!(now.version, snapshot.version);
    assert_eq!(h.log(tx.id).await?.len(), 1);
    assert!(h.events(tx.id).await?.is_empty(), "no webhook event");
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}

/// Settlements of one merchant that queue while the writer is busy are written in one
/// database transaction (group commit), each with its ledger transfer and its webhook
/// event, and each is answered only after that transaction committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_merchants_settlements_that_queue_commit_together_each_with_its_ledger_and_event(
) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let mut txs = Vec::new();
    for _ in 0..8 {
        txs.push(
            h.transaction(Format::Json, TransactionStatus::Submitted)
                .await?,
        );
    }
    // Another session holds the first payment's row: its settlement, written alone (the
    // writer was idle), waits, and the writer with it.
    let mut other = h.pool.begin().await?;
    sqlx::query("SELECT 1 FROM transactions WHERE id = $1 FOR UPDATE")
        .bind(txs[0].id.as_uuid())
        .execute(&mut *other)
        .await?;
    let settle_one = |n: usize| {
        let (writer, callback) = (
            h.writer.clone(),
            received(
                &h,
                Format::Json,
                &fields(&txs[n], ReportedStatus::Succeeded, &format!("evt_{n}")),
            ),
        );
        tokio::spawn(async move {
            let settled = settle(&writer, &callback?).await?;
            anyhow::Ok(settled)
        })
    };
    let first = settle_one(0);
    wait_for_a_lock_wait(&h).await?;
    let rest: Vec<_> = (1..txs.len()).map(settle_one).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    other.rollback().await?;

    assert_eq!(first.await??.outcome, Outcome::Applied);
    for (settled, tx) in join_all(rest).await.into_iter().zip(&txs[1..]) {
        let settled = settled??;
        assert_eq!(settled.outcome, Outcome::Applied);
        assert_eq!(settled.transaction.status, TransactionStatus::Succeeded);
        assert_eq!(h.reload(tx.id).await?.status, TransactionStatus::Succeeded);
        let event = h.the_event(tx.id, TransactionStatus::Succeeded).await?;
        assert!(
            h.committed_together(tx.id, event.id).await?,
            "{}: the event was not in its settlement's commit",
            tx.id
        );
    }
    let event = h.the_event(txs[0].id, TransactionStatus::Succeeded).await?;
    assert!(h.committed_together(txs[0].id, event.id).await?);
    assert_eq!(h.completed_in_outbox().await?, 0);
    let xmin = |id: paygate_core::domain::TransactionId| {
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM transactions WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_one(&h.pool)
    };
    let together = xmin(txs[1].id).await?;
    for tx in &txs[2..] {
        assert_eq!(
            xmin(tx.id).await?,
            together,
            "{} was not in the group's commit",
            tx.id
        );
    }
    assert_ne!(xmin(txs[0].id).await?, together);
    let ids: Vec<uuid::Uuid> = txs.iter().map(|t| t.id.as_uuid()).collect();
    let transfers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_transfers WHERE transaction_id = ANY($1)")
            .bind(&ids)
            .fetch_one(&h.pool)
            .await?;
    assert_eq!(transfers, 8, "one ledger transfer per settled payment");
    Ok(())
}

/// A signed callback as the handler receives it.
fn received(
    h: &Harness,
    format: Format,
    fields: &paygate_gateways::CallbackFields,
) -> anyhow::Result<ReceivedCallback> {
    Ok(ReceivedCallback {
        gateway: format.gateway(),
        outcome: outcome_of(h, format, fields)?,
        received_at: Utc::now(),
        traceparent: None,
        contradicted: None,
    })
}

/// Settles `callback` against `snapshot` on a task of its own.
fn spawn_settle(
    h: &Harness,
    callback: &ReceivedCallback,
    snapshot: &paygate_core::domain::Transaction,
) -> tokio::task::JoinHandle<Result<Option<paygate_callback_processor::Settled>, db::DbError>> {
    let (writer, callback, snapshot) = (h.writer.clone(), callback.clone(), snapshot.clone());
    tokio::spawn(async move { settle_against(&writer, &callback, &snapshot, Utc::now()).await })
}

/// Waits until a session of this test's database waits for a row lock (the settling
/// statement queued behind the other writer), so the race is really run.
async fn wait_for_a_lock_wait(h: &Harness) -> anyhow::Result<()> {
    common::eventually(
        Duration::from_secs(10),
        "a session waiting for a lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&h.pool)
            .await?;
            Ok((waiting > 0).then_some(()))
        },
    )
    .await
}

/// Parses a signed callback with the real connector, as the handler does.
fn outcome_of(
    h: &Harness,
    format: Format,
    fields: &paygate_gateways::CallbackFields,
) -> anyhow::Result<paygate_gateways::CallbackOutcome> {
    let gateway = h
        .registry
        .get(&format.gateway())
        .ok_or_else(|| anyhow::anyhow!("gateway missing"))?;
    gateway
        .handle_callback(&format.sign(fields).to_request(Utc::now()))?
        .payment()
        .ok_or_else(|| anyhow::anyhow!("not a payment callback"))
}
