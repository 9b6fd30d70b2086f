//! The money-safety fault knobs over real HTTP, per protocol: the exact answer shapes, and
//! that each payment is executed exactly once whatever the answer said.

mod support;

use std::time::{Duration, Instant};

use paygate_core::domain::{TransactionId, TransactionKind};
use paygate_sandbox::admin_client::AdminError;
use paygate_sandbox::Outcome;
use serde_json::json;
use support::{eventually, Proto, Receiver, Status, World, ALL};

/// Executed, then a load balancer's bare 5xx in every protocol; the status endpoint and a
/// resubmission both see the one execution, and the callback goes out as usual.
#[tokio::test]
async fn execute_then_error_executes_once_and_answers_a_bare_5xx() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| false).await?;
    let world = World::start(&receiver.url).await?;
    for (proto, status, line) in [
        (Proto::Json, 502, "502 Bad Gateway"),
        (Proto::Soap, 503, "503 Service Unavailable"),
        (Proto::Protobuf, 500, "500 Internal Server Error"),
    ] {
        let account = format!("ete-{}", proto.name());
        world
            .admin
            .patch_account_knobs(
                &account,
                json!({
                    "execute_then_error_rate": 1.0,
                    "execute_then_error_status": status,
                    "callback_delay_ms": 0,
                }),
            )
            .await?;
        let reference = TransactionId::new();
        let answer = world.deposit(proto, &account, &reference, 1234).await?;
        assert_eq!(answer.status, status, "{proto:?}: {}", answer.text());
        assert!(
            answer.content_type.starts_with("text/plain"),
            "{proto:?}: {}",
            answer.content_type
        );
        assert_eq!(answer.text(), line, "{proto:?}");
        assert_eq!(
            answer.error_code(proto),
            None,
            "{proto:?} not in provider shape"
        );

        // The status endpoint knows the payment: it was executed.
        assert!(
            matches!(
                world.status(proto, &account, &reference).await?,
                Status::Found { .. }
            ),
            "{proto:?}"
        );
        // Resubmitting the same reference replays the record (200), never a second execution.
        let again = world.deposit(proto, &account, &reference, 1234).await?;
        assert_eq!(again.status, 200, "{proto:?}: {}", again.text());
        assert!(again.is_protocol_shape(proto), "{proto:?}");

        let delivered = eventually(Duration::from_secs(10), || async {
            Ok(world.stats(&account).await?.callbacks_sent == 1)
        })
        .await?;
        assert!(delivered, "{proto:?}: the callback of the executed payment");
        let stats = world.stats(&account).await?;
        assert_eq!(stats.requests, 2, "{proto:?}");
        assert_eq!(stats.executions, 1, "{proto:?}");
        assert_eq!(stats.executed_then_errored, 1, "{proto:?}");
        assert_eq!(stats.duplicates_suppressed, 1, "{proto:?}");
        assert_eq!(stats.errors_injected, 0, "{proto:?}");
    }
    assert_eq!(receiver.attempts(), 3);
    assert_eq!(world.admin.stats().await?.total.executed_then_errored, 3);
    world.stop().await
}

/// A lagging status endpoint says "not found" (in each protocol's own way) after the
/// payment was executed, then the truth once the lag is over.
#[tokio::test]
async fn status_lags_behind_execution_then_tells_the_truth() -> anyhow::Result<()> {
    const LAG_MS: u64 = 1_500;
    let world = World::quiet().await?;
    for proto in ALL {
        let account = format!("lag-{}", proto.name());
        world
            .admin
            .patch_account_knobs(
                &account,
                json!({"status_not_found_for_ms": LAG_MS, "callbacks_enabled": false}),
            )
            .await?;
        let reference = TransactionId::new();
        let before = Instant::now();
        let answer = world.deposit(proto, &account, &reference, 500).await?;
        assert_eq!(answer.status, 200, "{proto:?}: {}", answer.text());
        assert_eq!(
            world.status(proto, &account, &reference).await?,
            Status::NotFound,
            "{proto:?} right after execution"
        );
        let found = eventually(Duration::from_secs(15), || async {
            Ok(world.status(proto, &account, &reference).await? != Status::NotFound)
        })
        .await?;
        assert!(found, "{proto:?}: the lag never ended");
        // The truth never shows before the lag is over (a lower bound: cannot flake).
        assert!(
            before.elapsed() >= Duration::from_millis(LAG_MS),
            "{proto:?}"
        );
        let stats = world.stats(&account).await?;
        assert_eq!(stats.executions, 1, "{proto:?}");
        assert!(stats.status_queries >= 2, "{proto:?}");
    }
    world.stop().await
}

