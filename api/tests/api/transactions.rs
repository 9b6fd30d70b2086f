use paygate_core::db::webhook_endpoints::{self, NewDeliveryAttempt};
use paygate_core::domain::{EventId, TransactionId};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn keyset_pagination_newest_first() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = deposit_body();
        body["amount"] = (100 + i).into();
        let created: Value = app
            .post("/v1/deposits", &merchant.key, &body)
            .send()
            .await?
            .json()
            .await?;
        ids.push(created["id"].as_str().unwrap_or_default().to_owned());
    }
    ids.reverse(); // newest first

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v1/transactions?limit=2".to_owned(),
            Some(after) => format!("/v1/transactions?limit=2&starting_after={after}"),
        };
        let page: Value = app.get(&path, &merchant.key).send().await?.json().await?;
        pages += 1;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        seen.extend(
            data.iter()
                .map(|t| t["id"].as_str().unwrap_or_default().to_owned()),
        );
        cursor = seen.last().cloned();
        if page["has_more"] != true {
            break;
        }
        anyhow::ensure!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    let pending: Value = app
        .get("/v1/transactions?status=pending&limit=100", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(pending["data"].as_array().map(Vec::len), Some(5));
    let succeeded: Value = app
        .get("/v1/transactions?status=succeeded", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(succeeded["data"].as_array().map(Vec::len), Some(0));
    let default: Value = app
        .get("/v1/transactions", &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(default["data"].as_array().map(Vec::len), Some(5));

    for (query, param) in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        (
            "starting_after=mer_0192f4a1c2b37d8e9f0a1b2c3d4e5f60",
            "starting_after",
        ),
        ("sort=asc", "sort"),
    ] {
        let response = app
            .get(&format!("/v1/transactions?{query}"), &merchant.key)
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(
            error_of(response).await?.2.as_deref(),
            Some(param),
            "{query}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn retrieve_uses_the_cache_under_the_shared_key() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let created: Value = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .send()
        .await?
        .json()
        .await?;
    let id = TransactionId::parse(created["id"].as_str().unwrap_or_default())?;

    let fetched: Value = app
        .get(&format!("/v1/transactions/{id}"), &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(fetched, created);

    let key = paygate_core::cache_keys::transaction_cache_key(&app.config.redis.key_prefix, id);
    let client = redis::Client::open(app.config.redis.url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let cached: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
    let cached: Value = serde_json::from_str(&cached.unwrap_or_default())?;
    assert_eq!(cached["transaction"], created);
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await?;
    assert!(
        ttl > 0 && u128::try_from(ttl)? <= app.config.api.cache_ttl.as_millis(),
        "ttl {ttl}"
    );

    // The callback processor's invalidation: after DEL the next read goes to Postgres.
    sqlx::query("UPDATE transactions SET status = 'failed', failure_code = 'declined', failure_message = 'no', version = version + 1 WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&app.pool)
        .await?;
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
    let fresh: Value = app
        .get(&format!("/v1/transactions/{id}"), &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(fresh["status"], "failed");
    assert_eq!(fresh["failure"]["code"], "declined");

    let response = app
        .get("/v1/transactions/txn_123", &merchant.key)
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    assert_eq!(error_of(response).await?.2.as_deref(), Some("id"));
    let response = app
        .get(
            &format!("/v1/transactions/{}", TransactionId::new()),
            &merchant.key,
        )
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    Ok(())
}

#[tokio::test]
async fn deliveries_lists_the_attempts_recorded_for_a_transaction() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let created: Value = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .send()
        .await?
        .json()
        .await?;
    let id = TransactionId::parse(created["id"].as_str().unwrap_or_default())?;
    let path = format!("/v1/transactions/{id}/deliveries");

    let empty: Value = app.get(&path, &merchant.key).send().await?.json().await?;
    assert_eq!(empty["data"].as_array().map(Vec::len), Some(0));

    let event = EventId::new();
    for attempt in 1..=2 {
        webhook_endpoints::record_attempt(
            &app.pool,
            &NewDeliveryAttempt {
                event_id: event,
                transaction_id: id,
                endpoint_id: None,
                url: "https://merchant.example/cb".into(),
                attempt,
                status_code: Some(if attempt == 1 { 500 } else { 200 }),
                latency_ms: Some(12),
                response_excerpt: Some("ok".into()),
                error: None,
            },
        )
        .await?;
    }
    let listed: Value = app.get(&path, &merchant.key).send().await?.json().await?;
    let data = listed["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["attempt"], 1);
    assert_eq!(data[0]["status_code"], 500);
    assert_eq!(data[1]["status_code"], 200);
    assert_eq!(data[0]["event_id"], event.to_string());
    assert!(data[0]["id"]
        .as_str()
        .is_some_and(|s| s.starts_with("att_")));
    Ok(())
}
