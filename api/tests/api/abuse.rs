//! Unauthenticated work is not free (issue 17): each test is an attack that used to cost
//! the service work and now does not.

use std::time::{Duration, Instant};

use paygate_api::auth::UNKNOWN_KEY_TTL;
use paygate_api::routes::health::READINESS_CACHE_TTL;
use paygate_core::db;
use paygate_core::domain::{ApiKeyId, Scope};
use paygate_core::secret::ApiKey;
use paygate_gateways::GatewayRegistry;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Writes an API key row for `key` directly, as `create_api_key` does for a generated one.
async fn insert_key(app: &TestApp, key: &ApiKey) -> anyhow::Result<()> {
    let merchant = db::merchants::create(&app.pool, "Late Key Shop").await?;
    let scopes: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    sqlx::query(
        "INSERT INTO api_keys (id, merchant_id, key_hash, prefix, scopes) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(ApiKeyId::new().as_uuid())
    .bind(merchant.id.as_uuid())
    .bind(&key.hash()[..])
    .bind(key.display_prefix())
    .bind(scopes)
    .execute(&app.pool)
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_repeated_unknown_key_is_refused_from_memory_without_a_lookup() -> TestResult {
    let app = spawn_app().await?;
    let key = ApiKey::generate();

    let first = app.get("/v1/transactions", key.expose()).send().await?;
    assert_eq!(first.status(), 401);
    let (kind, code, _) = error_of(first).await?;
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("authentication_error", "invalid_api_key")
    );

    // The key now exists in Postgres; repeats inside the TTL are still refused, which they
    // can only be if Postgres was not asked again.
    insert_key(&app, &key).await?;
    for _ in 0..50 {
        let repeat = app.get("/v1/transactions", key.expose()).send().await?;
        assert_eq!(repeat.status(), 401, "answered from the negative cache");
        let text = repeat.text().await?;
        assert!(!text.contains(key.expose()), "key echoed: {text}");
    }

    // The documented bound: refused for at most the TTL, then looked up again.
    tokio::time::sleep(UNKNOWN_KEY_TTL + Duration::from_millis(300)).await;
    let later = app.get("/v1/transactions", key.expose()).send().await?;
    assert_eq!(later.status(), 200, "after the TTL the key is looked up");

    // Revocation of a known key stays immediate: known keys are never cached.
    let merchant = app.merchant().await?;
    let ok = app.get("/v1/transactions", &merchant.key).send().await?;
    assert_eq!(ok.status(), 200);
    assert!(db::merchants::revoke_api_key(&app.pool, merchant.key_id).await?);
    let revoked = app.get("/v1/transactions", &merchant.key).send().await?;
    assert_eq!(revoked.status(), 401, "refused on the very next request");
    Ok(())
}

async fn committed_transactions(app: &TestApp) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&app.pool)
    .await?)
}

#[tokio::test]
async fn a_flood_of_readiness_probes_checks_the_dependencies_once_a_second() -> TestResult {
    const PROBES: usize = 1_000;
    let app = spawn_app().await?;
    // Let start-up work settle and its statistics reach pg_stat_database.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = committed_transactions(&app).await?;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..20 {
        let client = app.client.clone();
        let url = app.url("/readyz");
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..PROBES / 20 {
                let response = client.get(&url).send().await?;
                let status = response.status().as_u16();
                let body: Value = response.json().await?;
                statuses.push((status, body["checks"]["postgres"].clone()));
            }
            anyhow::Ok((worker, statuses))
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (worker, statuses) = done??;
        for (status, postgres) in statuses {
            assert_eq!(status, 200, "worker {worker}");
            assert_eq!(postgres, "ok", "worker {worker}");
        }
    }
    let elapsed = started.elapsed();

    // Backends report their statistics within a few seconds of going idle.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = committed_transactions(&app).await?;
    let probes_allowed = elapsed.as_secs_f64() / READINESS_CACHE_TTL.as_secs_f64() + 2.0;
    let delta = after - before;
    // Uncached, each probe was a `SELECT 1`: at least PROBES commits. Cached: one per TTL,
    // plus the relay's and samplers' background polling over the ~15 s window.
    assert!(
        (delta as f64) < PROBES as f64 / 2.0,
        "{delta} commits for {PROBES} probes in {elapsed:?} (about {probes_allowed:.0} probes expected)"
    );
    Ok(())
}

/// Sends the headers of a deposit promising a body, then dribbles it: a slowloris body.
async fn slow_body(app: &TestApp, key: &str) -> anyhow::Result<(String, Duration)> {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let head = format!(
        "POST /v1/deposits HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\nidempotency-key: slow-1\r\ncontent-length: 4096\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await?;
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "never cut off");
                // One byte at a time, forever: the connection would be held indefinitely.
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
    }
    Ok((
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    ))
}

#[tokio::test]
async fn a_slowloris_body_is_cut_off_with_408() -> TestResult {
    let app = spawn_with(
        |config| config.api.request_timeout = Duration::from_secs(1),
        GatewayRegistry::default(),
    )
    .await?;
    let merchant = app.merchant().await?;

    let (answer, elapsed) = slow_body(&app, &merchant.key).await?;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        elapsed < Duration::from_secs(5),
        "cut off after {elapsed:?}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let value: Value = serde_json::from_str(body)?;
    assert_eq!(value["error"]["type"], "invalid_request_error", "{value}");
    assert_eq!(value["error"]["code"], "request_timeout", "{value}");
    assert!(value["error"].get("param").is_some(), "{value}");
    assert!(!answer.contains(&merchant.key), "key echoed");
    assert_eq!(app.count("transactions").await?, 0, "nothing written");

    // A prompt request under the same limit is untouched.
    let ok = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .header("idempotency-key", "prompt-1")
        .send()
        .await?;
    assert_eq!(ok.status(), 202);
    Ok(())
}

