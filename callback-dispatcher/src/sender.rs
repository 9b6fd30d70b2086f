//! One HTTP attempt: guard the URL, pin the connection to the checked addresses, POST the
//! signed body, and report what happened (status, latency, the start of the response).

use std::time::{Duration, Instant};

use chrono::Utc;
use paygate_core::destination::{check_destination, DestinationPolicy, Refused};
use reqwest::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};

use crate::clients::Clients;
use crate::retry::parse_retry_after;
use crate::signing::{SignedHeaders, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// Bytes of the response body kept in the attempt log: enough to tell a merchant why their
/// endpoint refused, too little to make the dispatcher a fetch oracle for any public host's
/// pages (the attempt log is shown to the merchant).
pub const EXCERPT_BYTES: usize = 256;

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptReport {
    pub status: Option<u16>,
    pub latency: Duration,
    /// At most [`EXCERPT_BYTES`] bytes of the start of the response body (lossy UTF-8, cut
    /// at a character boundary); the rest is never read.
    pub excerpt: Option<String>,
    /// Why there is no (complete) response: timeout, refused connection, guard refusal…
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    /// Set when the SSRF guard refused the URL: nothing was sent.
    pub refused: Option<Refused>,
}

/// Sends attempts with a timeout, never following redirects, never through a proxy, over
/// connections kept per checked destination ([`Clients`]).
#[derive(Debug, Clone)]
pub struct Sender {
    pub policy: DestinationPolicy,
    /// The kept clients; their request timeout is the attempt's.
    pub clients: Clients,
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
        let client = match self.clients.for_destination(&destination) {
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
                    error: Some(describe(&error, self.clients.timeout())),
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
                        describe(&e, self.clients.timeout())
                    ));
                    break;
                }
            }
        }
        AttemptReport {
            status: Some(status),
            latency: started.elapsed(),
            excerpt: excerpt_of(&excerpt),
            error,
            retry_after,
            refused: None,
        }
    }
}

/// At most [`EXCERPT_BYTES`] bytes of text from the start of `body`: lossy UTF-8 (a
/// replacement character is three bytes), then cut back to a character boundary.
pub fn excerpt_of(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(EXCERPT_BYTES)];
    let mut text = String::from_utf8_lossy(head).into_owned();
    if text.len() > EXCERPT_BYTES {
        let mut end = EXCERPT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    (!text.is_empty()).then_some(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excerpt_is_short_whatever_the_body() {
        assert_eq!(excerpt_of(b""), None);
        assert_eq!(excerpt_of(b"nope").as_deref(), Some("nope"));
        // A public page of 4 KiB: only its first 256 bytes are kept.
        let page = "<html>".repeat(700);
        let kept = excerpt_of(page.as_bytes()).unwrap_or_default();
        assert_eq!(kept.len(), EXCERPT_BYTES);
        assert!(page.starts_with(&kept));
        // Multi-byte characters and invalid bytes never push it past the bound.
        let wide = "\u{20ac}".repeat(200);
        let kept = excerpt_of(wide.as_bytes()).unwrap_or_default();
        assert!(kept.len() <= EXCERPT_BYTES && kept.chars().all(|c| c == '\u{20ac}'));
        let invalid = vec![0xff_u8; 1000];
        let kept = excerpt_of(&invalid).unwrap_or_default();
        assert!(
            !kept.is_empty() && kept.len() <= EXCERPT_BYTES,
            "{}",
            kept.len()
        );
    }
}
