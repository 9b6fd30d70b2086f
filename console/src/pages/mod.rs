//! One module per page (or family of pages); each handler reads through
//! `paygate_core::db`, renders with maud inside [`crate::layout::Page`], and answers a
//! form with a redirect back to the page (post/redirect/get) carrying a flash message.

pub mod api_keys;
pub mod balance;
pub mod dashboard;
pub mod login;
pub mod ops;
pub mod payment;
pub mod transactions;
pub mod webhooks;

use axum::response::Redirect;
use serde::Deserialize;

/// The query of a one-merchant page: the operator's choice of merchant, and a flash code.
#[derive(Debug, Default, Deserialize)]
pub struct Shown {
    #[serde(default)]
    pub merchant: Option<String>,
    #[serde(default)]
    pub flash: Option<String>,
}

/// A one-merchant action's form: operators name the merchant (a hidden field); a merchant
/// user's own is used whatever it says.
#[derive(Debug, Default, Deserialize)]
pub struct MerchantForm {
    #[serde(default)]
    pub merchant: Option<String>,
}

/// What just happened, told on the page a form redirects back to. Only these fixed
/// sentences can be shown: a link cannot put words of its own on a console page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flash {
    Redelivered,
    RedeliveryLimited,
    KeyRevoked,
    EndpointEnabled,
    EndpointDisabled,
    Resolved,
    Reviewed,
    NothingChanged,
}

const FLASHES: [(Flash, &str, &str); 8] = [
    (
        Flash::Redelivered,
        "redelivered",
        "A new delivery of the event is scheduled.",
    ),
    (
        Flash::RedeliveryLimited,
        "redelivery-limited",
        "This event was redelivered too often in the last hour; try later.",
    ),
    (
        Flash::KeyRevoked,
        "key-revoked",
        "The key is revoked: it no longer authenticates.",
    ),
    (
        Flash::EndpointEnabled,
        "endpoint-enabled",
        "The endpoint is enabled: new events reach it.",
    ),
    (
        Flash::EndpointDisabled,
        "endpoint-disabled",
        "The endpoint is disabled: it receives nothing.",
    ),
    (
        Flash::Resolved,
        "resolved",
        "The payment is resolved and the merchant is told.",
    ),
    (
        Flash::Reviewed,
        "reviewed",
        "The callback is marked reviewed.",
    ),
    (
        Flash::NothingChanged,
        "unchanged",
        "Nothing changed: it was already so, or it changed meanwhile.",
    ),
];

impl Flash {
    pub fn code(self) -> &'static str {
        FLASHES
            .iter()
            .find(|(f, _, _)| *f == self)
            .map_or("", |(_, code, _)| code)
    }

    /// The sentence for a `?flash=` code, if it is one of ours.
    pub fn message_for(code: Option<&str>) -> Option<&'static str> {
        let code = code?;
        FLASHES
            .iter()
            .find(|(_, c, _)| *c == code)
            .map(|(_, _, m)| *m)
    }
}

/// Redirect to `path` (a console path of ours) with a flash.
pub fn back_with(path: &str, flash: Flash) -> Redirect {
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}flash={}", flash.code()))
}

/// The hidden field naming the merchant an operator acts for (a merchant user's forms need
/// none: its own merchant is used whatever a form says).
pub fn merchant_field(
    viewer: &crate::viewer::Viewer,
    merchant: paygate_core::domain::MerchantId,
) -> maud::Markup {
    maud::html! { @if viewer.is_operator() { input type="hidden" name="merchant" value=(merchant); } }
}

/// For an operator on a one-merchant page without `?merchant=`: the merchants to choose
/// from, each linking to `path` for it.
pub async fn merchant_picker(
    state: &crate::ConsoleState,
    path: &str,
) -> Result<maud::Markup, crate::error::PageError> {
    let merchants = paygate_core::db::merchants::list(&state.pool, 500).await?;
    Ok(maud::html! {
        p { "Choose a merchant." }
        table {
            thead { tr { th { "Merchant" } th { "Id" } } }
            tbody {
                @for m in &merchants {
                    tr data-testid="merchant-row" {
                        td { a href={(path) "?merchant=" (m.id)} { (m.name) } }
                        td.mono { (m.id) }
                    }
                }
            }
        }
    })
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
