//! The web console over real HTTP (issue 19): sign-in and its cookies, sessions that are
//! forged, expired or of a disabled user, CSRF, roles, another merchant's data, and the
//! actions (API keys, resolution). The browser tests (console-tests/) drive the same pages
//! in Chromium.

use std::collections::BTreeMap;

use paygate_console::session::SessionKeys;
use paygate_core::db;
use paygate_core::db::console_users::Role;
use paygate_core::domain::TransactionId;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::helpers::{deposit_body, spawn_app, TestApp, TestMerchant, TestResult};

const PASSWORD: &str = "a long enough password";

/// A browser without JavaScript: keeps cookies (whatever their `Secure` flag: the test
/// server is plain HTTP) and follows no redirect, so each answer can be checked.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(app: &TestApp) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            base: app.address.clone(),
            cookies: BTreeMap::new(),
        })
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let text = value.to_str().unwrap_or_default();
            let pair = text.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || text.contains("Max-Age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, String, Option<String>)> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .send()
            .await?;
        self.keep_cookies(&response);
        let status = response.status();
        let location = location(&response);
        Ok((status, response.text().await?, location))
    }

    /// Posts a form; `csrf` is added unless the fields carry their own.
    async fn post(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, String, Option<String>)> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookie_header())
            .form(fields)
            .send()
            .await?;
        self.keep_cookies(&response);
        let status = response.status();
        let location = location(&response);
        Ok((status, response.text().await?, location))
    }

    /// The CSRF token forms carry for this browser (read off the sign-in page or any page).
    async fn csrf(&mut self, page: &str) -> anyhow::Result<String> {
        let (_, html, _) = self.get(page).await?;
        csrf_in(&html).ok_or_else(|| anyhow::anyhow!("no csrf field on {page}: {html}"))
    }

    async fn sign_in(
        &mut self,
        email: &str,
        password: &str,
    ) -> anyhow::Result<(StatusCode, String, Option<String>)> {
        let csrf = self.csrf("/console/login").await?;
        self.post(
            "/console/login",
            &[("csrf", &csrf), ("email", email), ("password", password)],
        )
        .await
    }

    /// The sign-in's answer itself (its headers), its cookies not yet kept.
    async fn sign_in_response(&mut self, email: &str, password: &str) -> anyhow::Result<Response> {
        let csrf = self.csrf("/console/login").await?;
        Ok(self
            .client
            .post(format!("{}/console/login", self.base))
            .header(COOKIE, self.cookie_header())
            .form(&[
                ("csrf", csrf.as_str()),
                ("email", email),
                ("password", password),
            ])
            .send()
            .await?)
    }
}

fn location(response: &Response) -> Option<String> {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The value of the hidden field `name` on a page.
fn field_in(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    html.get(start..)?.split('"').next().map(str::to_owned)
}

fn csrf_in(html: &str) -> Option<String> {
    field_in(html, "csrf")
}

async fn user(app: &TestApp, email: &str, role: Role) -> anyhow::Result<()> {
    paygate_console::users::create(&app.pool, email, PASSWORD, role).await?;
    Ok(())
}

async fn signed_in(app: &TestApp, email: &str, role: Role) -> anyhow::Result<Browser> {
    user(app, email, role).await?;
    let mut browser = Browser::new(app)?;
    let (status, body, location) = browser.sign_in(email, PASSWORD).await?;
    anyhow::ensure!(
        status == StatusCode::SEE_OTHER && location.as_deref() == Some("/console"),
        "sign-in of {email}: {status} {location:?} {body}"
    );
    Ok(browser)
}

async fn deposit(
    app: &TestApp,
    merchant: &TestMerchant,
    customer: &str,
) -> anyhow::Result<TransactionId> {
    let mut body = deposit_body();
    body["customer"] = Value::from(customer);
    let created: Value = app
        .post("/v1/deposits", &merchant.key, &body)
        .send()
        .await?
        .json()
        .await?;
    Ok(TransactionId::parse(
        created["id"].as_str().unwrap_or_default(),
    )?)
}

#[tokio::test]
async fn signing_in_sets_strict_http_only_secure_cookies_and_a_wrong_password_is_refused(
) -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    user(&app, "shop@example.com", Role::Merchant(merchant.id)).await?;
    let mut browser = Browser::new(&app)?;

    let (status, body, _) = browser
        .sign_in("shop@example.com", "not the password at all")
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("do not match an account"), "{body}");
    let (status, unknown, _) = browser.sign_in("nobody@example.com", PASSWORD).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        unknown.contains("do not match an account"),
        "the same answer for an unknown email"
    );
    assert!(!browser.cookies.contains_key("paygate_session"));

    let response = browser
        .sign_in_response("SHOP@example.com", PASSWORD)
        .await?;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let session = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("paygate_session="))
        .map(str::to_owned)
        .unwrap_or_default();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/console",
        "Max-Age=900",
    ] {
        assert!(session.contains(flag), "{flag} missing: {session}");
    }
    browser.keep_cookies(&response);
    let (status, page, _) = browser.get("/console/transactions").await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("shop@example.com · merchant"), "{page}");
    Ok(())
}

