//! HTTP plumbing every connector shares: the client, and the rules that turn transport
//! failures and status codes into [`GatewayError`] classes.
//!
//! The classification is the money-safety core of a connector; the rule and its table are
//! on [`GatewayError`]. Here:
//! - nothing was sent (connect refused, DNS, TLS, connect timeout) → `Retryable`;
//! - sent, no complete answer (read timeout, connection dropped) → `Ambiguous`;
//! - `408` and `429` (with its `Retry-After`) → `Retryable`: both say the request was not
//!   acted on;
//! - **every `5xx` → `Ambiguous`**: a load balancer's `502` or `503` in front of a provider
//!   that committed looks exactly like a provider that did not;
//! - "duplicate reference" (`409` or the provider's code) → `Ambiguous` ([`refusal`]);
//! - other `4xx` → `Permanent` (the connector parses the provider's code and message);
//! - a `2xx` we cannot read → `Ambiguous` (the provider acted on *something*).

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Response, StatusCode};

use paygate_core::domain::GatewayName;
use url::Url;

use crate::registry::{GatewaySettings, RegistryError};
use crate::secret::Secret;
use crate::GatewayError;

/// Provider responses larger than this are not read (a misbehaving provider cannot make
/// us buffer unbounded memory).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A client with the gateway's timeouts and no redirects (a redirect from a payment API is
/// a misconfiguration, and following one could resend a payment elsewhere).
pub fn client(settings: &GatewaySettings) -> Result<reqwest::Client, RegistryError> {
    reqwest::Client::builder()
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| settings.field_error("base_url", format!("cannot build HTTP client: {e}")))
}

/// What every connector keeps from its `[gateways.<name>]` settings: its name, where the
/// provider is, the HTTP client, and the secrets and limits requests and callbacks use.
pub struct Connection {
    pub name: GatewayName,
    pub base_url: Url,
    pub client: reqwest::Client,
    pub secret_key: Secret,
    pub webhook_secret: Secret,
    pub callback_tolerance: Duration,
    pub max_callback_bytes: usize,
}

impl Connection {
    /// Takes the shared settings, refusing keys no connector reads.
    pub fn new(settings: GatewaySettings) -> Result<Self, RegistryError> {
        settings.deny_extra()?;
        Ok(Self {
            client: client(&settings)?,
            name: settings.name,
            base_url: settings.base_url,
            secret_key: settings.secret_key,
            webhook_secret: settings.webhook_secret,
            callback_tolerance: settings.callback_tolerance,
            max_callback_bytes: settings.max_callback_bytes,
        })
    }

    /// `base_url` joined with a provider path.
    pub fn url(&self, path: &str) -> Result<Url, GatewayError> {
        self.base_url
            .join(path)
            .map_err(|e| GatewayError::Permanent {
                code: "invalid_request".into(),
                reason: format!("bad URL: {e}"),
            })
    }
}

/// Classifies a failure of `send()` (no response head was received).
pub fn classify_send_error(error: &reqwest::Error) -> GatewayError {
    if error.is_connect() {
        GatewayError::Retryable {
            reason: format!("cannot connect: {}", source_chain(error)),
            retry_after: None,
        }
    } else if error.is_builder() {
        GatewayError::Permanent {
            code: "invalid_request".into(),
            reason: source_chain(error),
        }
    } else if error.is_timeout() {
        GatewayError::Ambiguous {
            reason: "request sent but no response before the timeout".into(),
        }
    } else {
        GatewayError::Ambiguous {
            reason: format!(
                "request sent but the exchange failed: {}",
                source_chain(error)
            ),
        }
    }
}

/// The error for a status that means "not executed, try again" or "unknown", or `None`
/// for `2xx` and the `4xx` statuses the connector must interpret itself ([`refusal`]).
pub fn classify_status(status: StatusCode, headers: &HeaderMap) -> Option<GatewayError> {
    let reason = |what: &str| format!("provider answered {status}: {what}");
    match status.as_u16() {
        200..=299 => None,
        // RFC 9110 §15.5.9: the server did not receive a complete request.
        408 => Some(GatewayError::Retryable {
            reason: reason("request timeout"),
            retry_after: retry_after(headers),
        }),
        // RFC 6585 §4: refused for rate before being acted on.
        429 => Some(GatewayError::Retryable {
            reason: reason("rate limited"),
            retry_after: retry_after(headers),
        }),
        500..=599 => Some(GatewayError::Ambiguous {
            reason: reason("server error; the provider may have executed"),
        }),
        400..=499 => None,
        _ => Some(GatewayError::Permanent {
            code: format!("http_{}", status.as_u16()),
            reason: reason("unexpected status"),
        }),
    }
}

