//! Every outcome, for every callback format, through the running processor: callbacks are
//! produced to `callbacks.received` as the API produces them and the effects are read back
//! from Postgres (including the merchant's webhook events) and the DLQ.

mod common;

use std::time::Duration;

use common::{declined, eventually, fields, Format, Harness};
use paygate_callback_processor::Outcome;
use paygate_core::bus::events::{Body, Envelope};
use paygate_core::bus::Topic;
use paygate_core::domain::{Money, TransactionId, TransactionStatus};
use paygate_gateways::{ReportedStatus, Secret};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_callbacks_every_outcome() -> anyhow::Result<()> {
    every_outcome(Format::Json).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soap_xml_callbacks_every_outcome() -> anyhow::Result<()> {
    every_outcome(Format::Soap).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_callbacks_every_outcome() -> anyhow::Result<()> {
    every_outcome(Format::Protobuf).await
}

async fn every_outcome(format: Format) -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let dlq = h.watch(Topic::Dlq).await?;
    let processor = h.start_processor().await?;

    // applied (from submitted), then duplicate, late and conflict on the same transaction.
    // Messages with one key are handled in order, so once the last one is logged, every
    // one before it has been handled.
    let paid = h.transaction(format, TransactionStatus::Submitted).await?;
    let first = fields(&paid, ReportedStatus::Succeeded, "evt_1");
    h.produce(format, &first).await?;
    h.produce(format, &first).await?; // duplicate: same provider event
    h.produce(format, &fields(&paid, ReportedStatus::Succeeded, "evt_2"))
        .await?; // late
    h.produce(format, &fields(&paid, declined(), "evt_3"))
        .await?; // conflict
    let log = eventually(WAIT, "three log rows", || async {
        let log = h.log(paid.id).await?;
        Ok((log.len() >= 3).then_some(log))
    })
    .await?;
    let rows: Vec<_> = log
        .iter()
        .map(|e| (e.provider_event_id.as_str(), e.outcome, e.needs_review))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("evt_1", Outcome::Applied, false),
            ("evt_2", Outcome::Late, false),
            ("evt_3", Outcome::Conflict, true),
        ],
        "{format:?}"
    );
    assert_eq!(log[0].reported_amount, 1050);
    assert_eq!(log[0].reported_currency, "USD");
    assert_eq!(log[2].failure_code.as_deref(), Some("declined"));
    let after = h.reload(paid.id).await?;
    assert_eq!(after.status, TransactionStatus::Succeeded);
    assert_eq!(
        after.version,
        paid.version + 1,
        "only the first callback changed it"
    );
    assert!(after.provider_reference.is_some());

    // mismatch: amount, then currency; flagged, not applied. Then the right callback
    // applies from `submitting` (it overtook our own `submitted` write).
    let racing = h.transaction(format, TransactionStatus::Submitting).await?;
    let mut more = fields(&racing, ReportedStatus::Succeeded, "evt_4");
    more.money = Money::from_parts(1051, "USD")?;
    h.produce(format, &more).await?;
    let mut other_currency = fields(&racing, ReportedStatus::Succeeded, "evt_5");
    other_currency.money = Money::from_parts(1050, "EUR")?;
    h.produce(format, &other_currency).await?;
    h.produce(format, &fields(&racing, declined(), "evt_6"))
        .await?;
    let log = eventually(WAIT, "mismatch rows", || async {
        let log = h.log(racing.id).await?;
        Ok((log.len() >= 3).then_some(log))
    })
    .await?;
    let rows: Vec<_> = log.iter().map(|e| (e.outcome, e.needs_review)).collect();
    assert_eq!(
        rows,
        vec![
            (Outcome::Mismatch, true),
            (Outcome::Mismatch, true),
            (Outcome::Applied, false)
        ],
        "{format:?}"
    );
    assert_eq!(log[0].reported_amount, 1051);
    assert_eq!(log[1].reported_currency, "EUR");
    let after = h.reload(racing.id).await?;
    assert_eq!(after.status, TransactionStatus::Failed);
    assert_eq!(
        after.failure.as_ref().map(|f| f.code.as_str()),
        Some("declined")
    );

    // applied from retry_scheduled: an earlier ambiguous attempt's callback.
    let waiting = h
        .transaction(format, TransactionStatus::RetryScheduled)
        .await?;
    h.produce(
        format,
        &fields(&waiting, ReportedStatus::Succeeded, "evt_7"),
    )
    .await?;
    eventually(WAIT, "retry_scheduled applied", || async {
        let t = h.reload(waiting.id).await?;
        Ok((t.status == TransactionStatus::Succeeded).then_some(()))
    })
    .await?;
    let t = h.reload(waiting.id).await?;
    assert_eq!(
        t.failure, None,
        "the last attempt's error is cleared on success"
    );
    assert_eq!(t.next_attempt_at, None);

    // unknown transaction → DLQ; a forged signature → DLQ.
    let unknown = TransactionId::new();
    let mut ghost = fields(&paid, ReportedStatus::Succeeded, "evt_ghost");
    ghost.transaction_id = unknown;
    h.produce(format, &ghost).await?;
    let forged = format_with_secret(
        format,
        &fields(&racing, ReportedStatus::Succeeded, "evt_forged"),
    );
    h.produce_raw(format, &forged, racing.id).await?;
    dlq.wait_for(unknown, 1, WAIT).await?;
    dlq.wait_for(racing.id, 1, WAIT).await?;

    // Every message is handled (per-key order, and each key's last one seen above); give a
    // second dead letter, if there were one, time to show. Once stopped, the processor can
    // record nothing more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    processor.shutdown().await?;

    // Webhook events: one per transaction that reached a terminal state, no more, recorded
    // by the settlement itself; nothing goes through the outbox for it.
    for (id, status) in [
        (paid.id, TransactionStatus::Succeeded),
        (racing.id, TransactionStatus::Failed),
        (waiting.id, TransactionStatus::Succeeded),
    ] {
        let event = h.the_event(id, status).await?;
        assert!(
            h.committed_together(id, event.id).await?,
            "{format:?} {id}: the event was not recorded in the settling commit"
        );
    }
    assert_eq!(
        h.completed_in_outbox().await?,
        0,
        "{format:?}: no transactions.completed outbox row"
    );
    let letters = dlq.messages();
    assert_eq!(letters.len(), 2, "{format:?}: {letters:?}");
    let reasons: Vec<String> = letters
        .iter()
        .filter_map(|d| match Envelope::decode_checked(&d.payload).ok()?.body? {
            Body::DeadLetter(letter) => Some(letter.reason),
            _ => None,
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("unknown transaction")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("callback refused")),
        "{reasons:?}"
    );
    assert!(h.log(unknown).await?.is_empty());
    assert_eq!(
        h.log(racing.id).await?.len(),
        3,
        "a forged callback is never logged"
    );
    dlq.stop().await?;
    Ok(())
}

