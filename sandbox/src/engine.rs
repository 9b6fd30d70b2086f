//! What every protocol shares: knob lookup, the idempotency record, the decision for one
//! payment request, stats. Protocol modules only translate wire formats to and from this.
//!
//! Locks are `std` mutexes held for a map operation only, never across an await, so the
//! sandbox keeps up with benchmark load.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use paygate_core::domain::{GatewayName, Money, TransactionKind};
use paygate_gateways::{ReportedStatus, Secret};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::{self, Delivery};
use crate::knobs::{Counters, Knobs, KnobsReport, StatsReport};

/// Which provider the request came in as; decides the callback format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The invented protocols of `sandbox-json`, `sandbox-soap` and `sandbox-proto`.
    Json,
    Soap,
    Protobuf,
    /// Emulators of real providers (`crate::emulators`), each from its public docs.
    Paystack,
    Mpesa,
    Stripe,
}

/// A parsed payment request, whatever its wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub account: GatewayName,
    pub protocol: Protocol,
    pub kind: TransactionKind,
    /// The merchant's (paygate's) reference, as the provider received it: the key of
    /// the provider's idempotency. A string, because a real provider knows nothing of
    /// paygate's id format.
    pub reference: String,
    pub money: Money,
    pub customer: String,
    /// The customer must act at the provider (3-D Secure, a hosted page) before the
    /// payment executes: it waits in [`RecordState::AwaitingAction`] until
    /// [`Engine::finish_action`].
    pub needs_action: bool,
    /// Where the provider sends this payment's callback, when the request named one
    /// (M-Pesa's `CallBackURL`); else `{callback_base_url}/callbacks/{account}`.
    pub callback_url: Option<String>,
}

/// What the provider holds for one reference.
#[derive(Debug, Clone)]
pub struct Record {
    pub order: Order,
    pub provider_reference: String,
    pub state: RecordState,
    /// When the provider executed it (or declined it): the start of a lagging status
    /// endpoint's blind spot, and part of the references report.
    pub executed_at: DateTime<Utc>,
}

impl Record {
    /// A synchronous decline: nothing was executed, so it does not count as the reference
    /// having been paid (see `executed_elsewhere`).
    pub fn declined(&self) -> bool {
        matches!(&self.state, RecordState::Final(ReportedStatus::Failed { code, .. }) if code == "declined")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Waiting for the customer's step at the provider; nothing has moved.
    AwaitingAction,
    /// Executed; the outcome is decided and will be announced by callback.
    Pending { outcome: ReportedStatus },
    /// The outcome has been announced (or was a synchronous decline).
    Final(ReportedStatus),
}

/// How to answer a payment request.
#[derive(Debug, Clone)]
pub enum Decision {
    Outage,
    ServerError,
    RateLimited,
    /// Hung for `hang_ms` (executed or not); answer 504.
    Hung,
    Declined(Record),
    Accepted(Record),
    /// Executed, but answered with this bare 5xx (`execute_then_error_rate`).
    ExecutedThenError(StatusCode),
    /// A repeat refused with this 4xx and code `duplicate_reference`
    /// (`duplicate_reference_status`); nothing executed.
    DuplicateRefused(StatusCode),
    /// The reference was used with other parameters.
    Conflict,
}

/// The records and an index reference → accounts holding it, under one lock so they never
/// disagree. The index makes `executed_elsewhere` and the references report O(1) lookups.
#[derive(Default)]
struct Book {
    records: HashMap<(GatewayName, String), Record>,
    by_reference: HashMap<String, Vec<GatewayName>>,
    /// Refunds by (account, refund reference): each executes once.
    refunds: HashMap<(GatewayName, String), RefundRecord>,
}

/// A refund request, whatever its wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOrder {
    pub account: GatewayName,
    /// The refunded payment's reference.
    pub transaction: String,
    /// The merchant's refund reference: the refund's idempotency key.
    pub reference: String,
    pub money: Money,
}

