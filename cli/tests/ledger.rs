//! `paygate ledger top-up|check` and `paygate merchants create-key --scope`, run as the
//! binary against a fresh database.

mod common;

use std::process::Output;

use common::paygate;
use paygate_core::config::Config;
use paygate_core::db::{ledger, merchants};
use paygate_core::domain::{Currency, Scope};
use sqlx::PgPool;

type TestResult = anyhow::Result<()>;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn world() -> anyhow::Result<(Config, PgPool)> {
    Ok(paygate_core::testing::isolated_config().await?)
}

#[tokio::test]
async fn a_top_up_funds_once_per_reference_and_the_check_names_a_broken_account() -> TestResult {
    let (config, pool) = world().await?;
    let merchant = merchants::create(&pool, "Ledger CLI").await?.id;
    let id = merchant.to_string();
    let top_up = |reference: &str, amount: &str| {
        paygate(
            &config,
            &[
                "ledger",
                "top-up",
                &id,
                amount,
                "USD",
                "--reference",
                reference,
            ],
        )
    };
    let first = top_up("wire-7", "125000")?;
    assert!(first.status.success(), "{}", text(&first));
    let repeat = top_up("wire-7", "125000")?;
    assert!(repeat.status.success(), "{}", text(&repeat));
    assert!(
        text(&repeat).contains("nothing new posted"),
        "{}",
        text(&repeat)
    );
    let reused = top_up("wire-7", "1")?;
    assert!(!reused.status.success());
    assert!(
        text(&reused).contains("already funded"),
        "{}",
        text(&reused)
    );
    let usd = Currency::parse("USD")?;
    assert_eq!(ledger::account(&pool, merchant, usd).await?, (125_000, 0));

    for (args, named) in [
        (
            vec!["ledger", "top-up", &id, "12.50", "USD", "--reference", "r"],
            "amount",
        ),
        (
            vec!["ledger", "top-up", &id, "-5", "USD", "--reference", "r"],
            "amount",
        ),
        (
            vec!["ledger", "top-up", &id, "100", "XYZ", "--reference", "r"],
            "currency",
        ),
        (
            vec![
                "ledger",
                "top-up",
                "mch_nope",
                "100",
                "USD",
                "--reference",
                "r",
            ],
            "merchant",
        ),
    ] {
        let out = paygate(&config, &args)?;
        assert!(!out.status.success(), "{args:?} succeeded");
        let said = text(&out).to_lowercase();
        assert!(said.contains(named), "{args:?}: {said}");
    }

    let clean = paygate(&config, &["ledger", "check"])?;
    assert!(clean.status.success(), "{}", text(&clean));
    sqlx::query("UPDATE ledger_accounts SET reserved = 10 WHERE merchant_id = $1")
        .bind(merchant.as_uuid())
        .execute(&pool)
        .await?;
    let broken = paygate(&config, &["ledger", "check"])?;
    assert!(!broken.status.success());
    let report = text(&broken);
    assert!(
        report.contains(&format!("merchant {} USD", merchant.as_uuid()))
            && report.contains("reserved equals the sum of its pending holds"),
        "{report}"
    );
    Ok(())
}

#[tokio::test]
async fn create_key_issues_a_key_with_only_the_scopes_named() -> TestResult {
    let (config, pool) = world().await?;
    let merchant = merchants::create(&pool, "Scoped").await?.id;
    let id = merchant.to_string();
    let out = paygate(
        &config,
        &[
            "merchants",
            "create-key",
            "--merchant",
            &id,
            "--scope",
            "read,payments:write",
        ],
    )?;
    assert!(out.status.success(), "{}", text(&out));
    let key_line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("api key").map(|k| k.trim().to_owned()))
        .ok_or_else(|| anyhow::anyhow!("no key printed: {}", text(&out)))?;
    let key = paygate_core::secret::ApiKey::parse(&key_line)?;
    let found = merchants::authenticate(&pool, &key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the printed key does not authenticate"))?;
    assert_eq!(found.scopes, vec![Scope::Read, Scope::PaymentsWrite]);

    let bad = paygate(
        &config,
        &[
            "merchants",
            "create-key",
            "--merchant",
            &id,
            "--scope",
            "payouts",
        ],
    )?;
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--scope"), "{}", text(&bad));
    Ok(())
}
