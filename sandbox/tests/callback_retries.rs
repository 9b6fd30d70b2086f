//! The callback retry schedule (issue 13): capped doubling backoff from knobs, a receiver
//! that recovers gets the callback, one that never does is given up on after exactly
//! `callback_max_attempts`, and shutdown does not wait for the schedule.

mod support;

use std::time::{Duration, Instant};

use paygate_core::domain::TransactionId;
use serde_json::json;
use support::{eventually, Proto, Receiver, World};

/// A receiver refusing its first attempts (an API restart) still gets the callback.
#[tokio::test]
async fn a_recovering_receiver_gets_the_callback() -> anyhow::Result<()> {
    let receiver = Receiver::start(|attempt| attempt < 4).await?;
    let world = World::start(&receiver.url).await?;
    world
        .admin
        .patch_account_knobs(
            "cb-recover",
            json!({"callback_delay_ms": 0, "callback_backoff_ms": 20, "callback_backoff_max_ms": 80}),
        )
        .await?;
    let answer = world
        .deposit(Proto::Json, "cb-recover", &TransactionId::new(), 100)
        .await?;
    assert_eq!(answer.status, 200);
    let sent = eventually(Duration::from_secs(20), || async {
        Ok(world.stats("cb-recover").await?.callbacks_sent == 1)
    })
    .await?;
    assert!(sent, "{:?}", world.stats("cb-recover").await?);
    let stats = world.stats("cb-recover").await?;
    assert_eq!((stats.callback_retries, stats.callbacks_failed), (4, 0));
    assert_eq!(receiver.attempts(), 5);
    world.stop().await
}

/// A receiver down for a while (by the clock, as an outage is) gets the callback once it is
/// back, within the default number of attempts.
#[tokio::test]
async fn an_outage_shorter_than_the_schedule_loses_nothing() -> anyhow::Result<()> {
    let up_at = Instant::now() + Duration::from_millis(600);
    let receiver = Receiver::start(move |_| Instant::now() < up_at).await?;
    let world = World::start(&receiver.url).await?;
    world
        .admin
        .patch_account_knobs(
            "cb-outage",
            json!({"callback_delay_ms": 0, "callback_backoff_ms": 50, "callback_backoff_max_ms": 200}),
        )
        .await?;
    world
        .deposit(Proto::Soap, "cb-outage", &TransactionId::new(), 100)
        .await?;
    let sent = eventually(Duration::from_secs(20), || async {
        Ok(world.stats("cb-outage").await?.callbacks_sent == 1)
    })
    .await?;
    assert!(sent, "{:?}", world.stats("cb-outage").await?);
    let stats = world.stats("cb-outage").await?;
    assert!(stats.callback_retries >= 1, "{stats:?}");
    assert_eq!(stats.callbacks_failed, 0);
    assert_eq!(u64::from(receiver.attempts()), stats.callback_retries + 1);
    world.stop().await
}

/// A receiver that never recovers gets exactly `callback_max_attempts` attempts.
#[tokio::test]
async fn a_dead_receiver_is_given_up_on_after_max_attempts() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| true).await?;
    let world = World::start(&receiver.url).await?;
    world
        .admin
        .patch_account_knobs(
            "cb-dead",
            json!({
                "callback_delay_ms": 0,
                "callback_max_attempts": 3,
                "callback_backoff_ms": 10,
                "callback_backoff_max_ms": 20,
            }),
        )
        .await?;
    world
        .deposit(Proto::Protobuf, "cb-dead", &TransactionId::new(), 100)
        .await?;
    let given_up = eventually(Duration::from_secs(20), || async {
        Ok(world.stats("cb-dead").await?.callbacks_failed == 1)
    })
    .await?;
    assert!(given_up);
    let stats = world.stats("cb-dead").await?;
    assert_eq!((stats.callbacks_sent, stats.callback_retries), (0, 2));
    assert_eq!(receiver.attempts(), 3);
    world.stop().await
}

/// With the default schedule (minutes long), shutdown still ends promptly mid-retry.
#[tokio::test]
async fn shutdown_does_not_wait_for_the_retry_schedule() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| true).await?;
    let world = World::start(&receiver.url).await?;
    let knobs = world
        .admin
        .patch_account_knobs("cb-stop", json!({"callback_delay_ms": 0}))
        .await?;
    assert_eq!(knobs.callback_max_attempts, 10);
    world
        .deposit(Proto::Json, "cb-stop", &TransactionId::new(), 100)
        .await?;
    let first_refused = eventually(Duration::from_secs(10), || async {
        Ok(world.stats("cb-stop").await?.callback_retries == 1)
    })
    .await?;
    assert!(first_refused);
    // `stop` fails unless the sandbox (and its callback tasks) end within 10 s, far less
    // than the ~4 minutes left of the schedule.
    world.stop().await?;
    assert_eq!(receiver.attempts(), 1);
    Ok(())
}
