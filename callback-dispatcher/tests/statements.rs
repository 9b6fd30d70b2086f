//! The dispatcher's one-statement writes against the real Postgres: recording an event with
//! its deliveries, and completing a delivery (attempt, move, failing streak) fenced by its
//! attempt number.

use std::time::Duration;

use chrono::Utc;
use paygate_core::bus::Topic;
use paygate_core::config::Config;
use paygate_core::db::outbox::OutboxMessage;
use paygate_core::db::webhook_endpoints::{self, NewDeliveryAttempt, WebhookEndpoint};
use paygate_core::db::webhooks::{
    self, ClaimLimits, ClaimedDelivery, DeliveryOutcome, DeliveryState, EventType, InFlight,
    NewEvent, StreakChange,
};
use paygate_core::db::{merchants, transactions};
use paygate_core::domain::{
    CustomerReference, MerchantId, Money, NewTransaction, Transaction, TransactionKind,
    TransactionStatus,
};
use paygate_testkit::isolated_config;
use sqlx::PgPool;

type Error = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), Error>;

const CALLBACK_URL: &str = "https://shop.example/paid";

/// A merchant's stored transaction with a `callback_url`.
async fn transaction(pool: &PgPool, merchant: MerchantId) -> Result<Transaction, Error> {
    let tx = Transaction::create(
        NewTransaction {
            merchant_id: merchant,
            kind: TransactionKind::Deposit,
            money: Money::from_parts(1050, "USD")?,
            customer: CustomerReference::parse("cust_42")?,
            gateway: None,
            callback_url: Some(CALLBACK_URL.to_owned()),
            metadata: serde_json::json!({}),
        },
        Utc::now(),
    );
    let announcement = OutboxMessage {
        topic: Topic::TransactionsPending,
        key: tx.id.to_string(),
        payload: b"pending".to_vec(),
        headers: Default::default(),
    };
    transactions::insert(pool, &tx, None, &announcement).await?;
    Ok(tx)
}

/// The succeeded event of `tx`.
fn event(tx: &Transaction) -> NewEvent {
    NewEvent {
        id: webhooks::event_id_for(tx.id, TransactionStatus::Succeeded),
        merchant_id: tx.merchant_id,
        transaction_id: tx.id,
        event_type: EventType::TransactionSucceeded,
        payload: "{\"type\":\"transaction.succeeded\"}".to_owned(),
        callback_url: tx.callback_url.clone(),
    }
}

async fn endpoint(
    config: &Config,
    pool: &PgPool,
    merchant: MerchantId,
    url: &str,
) -> Result<WebhookEndpoint, Error> {
    let keyring = paygate_testkit::keyring(config)?;
    Ok(webhook_endpoints::create(pool, &keyring, merchant, url, None).await?)
}

/// Every due delivery, claimed.
async fn claim_all(config: &Config, pool: &PgPool) -> Result<Vec<ClaimedDelivery>, Error> {
    let keyring = paygate_testkit::keyring(config)?;
    let in_flight = InFlight::default();
    let limits = ClaimLimits {
        max: 16,
        lease: Duration::from_secs(60),
        per_destination: 16,
        per_merchant: 16,
        in_flight: &in_flight,
    };
    Ok(webhooks::claim_due(pool, &keyring, limits)
        .await?
        .deliveries)
}

fn attempt(claimed: &ClaimedDelivery, status: u16) -> NewDeliveryAttempt {
    NewDeliveryAttempt {
        event_id: claimed.event_id,
        transaction_id: claimed.transaction_id,
        endpoint_id: claimed.endpoint_id,
        url: claimed.url.clone(),
        attempt: claimed.attempt,
        status_code: Some(i32::from(status)),
        latency_ms: Some(3),
        response_excerpt: Some("nope".to_owned()),
        error: None,
    }
}

