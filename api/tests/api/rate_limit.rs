use crate::helpers::*;

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_per_key() -> TestResult {
    let app = spawn_with(
        |config| {
            config.api.rate_limit_per_second = 1;
            config.api.rate_limit_burst = 3;
        },
        Default::default(),
    )
    .await?;
    let merchant = app.merchant().await?;
    let other = app.merchant().await?;

    // The burst passes, then 429 (a slow machine may earn a token or two meanwhile).
    let mut passed = 0;
    let mut refused = None;
    for _ in 0..10 {
        let response = app.get("/v1/transactions", &merchant.key).send().await?;
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
        passed += 1;
    }
    assert!(passed >= 3, "the burst of 3 is allowed, got {passed}");
    let Some(response) = refused else {
        anyhow::bail!("never rate limited")
    };
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let (kind, code, _) = error_of(response).await?;
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("rate_limit_error", "rate_limited")
    );

    // A refused create writes nothing (count what was accepted until refused).
    let mut accepted = 0;
    for _ in 0..10 {
        let status = app
            .post("/v1/deposits", &merchant.key, &deposit_body())
            .send()
            .await?
            .status();
        if status == 429 {
            break;
        }
        assert_eq!(status, 202);
        accepted += 1;
    }
    assert_eq!(app.count("transactions").await?, accepted);

    // Another key is unaffected; the limited key recovers after Retry-After.
    assert_eq!(
        app.get("/v1/transactions", &other.key)
            .send()
            .await?
            .status(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    assert_eq!(
        app.get("/v1/transactions", &merchant.key)
            .send()
            .await?
            .status(),
        200,
        "after Retry-After"
    );
    Ok(())
}