#[tokio::test]
async fn an_address_flooding_bad_keys_is_refused_before_any_lookup() -> TestResult {
    let app = spawn_with(
        |config| {
            config.api.unauthenticated_per_second = 1;
            config.api.unauthenticated_burst = 5;
        },
        GatewayRegistry::default(),
    )
    .await?;
    let merchant = app.merchant().await?;

    // Authenticated traffic from the address costs nothing here (the benchmarks' case).
    for _ in 0..50 {
        let ok = app.get("/v1/transactions", &merchant.key).send().await?;
        assert_eq!(ok.status(), 200);
    }

    // 300 distinct unknown keys (no negative-cache help): the burst gets 401, the rest 429.
    let (mut unauthorized, mut limited) = (0, 0);
    let mut retry_after = None;
    for _ in 0..300 {
        let key = ApiKey::generate();
        let response = app.get("/v1/transactions", key.expose()).send().await?;
        match response.status().as_u16() {
            401 => unauthorized += 1,
            429 => {
                limited += 1;
                retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let (kind, code, _) = error_of(response).await?;
                assert_eq!(
                    (kind.as_str(), code.as_str()),
                    ("rate_limit_error", "rate_limited")
                );
            }
            other => anyhow::bail!("unexpected {other}"),
        }
    }
    // The burst, plus one a second for as long as the loop ran.
    assert!(
        (5..=10).contains(&unauthorized),
        "{unauthorized} lookups, {limited} refused"
    );
    assert_eq!(unauthorized + limited, 300);
    let wait = retry_after.ok_or_else(|| anyhow::anyhow!("429 without Retry-After"))?;
    assert!((1..=2).contains(&wait), "Retry-After {wait}");

    // Refused before the lookup: even a valid key from the address waits (documented).
    // (Right after a refused bad key; a few tries in case the refusal ended in between.)
    let mut valid_refused = false;
    for _ in 0..3 {
        let bad = ApiKey::generate();
        let _ = app.get("/v1/transactions", bad.expose()).send().await?;
        let valid = app.get("/v1/transactions", &merchant.key).send().await?;
        if valid.status() == 429 {
            valid_refused = true;
            break;
        }
    }
    assert!(
        valid_refused,
        "a refused address is refused before its key is looked up"
    );

    // After Retry-After the address is served again.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(200)).await;
    let again = app.get("/v1/transactions", &merchant.key).send().await?;
    assert_eq!(again.status(), 200);
    Ok(())
}

/// Connects and sends a request head one byte every 100 ms, never finishing it; how long
/// until the server closed the connection (None: still open after 10 s).
async fn trickle_headers(app: &TestApp) -> anyhow::Result<Option<Duration>> {
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let head = format!("GET /healthz HTTP/1.1\r\nhost: {address}\r\nx-slow: ");
    let started = Instant::now();
    let mut bytes = head.bytes().chain(std::iter::repeat(b'a'));
    let mut buf = [0u8; 512];
    while started.elapsed() < Duration::from_secs(10) {
        let byte = [bytes.next().unwrap_or(b'a')];
        if stream.write_all(&byte).await.is_err() {
            return Ok(Some(started.elapsed()));
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => return Ok(Some(started.elapsed())),
            Err(_) => {}
        }
    }
    Ok(None)
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_disconnected() -> TestResult {
    let app = spawn_with(
        |config| config.api.header_read_timeout = Duration::from_millis(500),
        GatewayRegistry::default(),
    )
    .await?;
    let closed = trickle_headers(&app).await?;
    let closed = closed
        .ok_or_else(|| anyhow::anyhow!("a trickled request head held the connection for 10 s"))?;
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");

    // A client that sends its request promptly is served, peer address and all (the
    // per-address limiter reads it from every request).
    let ok = app.client.get(app.url("/healthz")).send().await?;
    assert_eq!(ok.status(), 200);
    let unknown = app
        .get("/v1/transactions", ApiKey::generate().expose())
        .send()
        .await?;
    assert_eq!(unknown.status(), 401);
    Ok(())
}

#[tokio::test]
async fn metrics_behind_a_token_are_refused_without_it() -> TestResult {
    let token = "metrics-token-".repeat(3);
    let configured = token.clone();
    let app = spawn_with(
        move |config| config.telemetry.metrics_token = Some(configured.as_str().into()),
        GatewayRegistry::default(),
    )
    .await?;
    let bare = app.client.get(app.url("/metrics")).send().await?;
    assert_eq!(bare.status(), 401);
    let body: Value = bare.json().await?;
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("metrics-token-")
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(right.status(), 200);
    assert!(right.text().await?.contains("http_requests_total"));
    Ok(())
}

#[tokio::test]
async fn metrics_on_their_own_bind_are_gone_from_the_public_listener() -> TestResult {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let bind = format!("127.0.0.1:{port}");
    let configured = bind.clone();
    let app = spawn_with(
        move |config| config.telemetry.metrics_bind = Some(configured),
        GatewayRegistry::default(),
    )
    .await?;
    let public = app.client.get(app.url("/metrics")).send().await?;
    assert_eq!(public.status(), 404);
    let private = app
        .client
        .get(format!("http://{bind}/metrics"))
        .send()
        .await?;
    assert_eq!(private.status(), 200);
    Ok(())
}
