//! Which URLs paygate accepts as webhook destinations (registered endpoints and a
//! transaction's `callback_url`).
//!
//! The decision is not made here: it is [`paygate_core::destination::check_destination`],
//! the SSRF guard the callback dispatcher applies before every delivery, with the same
//! policy (`DestinationPolicy::from_config(&config.destinations)`). So the API never accepts a
//! URL the dispatcher would refuse. The guard resolves the host and refuses it if any
//! address is loopback, private, link-local, cloud metadata and so on (loopback only when
//! `allow_loopback`), requires `https` (unless `allow_http`) and refuses credentials. It
//! never connects to the destination.
//!
//! This module only bounds the input (at most [`MAX_URL_LEN`] characters, before any lookup)
//! and turns the guard's verdict into a 400 naming the field.

use paygate_core::destination::{
    check_destination, CheckedDestination, DestinationPolicy, Refused,
};

use crate::error::HttpError;

pub const MAX_URL_LEN: usize = 2048;

/// Checks a destination URL given in request field `field`; the error is a 400 naming it,
/// with the guard's message (`url_unresolvable` when the host could not be resolved,
/// `url_invalid` for every other refusal).
pub async fn check_url(
    raw: &str,
    policy: DestinationPolicy,
    field: &str,
) -> Result<CheckedDestination, HttpError> {
    if raw.chars().count() > MAX_URL_LEN {
        return Err(too_long(field));
    }
    let checked = check_destination(raw, policy)
        .await
        .map_err(|refused| refusal(&refused, field))?;
    // What is stored is the URL as the guard normalised it, percent-encoded, which can be up to
    // three times what was sent: the bound holds for it too, so a stored URL is always one
    // the API would accept again (found by the `api_bodies` fuzz target).
    if checked.url.as_str().chars().count() > MAX_URL_LEN {
        return Err(too_long(field));
    }
    Ok(checked)
}

fn too_long(field: &str) -> HttpError {
    HttpError::invalid_param(
        "url_invalid",
        field,
        format!("{field} must be at most {MAX_URL_LEN} characters, percent-encoded"),
    )
}

fn refusal(refused: &Refused, field: &str) -> HttpError {
    let code = match refused {
        Refused::Unresolvable { .. } => "url_unresolvable",
        _ => "url_invalid",
    };
    HttpError::invalid_param(code, field, format!("{field} refused: {refused}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn verdict(url: &str, policy: DestinationPolicy) -> Result<(), (String, String)> {
        check_url(url, policy, "url")
            .await
            .map(|_| ())
            .map_err(|e| (e.code.to_owned(), e.param.unwrap_or_default()))
    }

    #[tokio::test]
    async fn the_guard_decides_and_the_field_is_named() {
        let strict = DestinationPolicy::STRICT;
        let dev = DestinationPolicy {
            allow_loopback: true,
            allow_http: true,
            ..DestinationPolicy::STRICT
        };
        // IP literals: no lookup, nothing sent anywhere.
        assert!(verdict("https://8.8.8.8/hooks", strict).await.is_ok());
        assert!(verdict("http://127.0.0.1:9000/hook", dev).await.is_ok());
        for url in [
            "http://127.0.0.1:9000/hook",
            "https://127.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest",
            "https://[::1]/",
            "https://user:pw@8.8.8.8/",
            "ftp://8.8.8.8/",
            "not a url",
            "http://localhost:8080/hook",
        ] {
            assert_eq!(
                verdict(url, strict).await,
                Err(("url_invalid".to_owned(), "url".to_owned())),
                "{url}"
            );
        }
        assert!(verdict("https://10.0.0.1/hook", dev).await.is_err());
        let long = format!("https://8.8.8.8/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(
            verdict(&long, strict).await,
            Err(("url_invalid".to_owned(), "url".to_owned()))
        );
    }

    /// The bound holds for the URL as stored: one that fits as sent but not once
    /// percent-encoded is refused, and one that fits both ways is accepted as normalised.
    #[tokio::test]
    async fn the_bound_holds_for_the_url_as_stored() {
        let strict = DestinationPolicy::STRICT;
        // 700 braces: 716 characters as sent, 2,116 once each is `%7B`.
        let grows = format!("https://8.8.8.8/{}", "{".repeat(700));
        assert!(grows.chars().count() <= MAX_URL_LEN);
        assert_eq!(
            verdict(&grows, strict).await,
            Err(("url_invalid".to_owned(), "url".to_owned()))
        );
        let fits = format!("https://8.8.8.8/{}", "{".repeat(600));
        let checked = check_url(&fits, strict, "url").await;
        let stored = checked.map(|c| c.url.to_string()).unwrap_or_default();
        assert_eq!(stored.chars().count(), "https://8.8.8.8/".len() + 3 * 600);
        assert!(
            check_url(&stored, strict, "url").await.is_ok(),
            "stored URL accepted again"
        );
    }

    #[test]
    fn a_failed_lookup_says_so() {
        let error = refusal(
            &Refused::Unresolvable {
                host: "nowhere.invalid".to_owned(),
                reason: "no addresses".to_owned(),
            },
            "callback_url",
        );
        assert_eq!(error.code, "url_unresolvable");
        assert_eq!(error.param.as_deref(), Some("callback_url"));
        assert!(
            error.message.contains("could not be resolved"),
            "{}",
            error.message
        );
    }
}