#[tokio::test]
async fn forged_expired_and_disabled_sessions_go_back_to_sign_in() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let mut browser = signed_in(&app, "shop@example.com", Role::Merchant(merchant.id)).await?;
    let (status, _, _) = browser.get("/console/transactions").await?;
    assert_eq!(status, StatusCode::OK);
    let genuine = browser
        .cookies
        .get("paygate_session")
        .cloned()
        .unwrap_or_default();
    let user = db::console_users::credentials(&app.pool, "shop@example.com")
        .await?
        .map(|c| c.user)
        .ok_or_else(|| anyhow::anyhow!("no user"))?;

    let keyring = app.keyring()?;
    let right_key = SessionKeys::new(
        &keyring.derive_key("console-session"),
        std::time::Duration::from_secs(900),
    );
    let wrong_key = SessionKeys::new(&[9; 32], std::time::Duration::from_secs(900));
    let expired = right_key.issue(&user, chrono::Utc::now() - chrono::Duration::hours(1))?;
    let forged = wrong_key.issue(&user, chrono::Utc::now())?;
    // The genuine token with its claims altered (an operator's role) and the signature kept.
    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    let altered = {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(engine.decode(parts.get(1).cloned().unwrap_or_default())?)?;
        let claims = claims.replace("\"merchant\"", "\"operator\"");
        parts[1] = engine.encode(claims);
        parts.join(".")
    };
    for (what, token) in [
        ("expired", expired),
        ("forged", forged),
        ("altered", altered),
        ("garbage", "x.y.z".to_owned()),
    ] {
        browser.cookies.insert("paygate_session".into(), token);
        let (status, _, location) = browser.get("/console/transactions").await?;
        assert_eq!(
            (status, location.as_deref()),
            (StatusCode::SEE_OTHER, Some("/console/login")),
            "{what} session"
        );
    }
    browser.cookies.insert("paygate_session".into(), genuine);
    assert_eq!(
        browser.get("/console/transactions").await?.0,
        StatusCode::OK
    );
    db::console_users::disable(&app.pool, user.id).await?;
    let (status, _, location) = browser.get("/console/transactions").await?;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/login"))
    );
    Ok(())
}

