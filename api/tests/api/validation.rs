use serde_json::json;

use crate::helpers::*;

/// Every invalid body is refused naming its field, and nothing at all is written: no
/// transaction, no outbox row, no idempotency key.
#[tokio::test]
async fn the_validation_matrix_names_each_field_and_writes_nothing() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let with = |field: &str, value: serde_json::Value| {
        let mut body = deposit_body();
        body[field] = value;
        body.to_string()
    };
    let without = |field: &str| {
        let mut body = deposit_body();
        body.as_object_mut().map(|o| o.remove(field));
        body.to_string()
    };
    let many_keys: serde_json::Map<String, serde_json::Value> =
        (0..21).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases: Vec<(&str, String, u16, Option<&str>, &str)> = vec![
        (
            "float amount",
            with("amount", json!(10.5)),
            400,
            Some("amount"),
            "amount_invalid",
        ),
        (
            "whole float amount",
            r#"{"amount": 10.0, "currency": "USD", "customer": "c"}"#.into(),
            400,
            Some("amount"),
            "amount_invalid",
        ),
        (
            "zero amount",
            with("amount", json!(0)),
            400,
            Some("amount"),
            "amount_invalid",
        ),
        (
            "negative amount",
            with("amount", json!(-5)),
            400,
            Some("amount"),
            "amount_invalid",
        ),
        (
            "amount above i64",
            r#"{"amount": 9223372036854775808, "currency": "USD", "customer": "c"}"#.into(),
            400,
            Some("amount"),
            "amount_invalid",
        ),
        (
            "huge amount",
            r#"{"amount": 1e30, "currency": "USD", "customer": "c"}"#.into(),
            400,
            Some("amount"),
            "amount_invalid",
        ),
        (
            "string amount",
            with("amount", json!("1050")),
            400,
            Some("amount"),
            "amount_invalid",
        ),
        (
            "unknown currency",
            with("currency", json!("ZZZ")),
            400,
            Some("currency"),
            "currency_unsupported",
        ),
        (
            "lower-case currency",
            with("currency", json!("usd")),
            400,
            Some("currency"),
            "currency_invalid",
        ),
        (
            "numeric currency",
            with("currency", json!(840)),
            400,
            Some("currency"),
            "parameter_invalid_string",
        ),
        (
            "missing amount",
            without("amount"),
            400,
            Some("amount"),
            "parameter_missing",
        ),
        (
            "missing currency",
            without("currency"),
            400,
            Some("currency"),
            "parameter_missing",
        ),
        (
            "missing customer",
            without("customer"),
            400,
            Some("customer"),
            "parameter_missing",
        ),
        (
            "empty customer",
            with("customer", json!("")),
            400,
            Some("customer"),
            "customer_invalid",
        ),
        (
            "unknown field",
            with("amount_cents", json!(1)),
            400,
            Some("amount_cents"),
            "parameter_unknown",
        ),
        (
            "unknown gateway",
            with("gateway", json!("nowhere")),
            400,
            Some("gateway"),
            "gateway_unknown",
        ),
        (
            "http callback_url",
            with("callback_url", json!("http://merchant.example/hook")),
            400,
            Some("callback_url"),
            "url_invalid",
        ),
        (
            "metadata not an object",
            with("metadata", json!([1])),
            400,
            Some("metadata"),
            "metadata_invalid",
        ),
        (
            "metadata too many keys",
            with("metadata", serde_json::Value::Object(many_keys)),
            400,
            Some("metadata"),
            "metadata_invalid",
        ),
        (
            "metadata nested",
            with("metadata", json!({"a": {"b": 1}})),
            400,
            Some("metadata"),
            "metadata_invalid",
        ),
        (
            "metadata long value",
            with("metadata", json!({"a": "x".repeat(501)})),
            400,
            Some("metadata"),
            "metadata_invalid",
        ),
        (
            "malformed JSON",
            r#"{"amount": 1050, "currency": "#.into(),
            400,
            None,
            "invalid_json",
        ),
        ("empty body", String::new(), 400, None, "invalid_json"),
        ("not an object", "[1, 2]".into(), 400, None, "body_invalid"),
    ];
    for (i, (case, body, status, param, code)) in cases.into_iter().enumerate() {
        let response = app
            .client
            .post(app.url("/v1/deposits"))
            .bearer_auth(&merchant.key)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("validation-{i}"))
            .body(body)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), status, "{case}");
        let (kind, got_code, got_param) = error_of(response).await?;
        assert_eq!(kind, "invalid_request_error", "{case}");
        assert_eq!(got_code, code, "{case}");
        assert_eq!(got_param.as_deref(), param, "{case}");
    }

    // Wrong content type: 415, even with a valid JSON body.
    let response = app
        .client
        .post(app.url("/v1/deposits"))
        .bearer_auth(&merchant.key)
        .header("content-type", "text/plain")
        .body(deposit_body().to_string())
        .send()
        .await?;
    assert_eq!(response.status(), 415);
    assert_eq!(error_of(response).await?.1, "unsupported_media_type");
    let response = app
        .client
        .post(app.url("/v1/withdrawals"))
        .bearer_auth(&merchant.key)
        .body("{}")
        .send()
        .await?;
    assert_eq!(response.status(), 415, "no content type");

    // Oversize: past api.max_body_bytes, declared or streamed.
    let mut big = deposit_body();
    big["metadata"] = json!({"pad": "x".repeat(app.config.api.max_body_bytes)});
    let response = app.post("/v1/deposits", &merchant.key, &big).send().await?;
    assert_eq!(response.status(), 413);
    assert_eq!(error_of(response).await?.1, "body_too_large");
    let status = chunked_post(
        &app,
        "/v1/deposits",
        &merchant.key,
        app.config.api.max_body_bytes * 2,
    )
    .await?;
    assert_eq!(status, 413, "streamed without Content-Length");

    assert_eq!(app.count("transactions").await?, 0);
    assert_eq!(app.count("outbox").await?, 0);
    assert_eq!(app.count("idempotency_keys").await?, 0);

    // And the same body, valid, is accepted: the matrix was not refusing everything.
    let response = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    Ok(())
}