/// With `duplicate_reference_status` set, a repeat is refused in the protocol's own error
/// shape with code `duplicate_reference`, and still never executed twice.
#[tokio::test]
async fn duplicate_reference_is_refused_in_each_protocols_shape() -> anyhow::Result<()> {
    let world = World::quiet().await?;
    for (proto, status) in [
        (Proto::Json, 400),
        (Proto::Soap, 409),
        (Proto::Protobuf, 422),
    ] {
        let account = format!("dup-{}", proto.name());
        world
            .admin
            .patch_account_knobs(
                &account,
                json!({"duplicate_reference_status": status, "callbacks_enabled": false}),
            )
            .await?;
        let reference = TransactionId::new();
        let first = world.deposit(proto, &account, &reference, 700).await?;
        assert_eq!(first.status, 200, "{proto:?}: {}", first.text());
        for _ in 0..2 {
            let repeat = world.deposit(proto, &account, &reference, 700).await?;
            assert_eq!(repeat.status, status, "{proto:?}: {}", repeat.text());
            assert!(
                repeat.is_protocol_shape(proto),
                "{proto:?}: {}",
                repeat.content_type
            );
            assert_eq!(
                repeat.error_code(proto).as_deref(),
                Some("duplicate_reference"),
                "{proto:?}: {}",
                repeat.text()
            );
            if proto == Proto::Json {
                let body: serde_json::Value = serde_json::from_slice(&repeat.body)?;
                assert_eq!(
                    body,
                    json!({
                        "status": false,
                        "message": "Duplicate Transaction Reference",
                        "code": "duplicate_reference",
                    })
                );
            }
        }
        let stats = world.stats(&account).await?;
        assert_eq!(stats.executions, 1, "{proto:?}");
        assert_eq!(stats.duplicates_suppressed, 2, "{proto:?}");
        assert_eq!(stats.duplicate_references_refused, 2, "{proto:?}");

        // Switched off again, a repeat replays the record.
        world
            .admin
            .patch_account_knobs(&account, json!({"duplicate_reference_status": null}))
            .await?;
        let replay = world.deposit(proto, &account, &reference, 700).await?;
        assert_eq!(replay.status, 200, "{proto:?}: {}", replay.text());
        let stats = world.stats(&account).await?;
        assert_eq!(
            (stats.executions, stats.duplicate_references_refused),
            (1, 2)
        );
    }
    world.stop().await
}

/// The same reference executed by a second account counts `executed_elsewhere` on that
/// account (a decline elsewhere is not an execution), and the references report lists both.
#[tokio::test]
async fn executed_elsewhere_counts_a_second_accounts_execution() -> anyhow::Result<()> {
    let world = World::quiet().await?;
    let quiet = json!({"callbacks_enabled": false});
    for account in ["else-a", "else-b", "else-c"] {
        world
            .admin
            .patch_account_knobs(account, quiet.clone())
            .await?;
    }
    world
        .admin
        .patch_account_knobs(
            "else-declines",
            json!({"callbacks_enabled": false, "decline_rate": 1.0}),
        )
        .await?;

    // Declined on one gateway, then paid on another: one execution, nothing elsewhere.
    let reference = TransactionId::new();
    let declined = world
        .deposit(Proto::Json, "else-declines", &reference, 900)
        .await?;
    assert_eq!(declined.status, 402, "{}", declined.text());
    let paid = world
        .deposit(Proto::Soap, "else-a", &reference, 900)
        .await?;
    assert_eq!(paid.status, 200, "{}", paid.text());
    assert_eq!(world.admin.stats().await?.total.executed_elsewhere, 0);

    // Paid again on a second gateway: the double payment paygate must never cause.
    let twice = world
        .deposit(Proto::Protobuf, "else-b", &reference, 900)
        .await?;
    assert_eq!(twice.status, 200);
    // A repeat on the same account is a duplicate, not an execution elsewhere.
    world
        .deposit(Proto::Protobuf, "else-b", &reference, 900)
        .await?;
    let report = world.admin.stats().await?;
    assert_eq!(report.accounts["else-a"].executed_elsewhere, 0);
    assert_eq!(report.accounts["else-b"].executed_elsewhere, 1);
    assert_eq!(report.accounts["else-b"].executions, 1);
    assert_eq!(report.total.executed_elsewhere, 1);

    // An unrelated reference on a third account does not count.
    world
        .deposit(Proto::Json, "else-c", &TransactionId::new(), 900)
        .await?;
    assert_eq!(world.admin.stats().await?.total.executed_elsewhere, 1);

    let refs = world.admin.reference(&reference).await?;
    assert_eq!(refs.reference, reference.to_string());
    let accounts: Vec<&str> = refs.executions.iter().map(|e| e.account.as_str()).collect();
    assert_eq!(accounts, ["else-declines", "else-a", "else-b"]);
    let outcomes: Vec<Outcome> = refs.executions.iter().map(|e| e.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Failed, Outcome::Pending, Outcome::Pending]
    );
    world.stop().await
}