#[tokio::test]
async fn a_merchant_user_sees_only_its_own_payments_and_no_operator_page() -> TestResult {
    let app = spawn_app().await?;
    let mine = app.merchant().await?;
    let theirs = app.merchant().await?;
    let own = deposit(&app, &mine, "cust_mine").await?;
    let other = deposit(&app, &theirs, "cust_theirs").await?;
    let mut browser = signed_in(&app, "shop@example.com", Role::Merchant(mine.id)).await?;

    let (_, list, _) = browser.get("/console/transactions").await?;
    assert!(list.contains(&own.to_string()), "{list}");
    assert!(
        !list.contains(&other.to_string()),
        "another merchant's payment listed"
    );
    let (status, _, _) = browser
        .get(&format!("/console/transactions/{other}"))
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = browser
        .get(&format!("/console/transactions?q={other}"))
        .await?;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "an id search goes to the payment…"
    );
    let (status, page, _) = browser.get(&format!("/console/transactions/{own}")).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("data-kind=\"created\""), "{page}");
    // Asking for another merchant's data by parameter changes nothing for a merchant user.
    let (_, list, _) = browser
        .get(&format!("/console/transactions?merchant={}", theirs.id))
        .await?;
    assert!(!list.contains(&other.to_string()));
    for path in [
        "/console/ops/unresolved",
        "/console/ops/review",
        "/console/ops/gateways",
        "/console/ops/dlq",
    ] {
        assert_eq!(browser.get(path).await?.0, StatusCode::FORBIDDEN, "{path}");
    }
    let csrf = browser.csrf("/console/transactions").await?;
    let (status, _, _) = browser
        .post(
            &format!("/console/ops/unresolved/{other}/resolve"),
            &[
                ("csrf", &csrf),
                ("verdict", "failed"),
                ("reason", "mine now"),
            ],
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another merchant's key cannot be revoked from here.
    let (status, _, _) = browser
        .post(
            &format!("/console/api-keys/{}/revoke", theirs.key_id),
            &[("csrf", &csrf)],
        )
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let live = app.get("/v1/transactions", &theirs.key).send().await?;
    assert_eq!(
        live.status(),
        StatusCode::OK,
        "the other merchant's key still works"
    );
    Ok(())
}

#[tokio::test]
async fn forms_without_their_csrf_token_are_refused_and_change_nothing() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let mut browser = signed_in(&app, "shop@example.com", Role::Merchant(merchant.id)).await?;
    let path = format!("/console/api-keys/{}/revoke", merchant.key_id);
    let other_browser_token = Browser::new(&app)?.csrf("/console/login").await?;
    for fields in [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", "00ff")],
        vec![("csrf", other_browser_token.as_str())],
    ] {
        let (status, body, _) = browser.post(&path, &fields).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{fields:?}: {body}");
    }
    let (status, _, _) = browser.post("/console/logout", &[]).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/v1/transactions", &merchant.key)
            .send()
            .await?
            .status(),
        StatusCode::OK,
        "the key is still live"
    );
    Ok(())
}

#[tokio::test]
async fn an_api_key_made_in_the_console_works_once_shown_and_stops_when_revoked() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let mut browser = signed_in(&app, "shop@example.com", Role::Merchant(merchant.id)).await?;
    let (_, form_page, _) = browser.get("/console/api-keys").await?;
    let csrf = csrf_in(&form_page).ok_or_else(|| anyhow::anyhow!("no csrf field"))?;
    let form = field_in(&form_page, "form").ok_or_else(|| anyhow::anyhow!("no form id"))?;
    let fields = [
        ("csrf", csrf.as_str()),
        ("form", form.as_str()),
        ("scopes", "read"),
        ("scopes", "payments:write"),
    ];
    let (status, page, _) = browser.post("/console/api-keys", &fields).await?;
    assert_eq!(status, StatusCode::OK, "{page}");
    let shown = page
        .split("data-testid=\"new-key\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_default()
        .to_owned();
    assert!(shown.starts_with("sk_"), "{page}");
    let (_, again, _) = browser.get("/console/api-keys").await?;
    assert!(!again.contains(&shown), "the key is shown once");
    let (status, reposted, _) = browser.post("/console/api-keys", &fields).await?;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a reload re-posts the form: {reposted}"
    );
    assert!(!reposted.contains("data-testid=\"new-key\""), "{reposted}");
    assert!(reposted.contains("already sent"), "{reposted}");
    let (status, stale, _) = browser
        .post("/console/api-keys", &[("csrf", &csrf), ("scopes", "read")])
        .await?;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a form without its id: {stale}"
    );
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE merchant_id = $1")
        .bind(merchant.id.as_uuid())
        .fetch_one(&app.pool)
        .await?;
    assert_eq!(
        keys, 2,
        "the merchant's first key and the one form's key, no more"
    );
    let created = app
        .post("/v1/deposits", &shown, &deposit_body())
        .send()
        .await?;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    let refunds_denied = app
        .post("/v1/withdrawals", &shown, &deposit_body())
        .send()
        .await?;
    assert_eq!(
        refunds_denied.status(),
        StatusCode::FORBIDDEN,
        "payouts:write was not ticked"
    );

    let key_id: String = sqlx::query_scalar(
        "SELECT 'key_' || replace(id::text, '-', '') FROM api_keys WHERE prefix = $1",
    )
    .bind(shown.get(..7).unwrap_or_default())
    .fetch_one(&app.pool)
    .await?;
    let (status, _, location) = browser
        .post(
            &format!("/console/api-keys/{key_id}/revoke"),
            &[("csrf", &csrf)],
        )
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.as_deref(),
        Some("/console/api-keys?flash=key-revoked")
    );
    let after = app
        .post("/v1/deposits", &shown, &deposit_body())
        .send()
        .await?;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let (_, page, _) = browser.get("/console/api-keys").await?;
    assert!(page.contains("data-testid=\"revoked\""), "{page}");
    Ok(())
}

