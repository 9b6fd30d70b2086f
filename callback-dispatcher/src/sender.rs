//! One HTTP attempt: guard the URL, pin the connection to the checked addresses, POST the
//! signed body, and report what happened (status, latency, the start of the response).

use std::time::{Duration, Instant};

use chrono::Utc;
use paygate_core::destination::{check_destination, DestinationPolicy, Refused};
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::retry::parse_retry_after;
use crate::signing::{SignedHeaders, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// Bytes of the response body kept in the attempt log.
pub const EXCERPT_BYTES: usize = 4 * 1024;
const USER_AGENT: &str = concat!("paygate-webhooks/", env!("CARGO_PKG_VERSION"));

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptReport {
    pub status: Option<u16>,
    pub latency: Duration,
    /// The first [`EXCERPT_BYTES`] of the response body (lossy UTF-8).
    pub excerpt: Option<String>,
    /// Why there is no (complete) response: timeout, refused connection, guard refusal…
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    /// Set when the SSRF guard refused the URL: nothing was sent.
    pub refused: Option<Refused>,
}

/// Sends attempts with a timeout, never following redirects, never through a proxy.
#[derive(Debug, Clone)]
pub struct Sender {
    pub timeout: Duration,
    pub policy: DestinationPolicy,
}

impl Sender {
    pub async fn send(&self, url: &str, signed: &SignedHeaders, body: &str) -> AttemptReport {
        let started = Instant::now();
        let destination = match check_destination(url, self.policy).await {
            Ok(destination) => destination,
            Err(refused) => {
                return AttemptReport {
                    latency: started.elapsed(),
                    error: Some(format!("refused by the destination policy: {refused}")),
                    refused: Some(refused),
                    ..AttemptReport::default()
                }
            }
        };
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(0)
            .user_agent(USER_AGENT);
        if destination.is_domain {
            // Connect only to the addresses just checked (no second, unchecked lookup).
            builder = builder.resolve_to_addrs(&destination.host, &destination.addrs);
        }
        let client = match builder.build() {
            Ok(client) => client,
            Err(error) => {
                return AttemptReport {
                    latency: started.elapsed(),
                    error: Some(format!("HTTP client: {}", error.without_url())),
                    ..AttemptReport::default()
                }
            }
        };
        let request = client
            .post(destination.url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(HEADER_ID, &signed.id)
            .header(HEADER_TIMESTAMP, &signed.timestamp)
            .header(HEADER_SIGNATURE, &signed.signature)
            .body(body.to_owned());
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                return AttemptReport {
                    latency: started.elapsed(),
                    error: Some(describe(&error, self.timeout)),
                    ..AttemptReport::default()
                }
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let mut excerpt: Vec<u8> = Vec::new();
        let mut error = None;
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    error = Some(format!(
                        "reading the response: {}",
                        describe(&e, self.timeout)
                    ));
                    break;
                }
            }
        }
        excerpt.truncate(EXCERPT_BYTES);
        AttemptReport {
            status: Some(status),
            latency: started.elapsed(),
            excerpt: (!excerpt.is_empty()).then(|| String::from_utf8_lossy(&excerpt).into_owned()),
            error,
            retry_after,
            refused: None,
        }
    }
}

fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("timed out after {} ms", timeout.as_millis());
    }
    let kind = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut message = format!("{kind}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
