//! Every built-in connector passes the conformance suite over real HTTP to the sandbox,
//! and the sandbox's counters prove at-most-once execution and callback retries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use paygate_core::domain::{
    CustomerReference, GatewayName, MerchantId, Money, NewTransaction, Transaction, TransactionKind,
};
use paygate_gateways::conformance::{self, ConformanceConfig};
use paygate_gateways::{GatewayError, GatewayRegistry, PaymentGateway};
use paygate_testkit::admin::{AdminClient, StatsReport};
use paygate_testkit::services::{sandbox_gateway, sandbox_settings, spawn_sandbox};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A sandbox on port 0 (from the test kit) and the token that stops it.
async fn sandbox(callback_base_url: &str) -> (String, CancellationToken) {
    let sandbox = spawn_sandbox(sandbox_settings(callback_base_url))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (shutdown, _task) = sandbox.running.into_parts();
    (sandbox.url, shutdown)
}

fn registry(sandbox_url: &str, kinds: &[(&str, &str)]) -> GatewayRegistry {
    let tables: BTreeMap<String, _> = kinds
        .iter()
        .map(|(name, kind)| {
            let table = sandbox_gateway(sandbox_url, name, kind, &json!({"timeout_ms": 1000}))
                .unwrap_or_else(|e| panic!("{e:#}"));
            (name.to_string(), table)
        })
        .collect();
    GatewayRegistry::from_config(&tables).unwrap_or_else(|e| panic!("{e}"))
}

fn gateway(registry: &GatewayRegistry, name: &str) -> Arc<dyn PaymentGateway> {
    let name = GatewayName::parse(name).unwrap_or_else(|e| panic!("{e}"));
    registry
        .get(&name)
        .unwrap_or_else(|| panic!("{name} not registered"))
}

async fn conform(kind: &str) {
    let (url, shutdown) = sandbox("http://127.0.0.1:9").await;
    let name = format!("conf-{kind}");
    let registry = registry(&url, &[(&name, kind)]);
    let mut config = ConformanceConfig::new(&url);
    config.hang = Duration::from_secs(3);
    let report = conformance::run(gateway(&registry, &name).as_ref(), &config).await;
    shutdown.cancel();
    println!("{report}");
    assert!(report.passed(), "{report}");
    assert!(report.checks.len() >= 20, "{report}");
}

#[tokio::test]
async fn json_connector_conforms() {
    conform("sandbox-json").await;
}

#[tokio::test]
async fn soap_connector_conforms() {
    conform("sandbox-soap").await;
}

#[tokio::test]
async fn protobuf_connector_conforms() {
    conform("sandbox-proto").await;
}

fn transaction() -> Transaction {
    Transaction::create(
        NewTransaction {
            merchant_id: MerchantId::new(),
            kind: TransactionKind::Deposit,
            money: Money::from_parts(777, "EUR").unwrap_or_else(|e| panic!("{e}")),
            customer: CustomerReference::parse("cust_dupe").unwrap_or_else(|e| panic!("{e}")),
            gateway: None,
            callback_url: None,
            metadata: json!({}),
        },
        Utc::now(),
    )
}

fn admin(url: &str) -> AdminClient {
    AdminClient::new(url).unwrap_or_else(|e| panic!("{e}"))
}

async fn stats(url: &str) -> StatsReport {
    admin(url).stats().await.unwrap_or_else(|e| panic!("{e}"))
}

async fn knobs(url: &str, account: &str, knobs: serde_json::Value) {
    admin(url)
        .put_account_knobs(account, knobs)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A retried request with the same reference is executed once, whether the retry follows a
/// lost response or races the first attempt.
#[tokio::test]
async fn same_reference_executes_once_and_duplicates_are_counted() {
    let (url, shutdown) = sandbox("http://127.0.0.1:9").await;
    let registry = registry(
        &url,
        &[
            ("dupe-json", "sandbox-json"),
            ("dupe-proto", "sandbox-proto"),
        ],
    );

    // Lost response, then a retry: Ambiguous, then answered from the record.
    knobs(
        &url,
        "dupe-json",
        json!({"lost_response_rate": 1.0, "hang_ms": 3000, "callbacks_enabled": false}),
    )
    .await;
    let json_gateway = gateway(&registry, "dupe-json");
    let tx = transaction();
    assert!(matches!(
        json_gateway.deposit(&tx).await,
        Err(GatewayError::Ambiguous { .. })
    ));
    knobs(&url, "dupe-json", json!({"callbacks_enabled": false})).await;
    let retry = json_gateway
        .deposit(&tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let again = json_gateway
        .deposit(&tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(retry.provider_reference, again.provider_reference);

    // Ten concurrent attempts with one reference.
    knobs(
        &url,
        "dupe-proto",
        json!({"callbacks_enabled": false, "latency_min_ms": 5, "latency_max_ms": 20}),
    )
    .await;
    let proto_gateway = gateway(&registry, "dupe-proto");
    let tx2 = transaction();
    let attempts: Vec<_> = (0..10).map(|_| proto_gateway.deposit(&tx2)).collect();
    let results = futures_join(attempts).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let report = stats(&url).await;
    shutdown.cancel();
    let json_stats = report.accounts["dupe-json"];
    assert_eq!(
        (
            json_stats.requests,
            json_stats.executions,
            json_stats.duplicates_suppressed
        ),
        (3, 1, 2)
    );
    assert_eq!(json_stats.lost_responses, 1);
    let proto_stats = report.accounts["dupe-proto"];
    assert_eq!(
        (
            proto_stats.requests,
            proto_stats.executions,
            proto_stats.duplicates_suppressed
        ),
        (10, 1, 9)
    );
    assert_eq!(report.total.executions, 2);
}

async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut handles = Vec::new();
    for f in futures {
        handles.push(f);
    }
    let mut out = Vec::new();
    // Poll them concurrently.
    let joined = futures_util_join_all(handles).await;
    out.extend(joined);
    out
}

async fn futures_util_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::pin::Pin;
    let mut pinned: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// paygate answering non-2xx makes the sandbox retry the callback, as a real provider would.
#[tokio::test]
async fn callbacks_are_retried_until_acknowledged() {
    let refusals = Arc::new(AtomicU32::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let receiver = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let counter = Arc::clone(&refusals);
    let app = axum::Router::new().route(
        "/callbacks/{gateway}",
        axum::routing::post(move || {
            let counter = Arc::clone(&counter);
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (url, shutdown) = sandbox(&receiver).await;
    let registry = registry(&url, &[("retry-soap", "sandbox-soap")]);
    knobs(
        &url,
        "retry-soap",
        json!({"callback_delay_ms": 0, "callback_backoff_ms": 20, "callback_backoff_max_ms": 40}),
    )
    .await;
    gateway(&registry, "retry-soap")
        .deposit(&transaction())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut report = stats(&url).await;
    for _ in 0..50 {
        if report.total.callbacks_sent > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        report = stats(&url).await;
    }
    shutdown.cancel();
    assert_eq!(report.total.callbacks_sent, 1);
    assert_eq!(report.total.callback_retries, 2);
    assert_eq!(report.total.callbacks_failed, 0);
    assert_eq!(refusals.load(Ordering::SeqCst), 3);
}