#[tokio::test]
async fn an_operator_resolves_a_payment_of_unknown_outcome_and_its_merchant_sees_it() -> TestResult
{
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let id = deposit(&app, &merchant, "cust_unknown").await?;
    // Fixture: the processor is not running here, so the payment is put where an ambiguous
    // provider answer leaves it (the resolution itself is the code under test).
    sqlx::query("UPDATE transactions SET status = 'unresolved', routed_gateway = 'sandbox-json', attempts = 1, version = version + 1 WHERE id = $1")
        .bind(id.as_uuid())
        .execute(&app.pool)
        .await?;
    let mut operator = signed_in(&app, "ops@example.com", Role::Operator).await?;
    let (status, queue, _) = operator.get("/console/ops/unresolved").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(queue.contains(&format!("data-id=\"{id}\"")), "{queue}");
    let csrf = csrf_in(&queue).unwrap_or_default();
    let path = format!("/console/ops/unresolved/{id}/resolve");
    let (status, _, _) = operator
        .post(
            &path,
            &[("csrf", &csrf), ("verdict", "maybe"), ("reason", "x")],
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = operator
        .post(
            &path,
            &[("csrf", &csrf), ("verdict", "succeeded"), ("reason", "  ")],
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a reason is required");
    let (status, _, location) = operator
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("verdict", "succeeded"),
                ("reason", "provider dashboard: paid at 10:02"),
            ],
        )
        .await?;
    assert_eq!(
        (status, location.as_deref()),
        (
            StatusCode::SEE_OTHER,
            Some("/console/ops/unresolved?flash=resolved")
        )
    );
    let (actor, reason): (String, String) = sqlx::query_as(
        "SELECT actor, reason FROM transaction_resolutions WHERE transaction_id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&app.pool)
    .await?;
    assert_eq!(
        (actor.as_str(), reason.as_str()),
        ("ops@example.com", "provider dashboard: paid at 10:02")
    );
    let (status, _, location) = operator
        .post(
            &path,
            &[("csrf", &csrf), ("verdict", "failed"), ("reason", "twice")],
        )
        .await?;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location.as_deref(),
        Some("/console/ops/unresolved?flash=unchanged"),
        "a second resolution changes nothing"
    );

    let mut shop = signed_in(&app, "shop@example.com", Role::Merchant(merchant.id)).await?;
    let (_, page, _) = shop.get(&format!("/console/transactions/{id}")).await?;
    assert!(page.contains("status succeeded"), "{page}");
    assert!(page.contains("data-kind=\"resolution\""), "{page}");
    let api: Value = app
        .get(&format!("/v1/transactions/{id}"), &merchant.key)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(api["status"], "succeeded");
    Ok(())
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_account() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    user(&app, "shop@example.com", Role::Merchant(merchant.id)).await?;
    let mut browser = Browser::new(&app)?;
    for _ in 0..5 {
        assert_eq!(
            browser
                .sign_in("shop@example.com", "wrong password here")
                .await?
                .0,
            StatusCode::UNAUTHORIZED
        );
    }
    let response = browser
        .sign_in_response("shop@example.com", PASSWORD)
        .await?;
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password"
    );
    assert!(response.headers().get("retry-after").is_some());
    Ok(())
}

