//! The processor killed right after the settling commit: the merchant's webhook event and
//! its delivery rows were recorded in that very commit, so they are already in Postgres and
//! nothing waits in the outbox (there is no window between a commit and a publish left to
//! lose them in). A restarted processor handles the replayed callback message (its offset
//! was never committed) as a duplicate: no second event, no second delivery.

mod common;

use std::time::Duration;

use common::{eventually, fields, Format, Harness};
use paygate_callback_processor::{CallbackProcessor, Outcome};
use paygate_core::db::webhook_endpoints;
use paygate_core::db::webhooks::{callback_destination, DeliveryState};
use paygate_core::domain::TransactionStatus;
use paygate_gateways::ReportedStatus;

const CALLBACK_URL: &str = "https://shop.example/paygate/callback";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_committed_before_a_crash_has_its_webhook_event_and_deliveries(
) -> anyhow::Result<()> {
    let mut h = Harness::new().await?;
    // Static membership (KIP-345), as deployments run it: the second life's member takes
    // the first one's place at once instead of waiting out a rebalance.
    h.config.kafka.instance_id = Some("callback-processor-1".into());
    // Two destinations: an enabled endpoint of the merchant and the payment's callback_url.
    let keyring = paygate_testkit::keyring(&h.config)?;
    let endpoint = webhook_endpoints::create(
        &h.pool,
        &keyring,
        h.merchant,
        "https://shop.example/webhooks",
        None,
    )
    .await?;
    let tx = h
        .transaction_with_callback(
            Format::Protobuf,
            TransactionStatus::Submitted,
            Some(CALLBACK_URL),
        )
        .await?;
    let callback = fields(&tx, ReportedStatus::Succeeded, "evt_crash");

    // First life: the handler commits (state + log row + webhook event + deliveries), and
    // the process dies right after. The message stays on the topic, its offset uncommitted.
    h.produce(Format::Protobuf, &callback).await?;
    let outbox_before = h.outbox_rows().await?;
    let first = CallbackProcessor::build(h.config.clone(), h.registry.clone()).await?;
    let settled = first
        .handler()
        .process(&h.delivery(Format::Protobuf, &callback))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(settled.outcome, Outcome::Applied);
    drop(first);

    // Already in Postgres, with nothing left for a relay to do.
    assert_eq!(h.reload(tx.id).await?.status, TransactionStatus::Succeeded);
    let event = h.the_event(tx.id, TransactionStatus::Succeeded).await?;
    assert!(
        h.committed_together(tx.id, event.id).await?,
        "the event was recorded in the settling commit"
    );
    let deliveries = h.deliveries(event.id).await?;
    let mut destinations: Vec<_> = deliveries
        .iter()
        .map(|d| (d.destination.clone(), d.url.clone(), d.endpoint_id))
        .collect();
    destinations.sort();
    let mut expected = vec![
        (
            format!("we_{}", endpoint.id.as_uuid().simple()),
            endpoint.url.clone(),
            Some(endpoint.id),
        ),
        (
            callback_destination(CALLBACK_URL),
            CALLBACK_URL.to_owned(),
            None,
        ),
    ];
    expected.sort();
    assert_eq!(destinations, expected, "one delivery per destination");
    assert!(
        deliveries
            .iter()
            .all(|d| d.generation == 0 && d.attempts == 0 && d.state == DeliveryState::Pending),
        "due and untried: {deliveries:?}"
    );
    assert_eq!(
        h.outbox_rows().await?,
        outbox_before,
        "the settlement wrote nothing to the outbox"
    );
    assert_eq!(h.completed_in_outbox().await?, 0);

    // Second life: the replayed message is a duplicate.
    let restarted = h.start_processor().await?;
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
    restarted.shutdown().await?;

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
    let again = h.the_event(tx.id, TransactionStatus::Succeeded).await?;
    assert_eq!(again, event, "the replay recorded no second event");
    assert_eq!(
        h.deliveries(event.id).await?,
        deliveries,
        "and scheduled no second delivery"
    );
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}
