//! The processor killed between the Postgres commit and the Kafka publish: the completed
//! event is in the outbox, committed with the state change, and a restarted processor's
//! relay publishes it. The replayed callback message (its offset was never committed)
//! changes nothing.

mod common;

use std::time::Duration;

use common::{eventually, fields, Format, Harness};
use paygate_callback_processor::{CallbackProcessor, Outcome};
use paygate_core::bus::Topic;
use paygate_core::domain::TransactionStatus;
use paygate_gateways::ReportedStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_event_committed_before_a_crash_is_published_after_restart(
) -> anyhow::Result<()> {
    let mut h = Harness::new().await?;
    // Static membership (KIP-345), as deployments run it: the second life's member takes
    // the first one's place at once instead of waiting out a rebalance.
    h.config.kafka.instance_id = Some("callback-processor-1".into());
    let completed = h.watch(Topic::TransactionsCompleted).await?;
    let tx = h
        .transaction(Format::Protobuf, TransactionStatus::Submitted)
        .await?;
    let callback = fields(&tx, ReportedStatus::Succeeded, "evt_crash");

    // First life: the handler commits (state + log row + outbox row), and the process dies
    // before its relay ever runs. The message stays on the topic, its offset uncommitted.
    h.produce(Format::Protobuf, &callback).await?;
    let first = CallbackProcessor::build(h.config.clone(), h.registry.clone()).await?;
    let settled = first
        .handler()
        .process(&h.delivery(Format::Protobuf, &callback))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(settled.outcome, Outcome::Applied);
    drop(first);

    assert_eq!(h.reload(tx.id).await?.status, TransactionStatus::Succeeded);
    assert_eq!(
        h.unpublished_completed().await?,
        1,
        "the event waits in the outbox"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        completed.count_key(tx.id),
        0,
        "nothing reached Kafka before the crash"
    );

    // Second life: the relay publishes the row; the replayed message is a duplicate.
    let restarted = h.start_processor().await?;
    completed
        .wait_for(tx.id, 1, Duration::from_secs(60))
        .await?;
    eventually(Duration::from_secs(30), "outbox drained", || async {
        Ok((h.unpublished_completed().await? == 0).then_some(()))
    })
    .await?;
    // A later callback with the same key is handled after the replay (per-key order):
    // once it is logged, the replay has been handled too.
    h.produce(
        Format::Protobuf,
        &fields(&tx, ReportedStatus::Succeeded, "evt_after"),
    )
    .await?;
    // Generous bound: the first life's consumer left the group uncleanly, so the new member
    // may wait for a session timeout and a rebalance on a broker busy with other tests.
    eventually(Duration::from_secs(90), "the marker callback", || async {
        Ok((h.log(tx.id).await?.len() == 2).then_some(()))
    })
    .await?;
    // Give a duplicate publish, if there were one, time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    restarted.shutdown().await?;

    let published = completed.count_key(tx.id);
    assert!(published >= 1, "the completed event was lost");
    assert_eq!(
        published, 1,
        "published once here (at-least-once in general)"
    );
    let log = h.log(tx.id).await?;
    let rows: Vec<_> = log
        .iter()
        .map(|e| (e.provider_event_id.as_str(), e.outcome))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("evt_crash", Outcome::Applied),
            ("evt_after", Outcome::Late)
        ]
    );
    let after = h.reload(tx.id).await?;
    assert_eq!(after.version, tx.version + 1, "the replay changed nothing");
    assert_eq!(h.completed_in_outbox(tx.id).await?, 1);
    completed.stop().await?;
    Ok(())
}