/// `GET /_admin/references/{reference}`: every field, the empty list, the 400, and the
/// outcome turning from pending to announced when the callback goes out.
#[tokio::test]
async fn references_report_what_every_provider_did() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| false).await?;
    let world = World::start(&receiver.url).await?;

    let unknown = TransactionId::new();
    let empty = world.admin.reference(&unknown).await?;
    assert_eq!(
        (empty.reference, empty.executions.len()),
        (unknown.to_string(), 0)
    );
    let bad = world
        .admin
        .raw(
            reqwest::Method::GET,
            &format!("references/{}", "r".repeat(257)),
        )
        .send()
        .await?;
    assert_eq!(bad.status(), 400);

    // A withdrawal whose callback is held back: pending, decided succeeded.
    world
        .admin
        .patch_account_knobs("refs-proto", json!({"callback_delay_ms": 60_000}))
        .await?;
    let reference = TransactionId::new();
    let started = chrono::Utc::now();
    let answer = world
        .pay(Proto::Protobuf, "refs-proto", &reference, 4_321, true)
        .await?;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let report = world.admin.reference(&reference).await?;
    let [execution] = report.executions.as_slice() else {
        anyhow::bail!("expected one execution, got {report:?}");
    };
    assert_eq!(execution.account, "refs-proto");
    assert!(execution.provider_reference.starts_with("pb_"));
    assert_eq!(execution.kind, TransactionKind::Withdrawal);
    assert_eq!(
        (execution.amount, execution.currency.as_str()),
        (4_321, "EUR")
    );
    assert_eq!(
        (execution.outcome, execution.announced, execution.decided),
        (Outcome::Pending, false, Outcome::Succeeded)
    );
    assert!(execution.executed_at >= started - chrono::Duration::seconds(1));
    // The raw JSON has exactly the documented names.
    let raw: serde_json::Value = world
        .admin
        .raw(reqwest::Method::GET, &format!("references/{reference}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(raw["reference"], json!(reference.to_string()));
    assert_eq!(raw["executions"][0]["kind"], json!("withdrawal"));
    assert_eq!(raw["executions"][0]["outcome"], json!("pending"));
    assert_eq!(raw["executions"][0]["announced"], json!(false));
    assert!(raw["executions"][0]["executed_at"].is_string());

    // A JSON deposit whose callback goes out: announced, succeeded.
    world
        .admin
        .patch_account_knobs("refs-json", json!({"callback_delay_ms": 0}))
        .await?;
    let deposit = TransactionId::new();
    world
        .deposit(Proto::Json, "refs-json", &deposit, 100)
        .await?;
    let announced = eventually(Duration::from_secs(10), || async {
        let report = world.admin.reference(&deposit).await?;
        Ok(report
            .executions
            .first()
            .is_some_and(|e| e.announced && e.outcome == Outcome::Succeeded))
    })
    .await?;
    assert!(announced);
    let report = world.admin.reference(&deposit).await?;
    assert_eq!(report.executions.len(), 1);
    assert_eq!(report.executions[0].kind, TransactionKind::Deposit);

    // reset forgets records.
    world.admin.reset().await?;
    assert!(world.admin.reference(&deposit).await?.executions.is_empty());
    world.stop().await
}

/// The JSON verify answer reports one minor unit more than executed when told to; the
/// payment itself is untouched.
#[tokio::test]
async fn mismatched_status_reports_one_unit_more_in_json() -> anyhow::Result<()> {
    let world = World::quiet().await?;
    world
        .admin
        .patch_account_knobs(
            "mis-json",
            json!({"mismatched_status_rate": 1.0, "callbacks_enabled": false}),
        )
        .await?;
    let reference = TransactionId::new();
    let answer = world
        .deposit(Proto::Json, "mis-json", &reference, 1_000)
        .await?;
    assert_eq!(answer.status, 200);
    assert_eq!(
        world.status(Proto::Json, "mis-json", &reference).await?,
        Status::Found {
            amount: Some(1_001)
        }
    );
    let stats = world.stats("mis-json").await?;
    assert_eq!((stats.executions, stats.statuses_mismatched), (1, 1));
    let report = world.admin.reference(&reference).await?;
    assert_eq!(report.executions[0].amount, 1_000);

    world
        .admin
        .patch_account_knobs("mis-json", json!({"mismatched_status_rate": 0.0}))
        .await?;
    assert_eq!(
        world.status(Proto::Json, "mis-json", &reference).await?,
        Status::Found {
            amount: Some(1_000)
        }
    );
    assert_eq!(world.stats("mis-json").await?.statuses_mismatched, 1);
    world.stop().await
}

/// Bad knob values are refused by the admin API (400), and the client says so.
#[tokio::test]
async fn admin_refuses_out_of_range_knobs() -> anyhow::Result<()> {
    let world = World::quiet().await?;
    for patch in [
        json!({"execute_then_error_status": 404}),
        json!({"duplicate_reference_status": 500}),
        json!({"mismatched_status_rate": 1.5}),
        json!({"callback_backoff_ms": 5_000, "callback_backoff_max_ms": 1_000}),
    ] {
        match world
            .admin
            .patch_account_knobs("knobs", patch.clone())
            .await
        {
            Err(AdminError::Refused { status: 400, .. }) => {}
            other => anyhow::bail!("{patch} gave {other:?}"),
        }
    }
    let knobs = world
        .admin
        .patch_account_knobs("knobs", json!({"status_not_found_for_ms": 250}))
        .await?;
    assert_eq!(knobs.status_not_found_for_ms, 250);
    assert_eq!(knobs.execute_then_error_status, 502);
    world.stop().await
}
