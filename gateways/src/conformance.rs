//! The conformance kit: one suite every [`PaymentGateway`] must pass against a sandbox
//! reachable over HTTP (`paygate-sandbox`). Knobs are driven through the sandbox's admin
//! API with the typed client of `paygate-sandbox-admin` (the sandbox depends on this crate,
//! so this crate cannot depend on the sandbox; the admin types and client live apart).
//!
//! The gateway under test must be configured with `base_url = {sandbox}/{gateway name}` and
//! the sandbox's secrets. The kit points that account's callbacks at a capture listener of
//! its own, so callbacks are checked exactly as paygate would receive them.
//!
//! ```ignore
//! let report = conformance::run(gateway.as_ref(), &ConformanceConfig::new(sandbox.base_url())).await;
//! assert!(report.passed(), "{report}");
//! ```

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use capture_guard::Shutdown;
use chrono::Utc;
use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, Transaction, TransactionKind,
};
use paygate_sandbox_admin::AdminClient;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::check::check_outcome;
use crate::{
    CallbackAuth, CallbackError, CallbackEvent, CallbackOutcome, CallbackRequest, GatewayError,
    PaymentGateway, ProviderStatus, ReportedStatus,
};

/// Where the sandbox is and how patient to be.
#[derive(Debug, Clone)]
pub struct ConformanceConfig {
    /// Sandbox root, e.g. `http://127.0.0.1:8090` (admin API under `/_admin`).
    pub sandbox_url: String,
    /// How long the sandbox hangs for the timeout checks; must exceed the gateway's timeout.
    pub hang: Duration,
    /// How long to wait for a callback.
    pub callback_wait: Duration,
    /// Whether the format carries a signed timestamp (then a replay an hour later must be
    /// refused).
    pub checks_timestamp: bool,
    /// The payments the kit submits: currency, customer reference, and the factor every
    /// amount (10.50, 20.00, 30.00, 40.00 in the default USD) is multiplied by. A provider
    /// that pays one currency in whole units to one kind of account (M-Pesa: whole KES to
    /// an MSISDN) sets these; the checks stay the same.
    pub currency: String,
    pub customer: String,
    pub amount_factor: i64,
}

impl ConformanceConfig {
    pub fn new(sandbox_url: impl Into<String>) -> Self {
        Self {
            sandbox_url: sandbox_url.into(),
            hang: Duration::from_secs(5),
            callback_wait: Duration::from_secs(5),
            checks_timestamp: true,
            currency: "USD".into(),
            customer: "cust_conformance".into(),
            amount_factor: 1,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// All checks for one gateway.
#[derive(Debug, Clone)]
pub struct ConformanceReport {
    pub gateway: GatewayName,
    pub checks: Vec<Check>,
}

impl ConformanceReport {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance of {}:", self.gateway)?;
        for check in &self.checks {
            writeln!(
                f,
                "  [{}] {}: {}",
                if check.passed { "ok" } else { "FAIL" },
                check.name,
                check.detail
            )?;
        }
        Ok(())
    }
}

/// A callback as the capture listener received it.
#[derive(Debug, Clone)]
struct Captured {
    headers: HeaderMap,
    body: Bytes,
    /// The path after `/callbacks/{gateway}/` (unsigned providers' reference and token).
    path: Option<String>,
}

impl Captured {
    fn request(&self) -> CallbackRequest {
        let headers = self
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned()))
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        CallbackRequest {
            body: self.body.clone(),
            content_type: headers.get("content-type").cloned(),
            headers,
            received_at: Utc::now(),
            path: self.path.clone(),
        }
    }
}

#[derive(Default)]
struct Inbox {
    received: Mutex<Vec<Captured>>,
    notify: Notify,
}

