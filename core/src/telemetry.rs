//! Logging set-up: pretty for a terminal, JSON lines with `PAYGATE_LOG_FORMAT=json`.
//!
//! Secrets never reach a log: API keys and signing secrets are wrapped in types whose
//! `Debug` prints only a prefix, and request bodies are not logged.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{LogConfig, LogFormat};
use crate::secret::Secret;

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

/// Serves Prometheus metrics at `http://<bind>/metrics`, the worker's readiness at
/// `http://<bind>/readyz` ([`crate::ready`]) and its liveness at `/healthz` from this process, for services without an HTTP
/// server of their own (the processors, the dispatcher). Must run inside the Tokio runtime.
/// With a `token` (`telemetry.metrics_token`), `/metrics` answers only
/// `Authorization: Bearer <token>` (401 otherwise); `/readyz` stays open for probes.
pub fn serve_metrics(bind: &str, token: Option<Secret>) -> Result<SocketAddr, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    serve_exporter(bind, handle, token)
}

/// Serves an installed recorder's `/metrics` (and `/readyz`) at `bind`: the workers through
/// [`serve_metrics`], and the API when `telemetry.metrics_bind` moves its metrics off the
/// public listener. Returns the bound address (`bind` may ask for port 0).
///
/// The server is a few lines of HTTP/1.1 (one GET per connection) rather than a framework:
/// it answers two fixed paths to a scraper and a probe.
pub fn serve_exporter(
    bind: &str,
    handle: PrometheusHandle,
    token: Option<Secret>,
) -> Result<SocketAddr, String> {
    let addr: SocketAddr = bind
        .parse()
        .map_err(|e| format!("PAYGATE_TELEMETRY_METRICS_BIND: {bind:?} is not host:port ({e})"))?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?;
    let token = token.map(Arc::new);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(answer(stream, handle.clone(), token.clone()));
        }
    });
    tracing::info!(%bound, "serving Prometheus /metrics and /readyz");
    Ok(bound)
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: tokio::net::TcpStream,
    metrics: PrometheusHandle,
    token: Option<Arc<Secret>>,
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
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match path {
        "/metrics"
            if !token
                .as_deref()
                .is_none_or(|t| bearer_matches(header(&head, "authorization"), t)) =>
        {
            (
                "401 Unauthorized",
                "text/plain",
                "metrics need the bearer token\n".to_owned(),
            )
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        // Liveness: the process answers. Never its dependencies (an outage of Postgres must
        // not make an orchestrator restart every worker).
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
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

/// The value of header `name` (lower case) in a raw request head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Whether an `Authorization` value is `Bearer <token>`, compared in constant time: the one
/// rule for every `/metrics` behind `telemetry.metrics_token`.
pub fn bearer_matches(authorization: Option<&str>, token: &Secret) -> bool {
    use subtle::ConstantTimeEq;
    let presented = authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let token = Secret::new("m".repeat(32));
        let right = format!("Bearer {}", "m".repeat(32));
        assert!(bearer_matches(Some(&right), &token));
        assert!(!bearer_matches(None, &token));
        assert!(!bearer_matches(Some(&"m".repeat(32)), &token));
        assert!(!bearer_matches(Some("Bearer "), &token));
        assert!(!bearer_matches(Some(&format!("{right}x")), &token));
        assert!(!bearer_matches(Some(&right[..right.len() - 1]), &token));
    }

    #[test]
    fn headers_are_read_case_insensitively_from_the_head() {
        let head = "GET /metrics HTTP/1.1\r\nHost: x\r\nAUTHORIZATION:  Bearer abc \r\n\r\n";
        assert_eq!(header(head, "authorization"), Some("Bearer abc"));
        assert_eq!(header(head, "cookie"), None);
    }
}
