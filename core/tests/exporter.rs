//! The standalone `/metrics` exporter behind `telemetry.metrics_token`: an attack that
//! used to work (anyone who could reach the port read every metric) and now does not.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use paygate_core::secret::Secret;
use paygate_core::telemetry::serve_exporter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One GET with optional extra header lines; the status code and the body.
async fn get(
    addr: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer)).await??;
    let status = answer
        .split_whitespace()
        .nth(1)
        .ok_or("no status")?
        .parse()?;
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Ok((status, body))
}

#[tokio::test]
async fn metrics_behind_a_token_answer_only_its_bearer() -> TestResult {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("paygate_secret_volume_total").increment(7);
    });
    let token = "t".repeat(40);
    let addr = serve_exporter("127.0.0.1:0", handle, Some(Secret::new(token.clone())))?;
    let addr = addr.to_string();

    let (status, body) = get(&addr, "/metrics", "").await?;
    assert_eq!(status, 401);
    assert!(!body.contains("paygate_secret_volume_total"), "{body}");
    let wrong = format!("authorization: Bearer {}\r\n", "u".repeat(40));
    assert_eq!(get(&addr, "/metrics", &wrong).await?.0, 401);

    let right = format!("Authorization: Bearer {token}\r\n");
    let (status, body) = get(&addr, "/metrics", &right).await?;
    assert_eq!(status, 200);
    assert!(body.contains("paygate_secret_volume_total 7"), "{body}");
    // Probes need no token.
    assert_ne!(get(&addr, "/readyz", "").await?.0, 401);
    assert_eq!(get(&addr, "/healthz", "").await?, (200, "ok\n".to_owned()));
    Ok(())
}

#[tokio::test]
async fn without_a_token_the_exporter_stays_open() -> TestResult {
    let handle = PrometheusBuilder::new().build_recorder().handle();
    let addr = serve_exporter("127.0.0.1:0", handle, None)?.to_string();
    assert_eq!(get(&addr, "/metrics", "").await?.0, 200);
    Ok(())
}