mod capture_guard {
    /// Stops the capture listener when dropped.
    pub struct Shutdown(pub Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Shutdown {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
}

async fn capture(
    State(inbox): State<Arc<Inbox>>,
    Path(_gateway): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    keep(
        &inbox,
        Captured {
            headers,
            body,
            path: None,
        },
    )
}

async fn capture_with_path(
    State(inbox): State<Arc<Inbox>>,
    Path((_gateway, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = Some(path);
    keep(
        &inbox,
        Captured {
            headers,
            body,
            path,
        },
    )
}

fn keep(inbox: &Inbox, captured: Captured) -> StatusCode {
    inbox
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(captured);
    inbox.notify.notify_waiters();
    StatusCode::OK
}

struct Kit<'a> {
    gateway: &'a dyn PaymentGateway,
    config: &'a ConformanceConfig,
    admin: AdminClient,
    inbox: Arc<Inbox>,
    capture_url: String,
    checks: Vec<Check>,
}

/// Runs the suite. Never panics on a misbehaving gateway or sandbox: failures are checks.
pub async fn run(gateway: &dyn PaymentGateway, config: &ConformanceConfig) -> ConformanceReport {
    let name = gateway.name().clone();
    let fail = |detail: String| ConformanceReport {
        gateway: name.clone(),
        checks: vec![Check {
            name: "setup",
            passed: false,
            detail,
        }],
    };
    let inbox = Arc::new(Inbox::default());
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => return fail(format!("cannot bind capture listener: {e}")),
    };
    let capture_url = match listener.local_addr() {
        Ok(addr) => format!("http://{addr}"),
        Err(e) => return fail(e.to_string()),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let _stop = Shutdown(Some(stop_tx));
    let app = Router::new()
        .route("/callbacks/{gateway}", post(capture))
        .route("/callbacks/{gateway}/{*path}", post(capture_with_path))
        .with_state(Arc::clone(&inbox));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .await;
    });
    let admin = match AdminClient::new(config.sandbox_url.as_str()) {
        Ok(admin) => admin,
        Err(e) => return fail(e.to_string()),
    };
    let mut kit = Kit {
        gateway,
        config,
        admin,
        inbox,
        capture_url,
        checks: Vec::new(),
    };
    kit.all().await;
    let _ = kit
        .admin
        .delete_account_knobs(kit.gateway.name().as_str())
        .await;
    ConformanceReport {
        gateway: name,
        checks: kit.checks,
    }
}

/// Plays the customer at the provider's hosted step: a `GET` on the redirect URL (the
/// sandbox's emulators complete the payment on it).
async fn complete_customer_step(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("customer step {url}: {e}"))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("customer step {url} answered {status}"))
    }
}

fn transaction(
    config: &ConformanceConfig,
    kind: TransactionKind,
    minor_units: i64,
) -> Option<Transaction> {
    Some(Transaction::create(
        NewTransaction {
            merchant_id: MerchantId::new(),
            kind,
            money: Money::from_parts(
                minor_units.checked_mul(config.amount_factor)?,
                &config.currency,
            )
            .ok()?,
            customer: CustomerReference::parse(&config.customer).ok()?,
            gateway: None,
            callback_url: None,
            metadata: json!({}),
        },
        Utc::now(),
    ))
}