/// One delivery row per enabled endpoint (in id order) and the `callback_url` (last), ids
/// time-ordered in that order; recording the event again schedules nothing.
#[tokio::test]
async fn an_event_is_recorded_with_a_delivery_per_destination_once() -> TestResult {
    let (config, pool) = isolated_config().await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let mut enabled = Vec::new();
    for n in 0..3 {
        let url = format!("https://hooks.example/{n}");
        enabled.push(endpoint(&config, &pool, merchant, &url).await?.id);
    }
    let gone = endpoint(&config, &pool, merchant, "https://hooks.example/gone").await?;
    assert!(webhook_endpoints::disable(&pool, merchant, gone.id).await?);
    let other = merchants::create(&pool, "other").await?.id;
    endpoint(&config, &pool, other, "https://other.example/").await?;
    let tx = transaction(&pool, merchant).await?;

    let recorded = webhooks::record_event(&pool, &event(&tx)).await?;
    assert!(recorded.created);
    assert_eq!(recorded.deliveries, 4);

    enabled.sort();
    let mut expected: Vec<String> = enabled.iter().map(ToString::to_string).collect();
    expected.push(webhooks::callback_destination(CALLBACK_URL));
    let deliveries = webhooks::deliveries_for_event(&pool, event(&tx).id).await?;
    let destinations: Vec<String> = deliveries.iter().map(|d| d.destination.clone()).collect();
    assert_eq!(destinations, expected);
    let endpoints: Vec<_> = deliveries.iter().map(|d| d.endpoint_id).collect();
    let mut expected_endpoints: Vec<_> = enabled.iter().copied().map(Some).collect();
    expected_endpoints.push(None);
    assert_eq!(endpoints, expected_endpoints);
    assert!(deliveries.iter().all(|d| d.id.get_version_num() == 7
        && d.state == DeliveryState::Pending
        && d.generation == 0));
    assert_eq!(
        deliveries.last().map(|d| d.url.as_str()),
        Some(CALLBACK_URL)
    );

    let again = webhooks::record_event(&pool, &event(&tx)).await?;
    assert!(!again.created);
    assert_eq!(again.deliveries, 0);
    assert_eq!(
        webhooks::deliveries_for_event(&pool, event(&tx).id)
            .await?
            .len(),
        4
    );

    let replay = webhooks::redeliver(&pool, merchant, event(&tx).id)
        .await?
        .ok_or("the event exists")?;
    assert_eq!((replay.generation, replay.deliveries), (1, 4));
    Ok(())
}

/// Completing a delivery logs the attempt, moves it on and marks the endpoint failing in
/// one statement; a second completion with the same (now stale) attempt number logs its
/// attempt and changes nothing else. The failing endpoint is disabled only while its streak
/// is the one that was judged.
#[tokio::test]
async fn a_completion_is_fenced_by_its_attempt_and_a_disable_by_its_streak() -> TestResult {
    let (config, pool) = isolated_config().await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let hook = endpoint(&config, &pool, merchant, "https://hooks.example/").await?;
    let tx = transaction(&pool, merchant).await?;
    webhooks::record_event(&pool, &event(&tx)).await?;
    let claimed = claim_all(&config, &pool).await?;
    let to_endpoint = claimed
        .iter()
        .find(|c| c.endpoint_id == Some(hook.id))
        .ok_or("the endpoint's delivery was claimed")?;
    let to_callback = claimed
        .iter()
        .find(|c| c.endpoint_id.is_none())
        .ok_or("the callback_url's delivery was claimed")?;

    let retry = DeliveryOutcome::Retry {
        after: Duration::from_secs(600),
    };
    let made = attempt(to_endpoint, 500);
    let first =
        webhooks::finish(&pool, to_endpoint, Some(&made), retry, StreakChange::Mark).await?;
    assert!(first.applied);
    let streak = first.failing.ok_or("the endpoint is failing")?;
    let stale =
        webhooks::finish(&pool, to_endpoint, Some(&made), retry, StreakChange::Mark).await?;
    assert!(!stale.applied, "the lease's attempt number fences the move");
    assert_eq!(stale.failing, None, "the streak is left alone too");
    assert_eq!(
        webhook_endpoints::list_attempts(&pool, tx.id, 10)
            .await?
            .len(),
        2
    );

    let delivered = attempt(to_callback, 204);
    let done = webhooks::finish(
        &pool,
        to_callback,
        Some(&delivered),
        DeliveryOutcome::Succeeded,
        StreakChange::Clear,
    )
    .await?;
    assert!(done.applied);
    assert_eq!(done.failing, None);

    let states: Vec<_> = webhooks::deliveries_for_event(&pool, event(&tx).id)
        .await?
        .into_iter()
        .map(|d| (d.endpoint_id, d.state, d.last_status_code))
        .collect();
    assert_eq!(
        states,
        vec![
            (Some(hook.id), DeliveryState::Pending, Some(500)),
            (None, DeliveryState::Succeeded, Some(204)),
        ]
    );

    let later = streak.since + chrono::TimeDelta::seconds(1);
    assert!(
        !webhook_endpoints::disable_if_failing_since(&pool, hook.id, later, "failing").await?,
        "another streak is not this one"
    );
    assert!(
        webhook_endpoints::disable_if_failing_since(&pool, hook.id, streak.since, "failing")
            .await?
    );
    assert_eq!(
        webhook_endpoints::endpoint_disabled_reason(&pool, hook.id)
            .await?
            .as_deref(),
        Some("failing")
    );
    let states: Vec<_> = webhooks::deliveries_for_event(&pool, event(&tx).id)
        .await?
        .into_iter()
        .map(|d| d.state)
        .collect();
    assert_eq!(
        states,
        vec![DeliveryState::Disabled, DeliveryState::Succeeded]
    );
    Ok(())
}

