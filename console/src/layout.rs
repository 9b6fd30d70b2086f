//! The page shell every signed-in page shares: navigation by role, who is signed in, the
//! sign-out form, an optional flash message; and the vendored stylesheet.

use axum::http::header;
use axum::response::IntoResponse;
use maud::{html, Markup, DOCTYPE};

use crate::viewer::{CsrfToken, Viewer};

const STYLESHEET: &str = include_str!("../assets/console.css");

/// `GET /console/assets/console.css`: the one stylesheet, compiled into the binary.
pub async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
}

/// What a page puts in the shell.
pub struct Page<'a> {
    pub title: &'a str,
    pub viewer: &'a Viewer,
    pub csrf: &'a CsrfToken,
    /// A one-line message about what just happened (after a form).
    pub flash: Option<&'a str>,
}

const MERCHANT_LINKS: [(&str, &str); 5] = [
    ("/console", "Dashboard"),
    ("/console/transactions", "Transactions"),
    ("/console/balance", "Balance"),
    ("/console/webhooks", "Webhooks"),
    ("/console/api-keys", "API keys"),
];

const OPERATOR_LINKS: [(&str, &str); 6] = [
    ("/console", "Dashboard"),
    ("/console/transactions", "Transactions"),
    ("/console/ops/review", "Review"),
    ("/console/ops/unresolved", "Unknown outcome"),
    ("/console/ops/gateways", "Gateways"),
    ("/console/ops/dlq", "Dead letters"),
];

impl Page<'_> {
    pub fn render(&self, content: Markup) -> Markup {
        let links: &[(&str, &str)] = if self.viewer.is_operator() {
            &OPERATOR_LINKS
        } else {
            &MERCHANT_LINKS
        };
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · paygate console" }
                    link rel="stylesheet" href="/console/assets/console.css";
                }
                body {
                    header.top {
                        span.brand { "paygate" }
                        nav { @for (href, label) in links { a href=(href) { (label) } } }
                        span data-testid="whoami" {
                            (self.viewer.user.email) " · " (self.viewer.user.role.as_str())
                        }
                        form #logout method="post" action="/console/logout" {
                            (hidden_csrf(self.csrf))
                            button type="submit" { "Sign out" }
                        }
                    }
                    main {
                        h1 { (self.title) }
                        @if let Some(flash) = self.flash {
                            p.flash data-testid="flash" { (flash) }
                        }
                        (content)
                    }
                }
            }
        }
    }
}

/// The hidden field every form carries.
pub fn hidden_csrf(csrf: &CsrfToken) -> Markup {
    html! { input type="hidden" name=(crate::csrf::FIELD) value=(csrf.token); }
}

/// A one-button form posting to `action` (redeliver, revoke, enable…).
pub fn action_button(csrf: &CsrfToken, action: &str, label: &str, testid: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) data-testid=(testid) {
            (hidden_csrf(csrf))
            button type="submit" { (label) }
        }
    }
}

/// `2026-12-03 16:42:11 UTC`.
pub fn when(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Minor units of `currency` in decimal form (`-12.50 USD`), for balances and entries that
/// may be zero or negative (a [`paygate_core::domain::Money`] is a positive amount).
pub fn money(units: i64, currency: &str) -> String {
    use paygate_core::domain::{Currency, MinorUnits};
    match Currency::parse(currency) {
        Ok(currency) => MinorUnits(units, currency).to_string(),
        Err(_) => format!("{units} {currency}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn money_is_shown_in_the_currency_s_decimals_with_its_sign() {
        assert_eq!(super::money(1050, "USD"), "10.50 USD");
        assert_eq!(super::money(-5, "USD"), "-0.05 USD");
        assert_eq!(super::money(0, "EUR"), "0.00 EUR");
        assert_eq!(super::money(1000, "JPY"), "1000 JPY");
        assert_eq!(super::money(i64::MIN, "USD"), "-92233720368547758.08 USD");
    }
}