impl Kit<'_> {
    /// The callback as a payment outcome; any other event is an error here.
    fn payment(&self, request: &CallbackRequest) -> Result<CallbackOutcome, CallbackError> {
        match self.gateway.handle_callback(request)? {
            CallbackEvent::Payment(outcome) => Ok(outcome),
            other => Err(CallbackError::Malformed(format!(
                "expected a payment event, got {other:?}"
            ))),
        }
    }

    fn record(&mut self, name: &'static str, result: Result<String, String>) {
        let (passed, detail) = match result {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        self.checks.push(Check {
            name,
            passed,
            detail,
        });
    }

    /// Sets the account's knobs: a clean base (callbacks to us, no delay) plus `extra`.
    async fn knobs(&self, extra: Value) -> Result<(), String> {
        let mut knobs = json!({
            "callback_base_url": self.capture_url,
            "callback_delay_ms": 0,
            "hang_ms": u64::try_from(self.config.hang.as_millis()).unwrap_or(u64::MAX),
            "callback_max_attempts": 1,
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut knobs, extra) {
            base.extend(extra);
        }
        self.admin
            .put_account_knobs(self.gateway.name().as_str(), &knobs)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The account's counters as JSON (the checks read them by name).
    async fn stats(&self) -> Result<Value, String> {
        let stats = self
            .admin
            .account_stats(self.gateway.name().as_str())
            .await
            .map_err(|e| e.to_string())?;
        serde_json::to_value(stats).map_err(|e| e.to_string())
    }

    fn clear(&self) {
        self.inbox
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Waits until `count` callbacks are captured (or the wait runs out); returns them.
    async fn callbacks(&self, count: usize) -> Vec<Captured> {
        let deadline = tokio::time::Instant::now() + self.config.callback_wait;
        loop {
            let notified = self.inbox.notify.notified();
            let received = self
                .inbox
                .received
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if received.len() >= count || tokio::time::Instant::now() >= deadline {
                return received;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn submit(&self, tx: &Transaction) -> Result<crate::SubmitOutcome, GatewayError> {
        match tx.kind {
            TransactionKind::Deposit => self.gateway.deposit(tx).await,
            TransactionKind::Withdrawal => self.gateway.withdraw(tx).await,
        }
    }

    /// Submits with clean knobs and returns the one callback it produced.
    async fn executed_with_callback(
        &self,
        kind: TransactionKind,
        extra: Value,
    ) -> Result<(Transaction, Captured), String> {
        self.knobs(extra).await?;
        self.clear();
        let mut tx = transaction(self.config, kind, 1050).ok_or("cannot build a transaction")?;
        let outcome = self
            .submit(&tx)
            .await
            .map_err(|e| format!("{} failed: {e}", kind.as_str()))?;
        if outcome.provider_reference.is_empty() || outcome.money.is_some_and(|m| m != tx.money) {
            return Err(format!("unexpected outcome {outcome:?}"));
        }
        // As the payment processor records it: later reports must fit this.
        tx.routed_gateway = Some(self.gateway.name().clone());
        tx.provider_reference = Some(outcome.provider_reference.clone());
        if let crate::SubmitStatus::RequiresAction { url } = &outcome.status {
            complete_customer_step(url).await?;
        }
        let captured = self.callbacks(1).await;
        let first = captured.into_iter().next().ok_or("no callback arrived")?;
        Ok((tx, first))
    }

    async fn all(&mut self) {
        let mut genuine = None;
        for kind in TransactionKind::ALL {
            let name = match kind {
                TransactionKind::Deposit => "deposit_succeeds_and_callback_parses",
                TransactionKind::Withdrawal => "withdrawal_succeeds_and_callback_parses",
            };
            let result = match self.executed_with_callback(kind, json!({})).await {
                Ok((tx, captured)) => match self.payment(&captured.request()) {
                    Ok(o) if check_outcome(&tx, self.gateway.name(), &o.reported()).is_err() => {
                        Err(format!(
                            "the callback does not fit the submitted payment: {:?}",
                            check_outcome(&tx, self.gateway.name(), &o.reported())
                        ))
                    }
                    Ok(o)
                        if o.transaction_id == tx.id
                            && o.status == ReportedStatus::Succeeded
                            && o.money == tx.money
                            && !o.provider_event_id.is_empty() =>
                    {
                        genuine.get_or_insert((tx.clone(), captured.clone()));
                        Ok(format!("{:?}", o.status))
                    }
                    other => Err(format!("callback parsed as {other:?}")),
                },
                Err(e) => Err(e),
            };
            self.record(name, result);
        }
        self.status_checks(genuine.as_ref().map(|(tx, _)| tx)).await;
        self.error_classes().await;
        self.lost_response().await;
        self.executed_but_refused().await;
        match genuine {
            Some((tx, captured)) => self.hostile_callbacks(&tx, &captured),
            None => self.record(
                "hostile_callbacks",
                Err("no genuine callback to start from".into()),
            ),
        }
        self.callback_knobs().await;
    }

    async fn status_checks(&mut self, executed: Option<&Transaction>) {
        if let Some(tx) = executed {
            let result = match self.gateway.status(tx).await {
                Ok(ProviderStatus::Final {
                    status: ReportedStatus::Succeeded,
                    reported,
                }) if reported.money.is_none_or(|m| m == tx.money) => Ok("final succeeded".into()),
                Ok(ProviderStatus::Unsupported) => Ok("unsupported".into()),
                other => Err(format!("status of an executed payment: {other:?}")),
            };
            self.record("status_of_executed_payment", result);
        }
        let result = match transaction(self.config, TransactionKind::Deposit, 1050) {
            Some(tx) => match self.gateway.status(&tx).await {
                Ok(ProviderStatus::NotFound | ProviderStatus::Unsupported) => {
                    Ok("not found".into())
                }
                // A provider whose status query takes only its own id (M-Pesa's
                // `CheckoutRequestID`) cannot be asked about a payment it never answered:
                // "could not find out" is the honest answer, never "not found" (which
                // would let the payment go to another gateway).
                Err(e) if tx.provider_reference.is_none() && !self.gateway.idempotent_submit() => {
                    Ok(format!("cannot be asked without the provider's id: {e}"))
                }
                other => Err(format!("status of an unknown payment: {other:?}")),
            },
            None => Err("cannot build a transaction".into()),
        };
        self.record("status_of_unknown_payment", result);
    }

    /// Runs one submit under `knobs` and checks the error class and that nothing executed.
    async fn expect_error(
        &mut self,
        name: &'static str,
        knobs: Value,
        expected: fn(&GatewayError) -> bool,
        may_execute: bool,
    ) {
        let result = async {
            self.knobs(knobs).await?;
            let before = self.stats().await?;
            let tx = transaction(self.config, TransactionKind::Deposit, 2000)
                .ok_or("cannot build a transaction")?;
            let outcome = self.submit(&tx).await;
            let after = self.stats().await?;
            let executed = after["executions"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(before["executions"].as_u64().unwrap_or(0));
            match outcome {
                Err(e) if expected(&e) && (may_execute || executed == 0) => Ok(e.to_string()),
                Err(e) if expected(&e) => Err(format!("{e}, but the sandbox executed it")),
                other => Err(format!("got {other:?}")),
            }
        }
        .await;
        self.record(name, result);
    }

    async fn error_classes(&mut self) {
        self.decline().await;
        // Every 5xx is ambiguous: a load balancer answers them too, after the provider may
        // have committed (the rule on `GatewayError`).
        self.expect_error(
            "server_error_is_ambiguous",
            json!({"error_rate": 1.0}),
            |e| matches!(e, GatewayError::Ambiguous { .. }),
            false,
        )
        .await;
        self.expect_error(
            "rate_limit_is_retryable_with_retry_after",
            json!({"rate_limit_rate": 1.0}),
            |e| {
                matches!(
                    e,
                    GatewayError::Retryable {
                        retry_after: Some(_),
                        ..
                    }
                )
            },
            false,
        )
        .await;
        self.expect_error(
            "outage_503_is_ambiguous",
            json!({"outage": true}),
            |e| matches!(e, GatewayError::Ambiguous { .. }),
            false,
        )
        .await;
        self.expect_error(
            "timeout_is_ambiguous",
            json!({"timeout_rate": 1.0}),
            |e| matches!(e, GatewayError::Ambiguous { .. }),
            false,
        )
        .await;
    }

    /// Answers that come after the provider may have executed (run after the checks that
    /// count callbacks, since these executions send some).
    async fn executed_but_refused(&mut self) {
        self.clear();
        // A load balancer's 502 after the provider committed: the payment moved, so the
        // connector must not call it retryable (failover would pay twice).
        self.expect_error(
            "executed_then_502_is_ambiguous",
            json!({"execute_then_error_rate": 1.0, "execute_then_error_status": 502}),
            |e| matches!(e, GatewayError::Ambiguous { .. }),
            true,
        )
        .await;
        self.duplicate_reference().await;
        // Both executed and send their callbacks: let them land before the next checks.
        self.callbacks(2).await;
        self.clear();
    }

    /// The provider refuses a resubmitted known reference: the first request may have
    /// executed, so the refusal is ambiguous (a status query tells), never a decline.
    async fn duplicate_reference(&mut self) {
        let result = async {
            self.knobs(json!({"duplicate_reference_status": 409}))
                .await?;
            let tx = transaction(self.config, TransactionKind::Withdrawal, 4000)
                .ok_or("cannot build a transaction")?;
            self.submit(&tx)
                .await
                .map_err(|e| format!("first attempt: {e}"))?;
            let before = self.stats().await?;
            let second = self.submit(&tx).await;
            let after = self.stats().await?;
            let executed = after["executions"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(before["executions"].as_u64().unwrap_or(0));
            match second {
                Err(e @ GatewayError::Ambiguous { .. }) if executed == 0 => Ok(e.to_string()),
                other => Err(format!("resubmit: {other:?}, executions +{executed}")),
            }
        }
        .await;
        self.record("duplicate_reference_refusal_is_ambiguous", result);
    }

    /// A declined payment is refused for good: `Permanent` at once, or, where the customer
    /// pays on the provider's page (`RequiresAction`), declined there and reported `failed`
    /// by callback after the customer's step. Never executed either way.
    async fn decline(&mut self) {
        let result = async {
            self.knobs(json!({"decline_rate": 1.0})).await?;
            self.clear();
            let before = self.stats().await?;
            let tx = transaction(self.config, TransactionKind::Deposit, 2000)
                .ok_or("cannot build a transaction")?;
            let detail = match self.submit(&tx).await {
                Err(e @ GatewayError::Permanent { .. }) => e.to_string(),
                // Declined after the answer: on the provider's page, or by the customer on
                // the phone (M-Pesa's ResultCode 1032), and reported `failed` by callback.
                Ok(crate::SubmitOutcome { status, .. })
                    if !matches!(status, crate::SubmitStatus::Succeeded) =>
                {
                    if let crate::SubmitStatus::RequiresAction { url } = &status {
                        complete_customer_step(url).await?;
                    }
                    let captured = self.callbacks(1).await;
                    let reported = captured.first().map(|c| self.payment(&c.request()));
                    match reported {
                        Some(Ok(o))
                            if o.transaction_id == tx.id
                                && matches!(o.status, ReportedStatus::Failed { .. }) =>
                        {
                            format!("declined after the answer: {:?}", o.status)
                        }
                        // A provider that sends no event for a failed charge (Paystack):
                        // its status query must say so.
                        other => match self.gateway.status(&tx).await {
                            Ok(ProviderStatus::Final {
                                status: status @ ReportedStatus::Failed { .. },
                                ..
                            }) => format!("declined after the answer, by status: {status:?}"),
                            answer => {
                                return Err(format!(
                                    "declined step: callback {other:?}, status {answer:?}"
                                ))
                            }
                        },
                    }
                }
                other => return Err(format!("got {other:?}")),
            };
            let after = self.stats().await?;
            let executed = after["executions"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(before["executions"].as_u64().unwrap_or(0));
            if executed == 0 {
                Ok(detail)
            } else {
                Err(format!("{detail}, but the sandbox executed it"))
            }
        }
        .await;
        self.record("decline_is_permanent", result);
    }

    /// Executed but the answer is lost: `Ambiguous`; the retry with the same reference is
    /// answered from the provider's record, and the provider executed exactly once.
    async fn lost_response(&mut self) {
        let result = async {
            self.knobs(json!({"lost_response_rate": 1.0})).await?;
            self.clear();
            let before = self.stats().await?;
            let tx = transaction(self.config, TransactionKind::Deposit, 3000)
                .ok_or("cannot build a transaction")?;
            match self.submit(&tx).await {
                Err(GatewayError::Ambiguous { .. }) => {}
                other => return Err(format!("first attempt: {other:?}")),
            }
            if !self.gateway.idempotent_submit() {
                // The provider would execute a retry as a second payment (M-Pesa's STK
                // push): the gateway says so, and the processor never resubmits to it.
                return Ok("ambiguous; no idempotency declared, so never retried".into());
            }
            self.knobs(json!({})).await?;
            let retry = self.submit(&tx).await.map_err(|e| format!("retry: {e}"))?;
            // Where the customer pays on the provider's page, nothing executes until then.
            if let crate::SubmitStatus::RequiresAction { url } = &retry.status {
                complete_customer_step(url).await?;
            }
            let after = self.stats().await?;
            let delta = |k: &str| {
                after[k]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(before[k].as_u64().unwrap_or(0))
            };
            let callbacks = self.callbacks(1).await.len();
            // A moment more, to catch a second execution's callback.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let callbacks = callbacks.max(
                self.inbox
                    .received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len(),
            );
            if delta("executions") == 1 && delta("duplicates_suppressed") == 1 && callbacks == 1 {
                Ok(format!(
                    "retry answered {:?} from the record; executed once",
                    retry.status
                ))
            } else {
                Err(format!(
                    "executions +{}, duplicates_suppressed +{}, callbacks {callbacks}",
                    delta("executions"),
                    delta("duplicates_suppressed")
                ))
            }
        }
        .await;
        self.record("lost_response_is_ambiguous_and_retry_executes_once", result);
    }

    /// A signed gateway: a tampered body and forged signature headers are refused. Never
    /// skipped: a signed gateway that declares no signature header fails here.
    fn forged_signatures(&mut self, base: &CallbackRequest) {
        let mut tampered = base.clone();
        let mut body = tampered.body.to_vec();
        if let Some(i) = body.len().checked_div(2).filter(|_| !body.is_empty()) {
            body[i] ^= 0x01;
        }
        tampered.body = Bytes::from(body);
        let r = match self.gateway.handle_callback(&tampered).err() {
            Some(e) => Ok(e.to_string()),
            None => Err("a tampered body was believed".into()),
        };
        self.record("tampered_body_refused", r);

        // Every declared header but content-type corrupted. A format that declares none
        // carries its signature in the body, which the tampered-body check just covered:
        // the report says so rather than skipping silently.
        let declared = self.gateway.callback_headers();
        let mut forged = base.clone();
        let mut any = false;
        for (name, value) in forged.headers.iter_mut() {
            if name != "content-type" && declared.contains(&name.as_str()) {
                *value = value.chars().rev().collect();
                any = true;
            }
        }
        let r = if !any {
            Ok("the signature travels in the body: covered by tampered_body_refused".into())
        } else {
            match self.gateway.handle_callback(&forged).err() {
                Some(CallbackError::Unauthenticated(m)) => Ok(m),
                other => Err(format!("forged signature gave {other:?}")),
            }
        };
        self.record("forged_signature_unauthenticated", r);
    }

    /// An unsigned gateway ([`CallbackAuth::PathToken`]): the path is its only credential.
    /// No path, a wrong token, and one payment's token on another payment's path are all
    /// refused as unauthenticated.
    fn forged_paths(&mut self, base: &CallbackRequest) {
        let Some(path) = base.path.clone() else {
            self.record(
                "path_token_callback_carries_a_path",
                Err("an unsigned gateway's callback came without a reference/token path".into()),
            );
            return;
        };
        let (reference, token) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let flipped: String = token.chars().rev().collect();
        let other = crate::callback::path_token(b"not-the-secret", reference);
        let cases = [
            ("missing_path_unauthenticated", None),
            (
                "wrong_path_token_unauthenticated",
                Some(format!("{reference}/{flipped}")),
            ),
            (
                "foreign_secret_token_unauthenticated",
                Some(format!("{reference}/{other}")),
            ),
            (
                "token_of_another_reference_unauthenticated",
                Some(format!("{reference}x/{token}")),
            ),
        ];
        for (name, path) in cases {
            let mut forged = base.clone();
            forged.path = path;
            let r = match self.gateway.handle_callback(&forged) {
                Err(CallbackError::Unauthenticated(m)) => Ok(m),
                other => Err(format!("gave {other:?}")),
            };
            self.record(name, r);
        }
    }

    fn hostile_callbacks(&mut self, tx: &Transaction, genuine: &Captured) {
        let base = genuine.request();
        let refused = |request: &CallbackRequest, gateway: &dyn PaymentGateway| {
            gateway.handle_callback(request).err()
        };

        // Only the declared headers are kept on the bus: the genuine callback must verify
        // with those alone (and carrying a credential header must change nothing).
        let declared = self.gateway.callback_headers();
        let mut kept = base.clone();
        kept.headers
            .insert("authorization".into(), "Bearer not-for-the-bus".into());
        kept.headers
            .retain(|name, _| declared.contains(&name.as_str()));
        let r = if kept.headers.contains_key("authorization") {
            Err(format!(
                "callback_headers() declares authorization: {declared:?}"
            ))
        } else {
            match self.gateway.handle_callback(&kept) {
                Ok(_) => Ok(format!("verifies with {declared:?} alone")),
                Err(e) => Err(format!("refused with only {declared:?}: {e}")),
            }
        };
        self.record("callback_verifies_with_declared_headers_only", r);

        match self.gateway.callback_auth() {
            CallbackAuth::Signed => self.forged_signatures(&base),
            CallbackAuth::PathToken => self.forged_paths(&base),
        }

        if self.config.checks_timestamp {
            let mut late = base.clone();
            late.received_at += chrono::Duration::hours(1);
            let r = match refused(&late, self.gateway) {
                Some(CallbackError::Unauthenticated(m)) => Ok(m),
                other => Err(format!("an hour-old callback gave {other:?}")),
            };
            self.record("stale_timestamp_refused", r);
        }

        let garbage: Vec<u8> = (0..512u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let cases: Vec<(&'static str, Bytes, Option<String>)> = vec![
            (
                "empty_body_refused",
                Bytes::new(),
                base.content_type.clone(),
            ),
            (
                "truncated_body_refused",
                base.body.slice(..base.body.len() / 2),
                base.content_type.clone(),
            ),
            (
                "garbage_body_refused",
                Bytes::from(garbage),
                base.content_type.clone(),
            ),
            (
                "wrong_json_refused",
                Bytes::from_static(br#"{"hello":"world"}"#),
                base.content_type.clone(),
            ),
            (
                "huge_body_refused",
                Bytes::from(vec![b'a'; 4 * 1024 * 1024]),
                base.content_type.clone(),
            ),
            (
                "wrong_content_type_refused",
                base.body.clone(),
                Some("text/plain".into()),
            ),
        ];
        for (name, body, content_type) in cases {
            let mut request = base.clone();
            request.body = body;
            request.content_type = content_type.clone();
            if let Some(ct) = content_type {
                request.headers.insert("content-type".into(), ct);
            }
            let r = match (name, refused(&request, self.gateway)) {
                ("huge_body_refused", Some(CallbackError::TooLarge)) => Ok("too large".into()),
                ("huge_body_refused", other) => Err(format!("{other:?}")),
                ("wrong_content_type_refused", Some(CallbackError::UnsupportedContentType(m))) => {
                    Ok(m)
                }
                ("wrong_content_type_refused", other) => Err(format!("{other:?}")),
                (_, Some(e)) => Ok(e.to_string()),
                (_, None) => Err(format!("believed a {name} callback for {}", tx.id)),
            };
            self.record(name, r);
        }
    }

    async fn callback_knobs(&mut self) {
        // Authentic but unparseable (wrong JSON shape / truncated XML / garbage protobuf).
        let r = match self
            .executed_with_callback(
                TransactionKind::Deposit,
                json!({"malformed_callback_rate": 1.0}),
            )
            .await
        {
            Ok((_, captured)) => match self.gateway.handle_callback(&captured.request()) {
                Err(CallbackError::Malformed(m)) => Ok(m),
                other => Err(format!("signed malformed callback gave {other:?}")),
            },
            Err(e) => Err(e),
        };
        self.record("signed_malformed_callback_is_malformed", r);

        let r = match self
            .executed_with_callback(
                TransactionKind::Deposit,
                json!({"mismatched_callback_rate": 1.0}),
            )
            .await
        {
            Ok((tx, captured)) => match self.payment(&captured.request()) {
                Ok(o) if o.transaction_id == tx.id && o.money != tx.money => {
                    Ok(format!("reported {} for {}", o.money, tx.money))
                }
                other => Err(format!("mismatched amount callback gave {other:?}")),
            },
            Err(e) => Err(e),
        };
        self.record("amount_mismatch_reported", r);

        let r = match self
            .executed_with_callback(
                TransactionKind::Withdrawal,
                json!({"callback_failure_rate": 1.0}),
            )
            .await
        {
            Ok((tx, captured)) => match self.payment(&captured.request()) {
                Ok(o)
                    if o.transaction_id == tx.id
                        && matches!(o.status, ReportedStatus::Failed { .. }) =>
                {
                    Ok(format!("{:?}", o.status))
                }
                other => Err(format!("failure callback gave {other:?}")),
            },
            Err(e) => Err(e),
        };
        self.record("failure_callback_reported", r);

        let r = async {
            let (tx, _) = self
                .executed_with_callback(
                    TransactionKind::Deposit,
                    json!({"duplicate_callback_rate": 1.0}),
                )
                .await?;
            let captured = self.callbacks(2).await;
            let outcomes: Vec<_> = captured
                .iter()
                .map(|c| self.payment(&c.request()))
                .collect();
            match outcomes.as_slice() {
                [Ok(a), Ok(b)]
                    if a.transaction_id == tx.id && a.provider_event_id == b.provider_event_id =>
                {
                    Ok(format!("both carry event {}", a.provider_event_id))
                }
                other => Err(format!("duplicates parsed as {other:?}")),
            }
        }
        .await;
        self.record("duplicate_callbacks_share_event_id", r);
    }
}