/// A refund the provider executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    pub order: RefundOrder,
    pub provider_reference: String,
}

/// How to answer a refund request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundDecision {
    /// Executed now (`fresh`) or before with the same details (a repeat).
    Executed { record: RefundRecord, fresh: bool },
    /// No succeeded payment with that reference at this account.
    UnknownPayment,
    /// More than is left of the payment, or in another currency.
    TooMuch,
    /// The refund reference was used with other details.
    Conflict,
}

impl Book {
    fn insert(&mut self, record: Record) {
        let account = record.order.account.clone();
        let reference = record.order.reference.clone();
        let accounts = self.by_reference.entry(reference.clone()).or_default();
        if !accounts.contains(&account) {
            accounts.push(account.clone());
        }
        self.records.insert((account, reference), record);
    }

    /// Whether an account other than `account` executed (not merely declined) `reference`.
    fn executed_by_other(&self, account: &GatewayName, reference: &str) -> bool {
        self.by_reference.get(reference).is_some_and(|accounts| {
            accounts.iter().filter(|a| *a != account).any(|other| {
                self.records
                    .get(&(other.clone(), reference.to_owned()))
                    .is_some_and(|r| !r.declined())
            })
        })
    }

    /// Every account's record of `reference`, in execution order (the index is appended to
    /// under the lock, so its order is the true one even if the wall clock steps back).
    fn of_reference(&self, reference: &str) -> Vec<Record> {
        self.by_reference
            .get(reference)
            .into_iter()
            .flatten()
            .filter_map(|account| {
                self.records
                    .get(&(account.clone(), reference.to_owned()))
                    .cloned()
            })
            .collect()
    }
}

/// Settings the engine needs from the sandbox's.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub callback_base_url: String,
    pub secret_key: Secret,
    pub webhook_secret: Secret,
    pub knobs: Knobs,
}

pub struct Engine {
    pub settings: EngineSettings,
    knobs: RwLock<KnobsReport>,
    book: Mutex<Book>,
    total: Counters,
    accounts: RwLock<BTreeMap<String, Arc<Counters>>>,
    sequence: AtomicU64,
    pub(crate) http: reqwest::Client,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(settings: EngineSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            knobs: RwLock::new(KnobsReport {
                global: settings.knobs.clone(),
                accounts: BTreeMap::new(),
            }),
            settings,
            book: Mutex::new(Book::default()),
            total: Counters::default(),
            accounts: RwLock::new(BTreeMap::new()),
            // Ids continue from the clock, not from a constant: provider references and
            // callback event ids must stay unique across sandbox restarts, as a real
            // provider's do (paygate dedupes callbacks by provider event id).
            sequence: AtomicU64::new(first_sequence()),
            http,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }

    /// The knobs in force for `account`.
    pub fn knobs(&self, account: &str) -> Knobs {
        let report = self.knobs.read().unwrap_or_else(|p| p.into_inner());
        report
            .accounts
            .get(account)
            .unwrap_or(&report.global)
            .clone()
    }