#[tokio::test]
async fn transactions_are_filtered_and_paged_and_bad_filters_are_explained() -> TestResult {
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(deposit(&app, &merchant, &format!("cust_{i}")).await?);
    }
    let mut browser = signed_in(&app, "shop@example.com", Role::Merchant(merchant.id)).await?;
    let (_, page, _) = browser.get("/console/transactions?q=cust_1").await?;
    assert_eq!(page.matches("data-testid=\"txn-row\"").count(), 1, "{page}");
    assert!(page.contains(&ids[1].to_string()));
    let (_, page, _) = browser
        .get("/console/transactions?status=succeeded")
        .await?;
    assert_eq!(page.matches("data-testid=\"txn-row\"").count(), 0);
    let (_, page, _) = browser
        .get("/console/transactions?status=pending&kind=deposit")
        .await?;
    assert_eq!(page.matches("data-testid=\"txn-row\"").count(), 3);
    let (_, page, _) = browser
        .get(&format!("/console/transactions?after={}", ids[1]))
        .await?;
    assert!(
        page.contains(&ids[0].to_string()) && !page.contains(&ids[2].to_string()),
        "{page}"
    );
    for bad in [
        "status=paid",
        "from=yesterday",
        "after=txn_nope",
        "kind=refund",
    ] {
        let (status, body, _) = browser.get(&format!("/console/transactions?{bad}")).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_pages_show_breakers_attempts_dead_letters_reviews_and_the_chart() -> TestResult {
    use paygate_core::bus::{Producer, Topic};
    use paygate_core::gateway_health::{self, BreakerReport, BreakerState};
    let app = spawn_app().await?;
    let merchant = app.merchant().await?;
    let id = deposit(&app, &merchant, "cust_ops").await?;
    // Fixtures standing for the other services: a payment processor's breaker report, a
    // dead letter, a flagged callback, and the payment's provider attempt and outcome.
    let client = redis::Client::open(app.config.redis.url.as_str())?;
    let mut redis = client.get_connection_manager().await?;
    let report = BreakerReport {
        state: BreakerState::Open,
        window_requests: 20,
        window_failures: 11,
        in_flight: 0,
        opened_total: 1,
        at: chrono::Utc::now(),
    };
    gateway_health::publish(
        &mut redis,
        &app.config.redis.key_prefix,
        "pp-1",
        &[("sandbox-json".parse()?, report)],
    )
    .await?;
    let producer = Producer::new(&app.config.kafka)?;
    producer
        .send(
            Topic::Dlq,
            "poison",
            b"not an envelope",
            &Default::default(),
        )
        .await?;
    for (status, gateway) in [
        ("submitting", "sandbox-json"),
        ("submitted", "sandbox-json"),
        ("succeeded", "sandbox-json"),
    ] {
        sqlx::query("UPDATE transactions SET status = $2, routed_gateway = $3, attempts = 1, version = version + 1 WHERE id = $1")
            .bind(id.as_uuid())
            .bind(status)
            .bind(gateway)
            .execute(&app.pool)
            .await?;
    }
    let flagged: i64 = sqlx::query_scalar(
        "INSERT INTO callback_log (gateway, provider_event_id, transaction_id, reported_status, reported_amount,
             reported_currency, outcome, needs_review, detail, status_before, version_before, received_at)
         VALUES ('sandbox-json', 'evt_conflict', $1, 'failed', 1050, 'USD', 'conflict', true,
                 'failed after succeeded', 'succeeded', 4, now()) RETURNING id",
    )
    .bind(id.as_uuid())
    .fetch_one(&app.pool)
    .await?;

    let mut operator = signed_in(&app, "ops@example.com", Role::Operator).await?;
    let (status, gateways, _) = operator.get("/console/ops/gateways").await?;
    assert_eq!(status, StatusCode::OK);
    let row = gateways
        .split("data-gateway=\"sandbox-json\"")
        .nth(1)
        .unwrap_or_default();
    assert!(
        row.contains(">open<") && row.contains("11/20 failed"),
        "{gateways}"
    );
    assert!(
        row.contains("100.0 %"),
        "one attempt, which reached the provider: {row}"
    );

    let (status, dead, _) = operator.get("/console/ops/dlq").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(dead.contains("data-testid=\"dlq-count\">1<"), "{dead}");
    assert!(
        dead.contains("not an envelope") && dead.contains("poison"),
        "{dead}"
    );

    let (_, queue, _) = operator.get("/console/ops/review").await?;
    assert!(queue.contains("failed after succeeded"), "{queue}");
    let csrf = csrf_in(&queue).unwrap_or_default();
    let path = format!("/console/ops/review/{flagged}");
    let (status, _, location) = operator
        .post(
            &path,
            &[("csrf", &csrf), ("note", "provider confirmed success")],
        )
        .await?;
    assert_eq!(
        (status, location.as_deref()),
        (
            StatusCode::SEE_OTHER,
            Some("/console/ops/review?flash=reviewed")
        )
    );
    let (by, note): (String, String) =
        sqlx::query_as("SELECT reviewed_by, review_note FROM callback_log WHERE id = $1")
            .bind(flagged)
            .fetch_one(&app.pool)
            .await?;
    assert_eq!(
        (by.as_str(), note.as_str()),
        ("ops@example.com", "provider confirmed success")
    );

    let (_, timeline, _) = operator.get(&format!("/console/transactions/{id}")).await?;
    for kind in ["created", "attempt", "state_change", "callback"] {
        assert!(
            timeline.contains(&format!("data-kind=\"{kind}\"")),
            "{kind}: {timeline}"
        );
    }
    assert!(
        timeline.contains("attempt 1 via sandbox-json: submitted"),
        "{timeline}"
    );
    let (_, dashboard, _) = operator.get("/console").await?;
    assert!(
        dashboard.contains("succeeded: 1"),
        "the chart counts the payment: {dashboard}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_page_shows_how_long_payments_queue_and_whether_new_ones_are_refused(
) -> TestResult {
    use paygate_core::pipeline_wait::{self, WaitReport};
    let app = spawn_app().await?;
    let client = redis::Client::open(app.config.redis.url.as_str())?;
    let mut redis = client.get_connection_manager().await?;
    let prefix = app.config.redis.key_prefix.clone();
    let report = |group: &'static str, wait_ms: u64| {
        let (mut redis, prefix) = (redis.clone(), prefix.clone());
        async move {
            let at = chrono::Utc::now();
            pipeline_wait::publish(
                &mut redis,
                &prefix,
                group,
                "one",
                WaitReport { wait_ms, at },
            )
            .await
        }
    };
    // The two worker kinds, 2 s and 4.5 s: a payment would queue 6.5 s, past the default 5 s.
    report("pgt.payment-processor", 2_000).await?;
    report("pgt.callback-processor", 4_500).await?;
    let mut operator = signed_in(&app, "ops@example.com", Role::Operator).await?;
    let (status, page, _) = operator.get("/console/ops/gateways").await?;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("data-testid=\"pipeline-wait\">6.5 s<")
            && page.contains("pgt.callback-processor: 4.5 s")
            && page.contains("pgt.payment-processor: 2.0 s"),
        "{page}"
    );
    assert!(page.contains("above the bound"), "{page}");

    // The callback processor caught up: 2.5 s in all, under the bound.
    report("pgt.callback-processor", 500).await?;
    let (_, page, _) = operator.get("/console/ops/gateways").await?;
    assert!(
        page.contains("data-testid=\"pipeline-wait\">2.5 s<"),
        "{page}"
    );
    assert!(!page.contains("above the bound"), "{page}");
    assert!(page.contains("while the wait stays above 5.0 s"), "{page}");
    let _ = redis::cmd("DEL")
        .arg(pipeline_wait::waits_key(&prefix))
        .query_async::<i64>(&mut redis)
        .await;
    Ok(())
}