/// Provider codes meaning "I already hold this reference". The payment may have executed
/// under it (this is typically the answer to a resubmit after an ambiguous attempt), so it
/// is never a decline: a status query tells what became of it.
pub const DUPLICATE_REFERENCE_CODES: &[&str] = &["duplicate_reference", "duplicate_transaction"];

/// How [`refusal`] opens the reason of a duplicate-reference refusal, so
/// [`GatewayError::is_duplicate_reference`] can tell it from other ambiguous failures.
pub const DUPLICATE_REFERENCE_REASON: &str = "provider already holds this reference";

/// Longest provider text kept in a [`GatewayError`] reason (it becomes the transaction's
/// failure message and the merchant sees it): a provider may answer with up to
/// [`MAX_RESPONSE_BYTES`] of text.
pub const MAX_PROVIDER_TEXT_CHARS: usize = 500;
/// Longest provider code kept as a failure code.
pub const MAX_PROVIDER_CODE_CHARS: usize = 64;

/// A provider's own text (a refusal message), cut to [`MAX_PROVIDER_TEXT_CHARS`] characters.
pub fn provider_text(text: String) -> String {
    cut(text, MAX_PROVIDER_TEXT_CHARS)
}

/// `text` cut to `max` characters, with `…` when something was cut.
fn cut(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// A provider's code, when it is one: blank, over-long or control-character codes are not
/// (found by fuzzing: Stripe's `"code": ""` became an empty failure code).
pub fn provider_code(code: Option<String>) -> Option<String> {
    code.map(|c| c.trim().to_owned()).filter(|c| {
        !c.is_empty()
            && c.chars().count() <= MAX_PROVIDER_CODE_CHARS
            && !c.chars().any(char::is_control)
    })
}

/// A provider's `4xx` refusal with its code, if it gave one: `Ambiguous` for a duplicate
/// reference (`409`, or a code in [`DUPLICATE_REFERENCE_CODES`]), else `Permanent`. The
/// provider's text is bounded ([`provider_text`]) and a code that is not one falls back to
/// `http_<status>`.
pub fn refusal(status: StatusCode, code: Option<String>, reason: String) -> GatewayError {
    let (code, reason) = (provider_code(code), provider_text(reason));
    let duplicate = status == StatusCode::CONFLICT
        || code
            .as_deref()
            .is_some_and(|c| DUPLICATE_REFERENCE_CODES.contains(&c));
    if duplicate {
        return GatewayError::Ambiguous {
            reason: format!("{DUPLICATE_REFERENCE_REASON} ({status}): {reason}"),
        };
    }
    GatewayError::Permanent {
        code: code.unwrap_or_else(|| format!("http_{}", status.as_u16())),
        reason,
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Reads a response body up to [`MAX_RESPONSE_BYTES`]. A failure mid-body is `Ambiguous`
/// for a success status (the provider acted) and `Retryable` for a retryable one.
pub async fn read_body(
    mut response: Response,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), GatewayError> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(GatewayError::Ambiguous {
                        reason: format!("{status} response larger than {MAX_RESPONSE_BYTES} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((status, headers, body)),
            Err(error) => {
                return Err(match classify_status(status, &headers) {
                    Some(retryable @ GatewayError::Retryable { .. }) => retryable,
                    _ => GatewayError::Ambiguous {
                        reason: format!("{status} response cut off: {}", source_chain(&error)),
                    },
                })
            }
        }
    }
}

/// Sends and reads, classifying transport failures.
pub async fn exchange(
    request: reqwest::RequestBuilder,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), GatewayError> {
    let response = request.send().await.map_err(|e| classify_send_error(&e))?;
    read_body(response).await
}

/// Where a provider sends the customer ([`crate::SubmitStatus::RequiresAction`]), checked:
/// merchants redirect to it or render it as a link, so only an `http(s)` URL with a host is
/// passed on, never `javascript:` or `data:` (found by fuzz/, target `responses`: Stripe's
/// `redirect_to_url.url` was passed on unread). Anything else is `Ambiguous`: the provider
/// accepted the payment and the customer cannot be sent on.
pub fn redirect_url(text: &str) -> Result<String, GatewayError> {
    let url = Url::parse(text).map_err(|e| GatewayError::Ambiguous {
        reason: format!("unusable redirect URL: {e}"),
    })?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(GatewayError::Ambiguous {
            reason: format!(
                "redirect URL refused: scheme {:?} or no host",
                url.scheme().chars().take(20).collect::<String>()
            ),
        });
    }
    Ok(url.into())
}

/// A short, quoted excerpt of a body for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    // Escaping can make 200 bytes of control characters 1,200 characters (found by fuzz/).
    cut(format!("{text:?}"), 300)
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn a_refusal_keeps_a_bounded_text_and_a_real_code() {
        // Found by fuzz/ (target `responses`): a provider's refusal text went whole (up to
        // the 1 MiB answer limit) into the failure reason, and `"code": ""` into the code.
        let huge = "é".repeat(1 << 20);
        let GatewayError::Permanent { code, reason } =
            refusal(StatusCode::BAD_REQUEST, Some(String::new()), huge)
        else {
            panic!("a 400 refusal is permanent");
        };
        assert_eq!(code, "http_400");
        assert_eq!(reason.chars().count(), MAX_PROVIDER_TEXT_CHARS + 1);
        assert!(reason.ends_with('…'));
        for not_a_code in ["  ", "a\u{0}b", &"x".repeat(MAX_PROVIDER_CODE_CHARS + 1)] {
            let refused = refusal(
                StatusCode::PAYMENT_REQUIRED,
                Some(not_a_code.into()),
                "no".into(),
            );
            assert!(
                matches!(&refused, GatewayError::Permanent { code, .. } if code == "http_402"),
                "{refused:?}"
            );
        }
        let declined = refusal(
            StatusCode::PAYMENT_REQUIRED,
            Some(" card_declined ".into()),
            "no".into(),
        );
        assert!(
            matches!(&declined, GatewayError::Permanent { code, reason } if code == "card_declined" && reason == "no")
        );
        let escaped = excerpt(&[0x12; 4096]);
        assert!(escaped.chars().count() <= 301, "{escaped}");
        let duplicate = refusal(
            StatusCode::BAD_REQUEST,
            Some("duplicate_reference".into()),
            "x".repeat(900),
        );
        assert!(duplicate.is_duplicate_reference());
        assert!(
            matches!(&duplicate, GatewayError::Ambiguous { reason } if reason.chars().count() < 700)
        );
    }

    #[test]
    fn only_web_addresses_are_redirects() {
        // Found by fuzz/ (target `responses`): Stripe's redirect URL was passed to the
        // merchant unread, so an answer naming `javascript:` or garbage reached the API.
        for refused in [
            "javascript:alert(document.cookie)",
            "data:text/html,<script>alert(1)</script>",
            "file:///etc/passwd",
            "https//missing-colon",
            "",
        ] {
            assert!(
                matches!(redirect_url(refused), Err(GatewayError::Ambiguous { .. })),
                "{refused}"
            );
        }
        assert_eq!(
            redirect_url("https://hooks.stripe.com/redirect/authenticate/src_1?client_secret=x"),
            Ok("https://hooks.stripe.com/redirect/authenticate/src_1?client_secret=x".to_owned())
        );
        // The sandbox's hosted step is plain http on loopback.
        assert!(redirect_url("http://127.0.0.1:8090/hosted/txn_1").is_ok());
    }

    #[test]
    fn statuses_map_to_the_documented_classes() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let class = |code: u16, h: &HeaderMap| {
            StatusCode::from_u16(code)
                .ok()
                .and_then(|s| classify_status(s, h))
        };
        assert_eq!(
            class(429, &headers),
            Some(GatewayError::Retryable {
                reason: "provider answered 429 Too Many Requests: rate limited".into(),
                retry_after: Some(Duration::from_secs(7))
            })
        );
        assert!(matches!(
            class(408, &HeaderMap::new()),
            Some(GatewayError::Retryable { .. })
        ));
        for code in [500, 501, 502, 503, 504, 599] {
            assert!(
                matches!(class(code, &headers), Some(GatewayError::Ambiguous { .. })),
                "{code} must be ambiguous"
            );
        }
        assert!(matches!(
            class(302, &HeaderMap::new()),
            Some(GatewayError::Permanent { .. })
        ));
        assert_eq!(class(200, &HeaderMap::new()), None);
        assert_eq!(class(402, &HeaderMap::new()), None);
    }

    #[test]
    fn a_duplicate_reference_is_ambiguous_never_a_decline() {
        let refused = |status: u16, code: Option<&str>| {
            refusal(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                code.map(str::to_owned),
                "x".into(),
            )
        };
        assert!(matches!(refused(409, None), GatewayError::Ambiguous { .. }));
        assert!(matches!(
            refused(400, Some("duplicate_reference")),
            GatewayError::Ambiguous { .. }
        ));
        // Told apart from other ambiguous failures, so the processor can keep the fact.
        assert!(refused(409, None).is_duplicate_reference());
        assert!(refused(422, Some("duplicate_transaction")).is_duplicate_reference());
        assert!(!GatewayError::Ambiguous {
            reason: "provider answered 502".into()
        }
        .is_duplicate_reference());
        assert!(!refused(402, Some("declined")).is_duplicate_reference());
        assert_eq!(
            refused(402, Some("declined")),
            GatewayError::Permanent {
                code: "declined".into(),
                reason: "x".into()
            }
        );
        assert!(matches!(
            refused(400, None),
            GatewayError::Permanent { ref code, .. } if code == "http_400"
        ));
    }

    #[test]
    fn retry_after_accepts_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