    pub fn knobs_report(&self) -> KnobsReport {
        self.knobs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_global_knobs(&self, knobs: Knobs) {
        self.knobs.write().unwrap_or_else(|p| p.into_inner()).global = knobs;
    }

    /// `None` removes the account's override.
    pub fn set_account_knobs(&self, account: &str, knobs: Option<Knobs>) {
        let mut report = self.knobs.write().unwrap_or_else(|p| p.into_inner());
        match knobs {
            Some(knobs) => report.accounts.insert(account.to_owned(), knobs),
            None => report.accounts.remove(account),
        };
    }

    /// Bumps one counter for the account and the total.
    pub fn count(&self, account: &str, counter: fn(&Counters) -> &AtomicU64) {
        counter(&self.total).fetch_add(1, Ordering::Relaxed);
        let existing = self
            .accounts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(account)
            .cloned();
        let counters = match existing {
            Some(c) => c,
            None => {
                let mut accounts = self.accounts.write().unwrap_or_else(|p| p.into_inner());
                Arc::clone(accounts.entry(account.to_owned()).or_default())
            }
        };
        counter(&counters).fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> StatsReport {
        let accounts = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        StatsReport {
            total: self.total.snapshot(),
            accounts: accounts
                .iter()
                .map(|(k, v)| (k.clone(), v.snapshot()))
                .collect(),
        }
    }

    /// Forgets records, counters and account knobs (global knobs stay).
    pub fn reset(&self) {
        *lock(&self.book) = Book::default();
        self.accounts
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.knobs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .accounts
            .clear();
        self.total.reset();
    }

    pub fn next_id(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    pub fn record(&self, account: &GatewayName, reference: &str) -> Option<Record> {
        lock(&self.book)
            .records
            .get(&(account.clone(), reference.to_owned()))
            .cloned()
    }

    /// The record whose provider reference is `provider_reference` (emulators whose
    /// status query takes the provider's id, such as M-Pesa's `CheckoutRequestID`).
    pub fn record_by_provider_reference(
        &self,
        account: &GatewayName,
        provider_reference: &str,
    ) -> Option<Record> {
        lock(&self.book)
            .records
            .values()
            .find(|r| &r.order.account == account && r.provider_reference == provider_reference)
            .cloned()
    }

    /// What every account holds for `reference` (the admin references report).
    pub fn records_of(&self, reference: &str) -> Vec<Record> {
        lock(&self.book).of_reference(reference)
    }

    /// The customer finished (`approve`) or abandoned the provider's step for a payment in
    /// [`RecordState::AwaitingAction`]: it executes now, as a fresh submission would (the
    /// decline and callback knobs apply), and its callback is scheduled. `None` when there
    /// is no such payment waiting.
    pub fn finish_action(
        self: &Arc<Self>,
        account: &GatewayName,
        reference: &str,
        approve: bool,
    ) -> Option<Record> {
        let knobs = self.knobs(account.as_str());
        let record = {
            let mut book = lock(&self.book);
            let record = book
                .records
                .get_mut(&(account.clone(), reference.to_owned()))
                .filter(|r| r.state == RecordState::AwaitingAction)?;
            record.state = if approve && chance(knobs.decline_rate) {
                // Declined on the provider's page (a card refused after 3-D Secure).
                RecordState::Pending { outcome: decline() }
            } else if approve {
                decided_state(&knobs)
            } else {
                RecordState::Pending {
                    outcome: ReportedStatus::Failed {
                        code: "cancelled".into(),
                        reason: "The customer cancelled the payment".into(),
                    },
                }
            };
            record.executed_at = Utc::now();
            record.clone()
        };
        if matches!(
            &record.state,
            RecordState::Pending {
                outcome: ReportedStatus::Succeeded
            }
        ) {
            self.count(account.as_str(), |c| &c.executions);
        } else {
            self.count(account.as_str(), |c| &c.declines);
        }
        if knobs.callbacks_enabled {
            delivery::schedule(
                self,
                Delivery::plan(&record, &knobs, self.next_id(), Utc::now()),
            );
        }
        Some(record)
    }

    /// Marks a pending record's outcome as announced.
    pub(crate) fn announce(&self, account: &GatewayName, reference: &str) {
        if let Some(record) = lock(&self.book)
            .records
            .get_mut(&(account.clone(), reference.to_owned()))
        {
            if let RecordState::Pending { outcome } = &record.state {
                record.state = RecordState::Final(outcome.clone());
            }
        }
    }

    /// Executes a refund once per (account, refund reference), never more in total than the
    /// payment it refunds (decided under the book's lock).
    pub fn refund(&self, order: RefundOrder) -> RefundDecision {
        let key = (order.account.clone(), order.reference.clone());
        let mut book = lock(&self.book);
        if let Some(existing) = book.refunds.get(&key) {
            return if existing.order == order {
                RefundDecision::Executed {
                    record: existing.clone(),
                    fresh: false,
                }
            } else {
                RefundDecision::Conflict
            };
        }
        let Some(payment) = book
            .records
            .get(&(order.account.clone(), order.transaction.clone()))
        else {
            return RefundDecision::UnknownPayment;
        };
        let paid = matches!(
            &payment.state,
            RecordState::Pending {
                outcome: ReportedStatus::Succeeded
            } | RecordState::Final(ReportedStatus::Succeeded)
        );
        if !paid || payment.order.kind != TransactionKind::Deposit {
            return RefundDecision::UnknownPayment;
        }
        if payment.order.money.currency != order.money.currency {
            return RefundDecision::TooMuch;
        }
        let refunded = book
            .refunds
            .values()
            .filter(|r| {
                r.order.account == order.account && r.order.transaction == order.transaction
            })
            .fold(0_i64, |sum, r| {
                sum.saturating_add(r.order.money.amount.minor_units())
            });
        let total = refunded.saturating_add(order.money.amount.minor_units());
        if total > payment.order.money.amount.minor_units() {
            return RefundDecision::TooMuch;
        }
        let record = RefundRecord {
            order,
            provider_reference: format!("rf_{}", self.next_id()),
        };
        book.refunds.insert(key, record.clone());
        RefundDecision::Executed {
            record,
            fresh: true,
        }
    }

    /// Waits the knob's latency; for every request, status queries included.
    pub async fn latency(&self, knobs: &Knobs) {
        let ms = if knobs.latency_max_ms > knobs.latency_min_ms {
            rand::rng().random_range(knobs.latency_min_ms..=knobs.latency_max_ms)
        } else {
            knobs.latency_min_ms
        };
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// Decides and, when it executes, records the payment and schedules its callback.
    pub async fn submit(self: &Arc<Self>, order: Order) -> Decision {
        let account = order.account.as_str().to_owned();
        let knobs = self.knobs(&account);
        self.latency(&knobs).await;
        if knobs.outage {
            self.count(&account, |c| &c.outage_rejections);
            return Decision::Outage;
        }
        if chance(knobs.rate_limit_rate) {
            self.count(&account, |c| &c.rate_limited);
            return Decision::RateLimited;
        }
        if chance(knobs.error_rate) {
            self.count(&account, |c| &c.errors_injected);
            return Decision::ServerError;
        }
        if chance(knobs.timeout_rate) {
            self.count(&account, |c| &c.timeouts_injected);
            self.hang(&knobs).await;
            return Decision::Hung;
        }
        let decision = self.execute(order, &knobs);
        if matches!(decision, Decision::Accepted(_)) && chance(knobs.lost_response_rate) {
            self.count(&account, |c| &c.lost_responses);
            self.hang(&knobs).await;
            return Decision::Hung;
        }
        decision
    }

    async fn hang(&self, knobs: &Knobs) {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(knobs.hang_ms)) => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    /// The idempotent core: one execution per (account, reference), decided under the lock.
    fn execute(self: &Arc<Self>, order: Order, knobs: &Knobs) -> Decision {
        let account = order.account.as_str().to_owned();
        let key = (order.account.clone(), order.reference.clone());
        let (decision, fresh, elsewhere) = {
            let mut book = lock(&self.book);
            if let Some(existing) = book.records.get(&key) {
                let decision = if existing.order != order {
                    Decision::Conflict
                } else if let Some(status) = duplicate_refusal(knobs) {
                    Decision::DuplicateRefused(status)
                } else if existing.declined() {
                    Decision::Declined(existing.clone())
                } else {
                    Decision::Accepted(existing.clone())
                };
                (decision, false, false)
            } else {
                let provider_reference = provider_reference(order.protocol, self.next_id());
                let (declined, state) = if order.needs_action {
                    (false, RecordState::AwaitingAction)
                } else if chance(knobs.decline_rate) {
                    (true, RecordState::Final(decline()))
                } else {
                    (false, decided_state(knobs))
                };
                let record = Record {
                    order,
                    provider_reference,
                    state,
                    executed_at: Utc::now(),
                };
                let elsewhere = !declined && book.executed_by_other(&key.0, &key.1);
                book.insert(record.clone());
                (
                    if declined {
                        Decision::Declined(record)
                    } else {
                        Decision::Accepted(record)
                    },
                    true,
                    elsewhere,
                )
            }
        };
        if elsewhere {
            self.count(&account, |c| &c.executed_elsewhere);
            tracing::warn!(%account, "reference already executed by another account");
        }
        match (&decision, fresh) {
            (Decision::DuplicateRefused(_), false) => {
                self.count(&account, |c| &c.duplicates_suppressed);
                self.count(&account, |c| &c.duplicate_references_refused);
            }
            (_, false) => self.count(&account, |c| &c.duplicates_suppressed),
            (Decision::Declined(_), true) => self.count(&account, |c| &c.declines),
            (Decision::Accepted(record), true) if record.state == RecordState::AwaitingAction => {
                self.count(&account, |c| &c.actions_required);
            }
            (Decision::Accepted(record), true) => {
                self.count(&account, |c| &c.executions);
                if knobs.callbacks_enabled {
                    delivery::schedule(
                        self,
                        Delivery::plan(record, knobs, self.next_id(), Utc::now()),
                    );
                }
                if chance(knobs.execute_then_error_rate) {
                    self.count(&account, |c| &c.executed_then_errored);
                    return Decision::ExecutedThenError(
                        StatusCode::from_u16(knobs.execute_then_error_status)
                            .unwrap_or(StatusCode::BAD_GATEWAY),
                    );
                }
            }
            _ => {}
        }
        decision
    }
}

/// The provider's own id for a new payment, in each provider's documented shape.
fn provider_reference(protocol: Protocol, n: u64) -> String {
    match protocol {
        Protocol::Json => n.to_string(),
        Protocol::Soap => format!("SOAP-{n}"),
        Protocol::Protobuf => format!("pb_{n}"),
        Protocol::Paystack => crate::emulators::paystack::provider_reference(n),
        Protocol::Mpesa => crate::emulators::mpesa::provider_reference(n),
        Protocol::Stripe => crate::emulators::stripe::provider_reference(n),
    }
}

/// A refusal by the customer's bank (`decline_rate`): at submission, or on the provider's
/// page after the customer's step. [`Record::declined`] recognises it by its code.
fn decline() -> ReportedStatus {
    ReportedStatus::Failed {
        code: "declined".into(),
        reason: "Do not honor".into(),
    }
}

/// The outcome an executed payment will announce, rolled from the callback knobs.
fn decided_state(knobs: &Knobs) -> RecordState {
    let outcome = if chance(knobs.callback_failure_rate) {
        ReportedStatus::Failed {
            code: "insufficient_funds".into(),
            reason: "Insufficient funds".into(),
        }
    } else {
        ReportedStatus::Succeeded
    };
    RecordState::Pending { outcome }
}

/// The refusal status for a repeated reference, when `duplicate_reference_status` is set.
fn duplicate_refusal(knobs: &Knobs) -> Option<StatusCode> {
    knobs
        .duplicate_reference_status
        .map(|status| StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT))
}

/// True with probability `rate`.
pub fn chance(rate: f64) -> bool {
    rate > 0.0 && (rate >= 1.0 || rand::rng().random_bool(rate))
}

/// Microseconds since the Unix epoch: a start for the id sequence that a restarted sandbox
/// never repeats (ids are handed out far slower than one per microsecond on average).
fn first_sequence() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1_000_000)
}
