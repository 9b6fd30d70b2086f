//! Logging set-up: pretty for a terminal, JSON lines with `PAYGATE_LOG_FORMAT=json`.
//!
//! Secrets never reach a log: API keys and signing secrets are wrapped in types whose
//! `Debug` prints only a prefix, and request bodies are not logged.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Calling it twice (tests, `paygate dev`) is harmless.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match config.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init(),
    };
}

/// Serves Prometheus metrics at `http://<bind>/metrics` and the worker's readiness at
/// `http://<bind>/readyz` ([`crate::ready`]) from this process, for services without an HTTP
/// server of their own (the processors, the dispatcher). The API renders `/metrics` itself
/// and does not call this. Must run inside the Tokio runtime.
///
/// The server is a few lines of HTTP/1.1 (one GET per connection) rather than a framework:
/// it answers two fixed paths to a scraper and a probe.
pub fn serve_metrics(bind: &str) -> Result<(), String> {
    let addr: std::net::SocketAddr = bind
        .parse()
        .map_err(|e| format!("PAYGATE_TELEMETRY_METRICS_BIND: {bind:?} is not host:port ({e})"))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(answer(stream, handle));
        }
    });
    tracing::info!(%addr, "serving Prometheus /metrics and /readyz");
    Ok(())
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: tokio::net::TcpStream,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return;
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        "/readyz" => {
            let report = crate::ready::current().await;
            let status = if report.ready() {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", report.to_json())
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