#[tokio::test]
async fn accepted_transactions_show_external_ids_and_integer_money() -> TestResult {
    let app = spawn_loopback_app().await?;
    let merchant = app.merchant().await?;
    let funds = paygate_core::domain::Money::from_parts(1050, "JPY")?;
    paygate_core::db::ledger::top_up(&app.pool, merchant.id, funds, "funds").await?;
    let body = json!({"amount": 1050, "currency": "JPY", "customer": "acct_9", "callback_url": "https://127.0.0.1:8443/cb",
        "metadata": {"order": "A-1", "n": 3}});
    let response = app
        .post("/v1/withdrawals", &merchant.key, &body)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let created: serde_json::Value = response.json().await?;
    let id = created["id"].as_str().unwrap_or_default();
    assert!(id.starts_with("txn_") && id.len() == 36, "{created}");
    assert_eq!(location, Some(format!("/v1/transactions/{id}")));
    assert_eq!(created["object"], "transaction");
    assert_eq!(created["type"], "withdrawal");
    assert_eq!(created["amount"], 1050);
    assert_eq!(created["currency"], "JPY");
    assert_eq!(created["status"], "pending");
    assert_eq!(created["metadata"], json!({"order": "A-1", "n": 3}));
    assert_eq!(created["callback_url"], "https://127.0.0.1:8443/cb");
    let fetched: serde_json::Value = app
        .get(&format!("/v1/transactions/{id}"), &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(fetched, created);
    Ok(())
}

/// A raw HTTP/1.1 request with a chunked body of `size` spaces (no Content-Length), so the
/// limit must be enforced while reading. Returns the response status.
async fn chunked_post(app: &TestApp, path: &str, key: &str, size: usize) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&authority).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let chunk = vec![b' '; 8192];
    let mut sent = 0;
    while sent < size {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break; // the server answered and closed early: fine
        }
        sent += chunk.len();
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    status.ok_or_else(|| anyhow::anyhow!("no HTTP status in {text:?}"))
}