/// The callback signed with a secret the gateway does not know.
fn format_with_secret(
    format: Format,
    fields: &paygate_gateways::CallbackFields,
) -> paygate_gateways::SignedCallback {
    let secret = Secret::new("whsec_not_ours");
    match format {
        Format::Json => paygate_gateways::json::signed_callback(&secret, fields),
        Format::Soap => paygate_gateways::soap::signed_callback(&secret, fields),
        Format::Protobuf => paygate_gateways::protobuf::signed_callback(&secret, fields),
    }
}

/// A callback for a transaction that was never submitted is stored and flagged, not
/// applied (the state machine's `pending → failed` is ours, not a provider's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_for_a_transaction_never_submitted_is_flagged() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let handler = paygate_callback_processor::CallbackHandler::new(
        h.pool.clone(),
        h.registry.clone(),
        h.redis.clone(),
        &h.config,
    );
    for format in Format::ALL {
        let pending = h.transaction(format, TransactionStatus::Pending).await?;
        let settled = handler
            .process(&h.delivery(format, &fields(&pending, declined(), "evt_early")))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert_eq!(settled.outcome, Outcome::Conflict, "{format:?}");
        assert!(settled.needs_review);
        assert_eq!(
            h.reload(pending.id).await?.status,
            TransactionStatus::Pending
        );
        assert!(
            h.events(pending.id).await?.is_empty(),
            "{format:?}: no event"
        );
    }
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}

/// The same provider event id delivered again with other content: still a duplicate (never
/// applied), and the logged row is flagged for review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_event_id_with_other_content_is_a_flagged_duplicate() -> anyhow::Result<()> {
    let h = Harness::new().await?;
    let handler = paygate_callback_processor::CallbackHandler::new(
        h.pool.clone(),
        h.registry.clone(),
        h.redis.clone(),
        &h.config,
    );
    let tx = h
        .transaction(Format::Json, TransactionStatus::Submitted)
        .await?;
    let process = |status: ReportedStatus| {
        let delivery = h.delivery(Format::Json, &fields(&tx, status, "evt_same"));
        let handler = &handler;
        async move {
            handler
                .process(&delivery)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    };
    assert_eq!(
        process(ReportedStatus::Succeeded).await?.outcome,
        Outcome::Applied
    );
    let same = process(ReportedStatus::Succeeded).await?;
    assert_eq!(
        (same.outcome, same.needs_review),
        (Outcome::Duplicate, false)
    );
    let other = process(declined()).await?;
    assert_eq!(
        (other.outcome, other.needs_review),
        (Outcome::Duplicate, true)
    );

    let log = h.log(tx.id).await?;
    assert_eq!(log.len(), 1);
    assert!(log[0].needs_review);
    assert_eq!(log[0].outcome, Outcome::Applied);
    assert_eq!(h.reload(tx.id).await?.status, TransactionStatus::Succeeded);
    // One event, the succeeded one: the reused id's other content tells the merchant nothing.
    h.the_event(tx.id, TransactionStatus::Succeeded).await?;
    assert_eq!(h.completed_in_outbox().await?, 0);
    Ok(())
}