/// A claim says whether it passed due deliveries over for want of room, so that a worker
/// finishing wakes the scheduler only when there is something to wake it for: a claim that
/// took everything due says no; one held back by the bulkhead, or one that filled every free
/// slot, says yes. The claim leases what it takes (one attempt more, `delivering`).
#[tokio::test]
async fn a_claim_says_whether_it_left_due_deliveries_behind() -> TestResult {
    let (config, pool) = isolated_config().await?;
    let keyring = paygate_testkit::keyring(&config)?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    // Two payments whose only destination is the same callback_url.
    for _ in 0..2 {
        let tx = transaction(&pool, merchant).await?;
        webhooks::record_event(&pool, &event(&tx)).await?;
    }
    let in_flight = InFlight::default();
    let limits = |max, per_destination| ClaimLimits {
        max,
        lease: Duration::from_secs(60),
        per_destination,
        per_merchant: 16,
        in_flight: &in_flight,
    };

    let bulkhead = webhooks::claim_due(&pool, &keyring, limits(16, 1)).await?;
    assert_eq!(bulkhead.deliveries.len(), 1, "one per destination");
    assert!(bulkhead.held_back, "the second waits for room");
    let leased = &bulkhead.deliveries[0];
    assert_eq!(leased.attempt, 1);
    let rows = webhooks::deliveries_for_event(&pool, leased.event_id).await?;
    assert_eq!(
        rows.iter().map(|d| d.state).collect::<Vec<_>>(),
        vec![DeliveryState::Delivering]
    );

    let rest = webhooks::claim_due(&pool, &keyring, limits(16, 16)).await?;
    assert_eq!(rest.deliveries.len(), 1);
    assert!(!rest.held_back, "nothing due was left");

    let nothing = webhooks::claim_due(&pool, &keyring, limits(16, 16)).await?;
    assert!(nothing.deliveries.is_empty());
    assert!(!nothing.held_back);

    let tx = transaction(&pool, merchant).await?;
    webhooks::record_event(&pool, &event(&tx)).await?;
    let tx = transaction(&pool, merchant).await?;
    webhooks::record_event(&pool, &event(&tx)).await?;
    let full = webhooks::claim_due(&pool, &keyring, limits(1, 16)).await?;
    assert_eq!(full.deliveries.len(), 1);
    assert!(full.held_back, "every free slot taken: more may be due");
    Ok(())
}

/// A claim takes both kinds of due delivery, oldest due first: pending ones whose time has
/// come, and leased ones whose lease ran out (a crashed worker's); never one due later, nor
/// one whose lease still runs, nor one that finished.
#[tokio::test]
async fn a_claim_takes_due_and_abandoned_deliveries_oldest_first_and_nothing_else() -> TestResult {
    let (config, pool) = isolated_config().await?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let mut events = Vec::new();
    for _ in 0..5 {
        let tx = transaction(&pool, merchant).await?;
        webhooks::record_event(&pool, &event(&tx)).await?;
        events.push(webhooks::deliveries_for_event(&pool, event(&tx).id).await?[0].id);
    }
    let [abandoned, finished, running, due, later] = events[..] else {
        return Err("five deliveries".into());
    };
    // Due times, oldest first: the abandoned lease's delivery, then the due one; the one
    // due later is in the future.
    let due_in = |id, secs: f64| {
        sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $2)
             WHERE id = $1",
        )
        .bind(id)
        .bind(secs)
        .execute(&pool)
    };
    due_in(abandoned, -30.0).await?;
    due_in(finished, -25.0).await?;
    due_in(running, -20.0).await?;
    due_in(due, -10.0).await?;
    due_in(later, 60.0).await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET state = 'delivering', attempts = 1,
             locked_until = now() + make_interval(secs => CASE WHEN id = $1 THEN -1 ELSE 60 END)
         WHERE id = ANY($2)",
    )
    .bind(abandoned)
    .bind(vec![abandoned, running])
    .execute(&pool)
    .await?;
    sqlx::query("UPDATE webhook_deliveries SET state = 'succeeded' WHERE id = $1")
        .bind(finished)
        .execute(&pool)
        .await?;

    let claimed = claim_all(&config, &pool).await?;
    let taken: Vec<_> = claimed.iter().map(|d| (d.id, d.attempt)).collect();
    assert_eq!(
        taken,
        vec![(abandoned, 2), (due, 1)],
        "abandoned {abandoned}, due {due}; not finished {finished}, running {running}, later {later}"
    );
    assert!(
        claim_all(&config, &pool).await?.is_empty(),
        "both now leased"
    );
    Ok(())
}
