use std::collections::BTreeSet;
use std::time::Duration;

use paygate_core::bus::events::{Body, Envelope};
use paygate_core::bus::Topic;
use serde_json::Value;

use crate::helpers::*;

/// Keys of the pending messages, checking each decodes to a `TransactionPending` for the
/// transaction it is keyed by.
fn pending_ids(messages: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<String>> {
    messages
        .iter()
        .map(|(key, payload)| {
            let envelope = Envelope::decode_checked(payload)?;
            match envelope.body {
                Some(Body::TransactionPending(p)) if p.transaction_id == *key => Ok(key.clone()),
                other => anyhow::bail!("unexpected event for {key}: {other:?}"),
            }
        })
        .collect()
}

async fn accept(app: &TestApp, key: &str, n: usize) -> anyhow::Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let mut body = deposit_body();
        body["amount"] = (1000 + i as i64).into();
        let response = app.post("/v1/deposits", key, &body).send().await?;
        anyhow::ensure!(
            response.status() == 202,
            "accept {i}: {}",
            response.status()
        );
        let created: Value = response.json().await?;
        ids.insert(created["id"].as_str().unwrap_or_default().to_owned());
    }
    Ok(ids)
}

#[tokio::test]
async fn n_accepted_become_exactly_n_messages() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let ids = accept(&app, &merchant.key, 20).await?;

    let messages = consume_topic(
        &app.config,
        Topic::TransactionsPending,
        20,
        Duration::from_secs(30),
        Duration::from_secs(3),
    )
    .await?;
    let keys = pending_ids(&messages)?;
    assert_eq!(keys.len(), 20, "exactly one message per transaction");
    assert_eq!(keys.into_iter().collect::<BTreeSet<_>>(), ids);
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.unpublished().await.unwrap_or(-1) == 0
        })
        .await
    );
    Ok(())
}

/// Payments accepted while the broker is unreachable are committed and wait in the outbox
/// (`/readyz` degraded); a relay that can reach the broker later publishes each exactly once.
#[tokio::test]
async fn accepted_while_the_broker_is_down_are_published_once_when_it_is_back() -> TestResult {
    let (config, pool) = paygate_testkit::isolated_config().await?;
    let mut down = config.clone();
    down.api.bind = "127.0.0.1:0".into();
    // A port nothing listens on: every produce and metadata request fails.
    down.kafka.brokers = "127.0.0.1:1".into();
    down.kafka.message_timeout_ms = 1_500;
    let app = spawn_config(down, pool.clone(), Default::default()).await?;
    let merchant = app.merchant().await?;

    let ids = accept(&app, &merchant.key, 8).await?;
    assert_eq!(app.count("transactions").await?, 8, "202 means committed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        app.unpublished().await?,
        8,
        "rows wait while the broker is down"
    );

    let response = app.client.get(app.url("/readyz")).send().await?;
    assert_eq!(response.status(), 200, "still accepting payments");
    let ready: Value = response.json().await?;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["kafka"], "down");
    assert_eq!(ready["checks"]["postgres"], "ok");
    app.stop().await;

    // The same database, now with the real broker.
    let mut up = config;
    up.api.bind = "127.0.0.1:0".into();
    let app = spawn_config(up, pool, Default::default()).await?;
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.unpublished().await.unwrap_or(-1) == 0
        })
        .await,
        "the backlog drains"
    );
    let messages = consume_topic(
        &app.config,
        Topic::TransactionsPending,
        8,
        Duration::from_secs(30),
        Duration::from_secs(3),
    )
    .await?;
    let keys = pending_ids(&messages)?;
    assert_eq!(
        keys.len(),
        8,
        "exactly one message per accepted transaction: {keys:?}"
    );
    assert_eq!(keys.into_iter().collect::<BTreeSet<_>>(), ids);
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ready["status"], "ok", "{ready}");
    Ok(())
}
