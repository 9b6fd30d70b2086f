//! Webhook signing secrets sealed at rest (issue 17), against the real Postgres: what a copy
//! of the database shows, what an altered or moved value does, and the key rotation and
//! legacy sealing passes (`paygate secrets rotate-key`, `paygate migrate`).

use std::time::Duration;

use base64::Engine;
use paygate_core::db::webhooks::reseal::{self, ClearRows, SecretTable};
use paygate_core::db::webhooks::{self};
use paygate_core::db::{merchants, webhook_endpoints, DbError};
use paygate_core::keyring::{KeyId, Keyring, SealError};
use paygate_core::testing::fresh_database;
use sqlx::PgPool;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn keyring(current: &str, keys: &[(&str, u8)]) -> Result<Keyring, Box<dyn std::error::Error>> {
    let id = |s: &str| KeyId::parse(s).ok_or_else(|| format!("key id {s}"));
    let mut ring = Vec::new();
    for (k, byte) in keys {
        ring.push((id(k)?, [*byte; 32]));
    }
    Ok(Keyring::new(id(current)?, ring)?)
}

/// Every stored secret value of both tables, as a copy of the database would show them.
async fn raw_secrets(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT v FROM (
             SELECT secret AS v FROM webhook_endpoints UNION ALL SELECT previous_secret FROM webhook_endpoints
             UNION ALL SELECT secret FROM merchant_webhook_secrets
             UNION ALL SELECT previous_secret FROM merchant_webhook_secrets) s
         WHERE v IS NOT NULL",
    )
    .fetch_all(pool)
    .await
}

fn unreadable(result: Result<impl Sized, DbError>) -> Option<SealError> {
    match result {
        Err(DbError::Secret { source, .. }) => Some(source),
        _ => None,
    }
}

#[tokio::test]
async fn a_copy_of_the_database_holds_no_secret() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let keys = keyring("a", &[("a", 1)])?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let endpoint =
        webhook_endpoints::create(&pool, &keys, merchant, "https://shop.example/hook", None)
            .await?;
    let default = webhooks::merchant_default_secret(&pool, &keys, merchant).await?;
    let hour = Duration::from_secs(3_600);
    let rotated = webhooks::rotate_endpoint_secret(&pool, &keys, merchant, endpoint.id, hour)
        .await?
        .ok_or("endpoint not rotated")?;
    let default_rotated =
        webhooks::rotate_merchant_default_secret(&pool, &keys, merchant, hour).await?;

    let stored = raw_secrets(&pool).await?;
    assert_eq!(stored.len(), 4, "two secrets and two previous ones");
    let shown = [
        endpoint.secret.expose(),
        default.expose(),
        rotated.expose(),
        default_rotated.expose(),
    ];
    for value in &stored {
        assert!(value.starts_with("v1:a:"), "{value}");
        assert!(!value.contains("whsec_"), "{value}");
        let envelope = base64::engine::general_purpose::STANDARD
            .decode(value.trim_start_matches("v1:a:"))
            .unwrap_or_default();
        for secret in shown {
            let body = secret.trim_start_matches("whsec_");
            let key = base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap_or_default();
            assert!(!value.contains(body), "base64 of a secret stored");
            assert!(
                !envelope.windows(key.len()).any(|w| w == key.as_slice()),
                "key bytes of a secret stored"
            );
        }
    }
    // The constraints admit only envelopes, and were checked against every row.
    let valid: Vec<(String, bool)> = sqlx::query_as(
        "SELECT conname::text, convalidated FROM pg_constraint WHERE conname LIKE '%secret_sealed' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(valid.len(), 4);
    assert!(valid.iter().all(|(_, v)| *v), "{valid:?}");
    let clear = sqlx::query("UPDATE merchant_webhook_secrets SET secret = 'whsec_AAAA'")
        .execute(&pool)
        .await;
    assert!(clear.is_err(), "a clear write is refused by Postgres");

    // And the secrets read back are the ones shown.
    let read = webhook_endpoints::get_for_merchant(&pool, &keys, merchant, endpoint.id)
        .await?
        .ok_or("endpoint gone")?;
    assert_eq!(read.secret.expose(), rotated.expose());
    assert_eq!(
        webhooks::merchant_default_secret(&pool, &keys, merchant)
            .await?
            .expose(),
        default_rotated.expose()
    );
    Ok(())
}

#[tokio::test]
async fn an_altered_or_moved_ciphertext_does_not_open() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let keys = keyring("a", &[("a", 1)])?;
    let (mine, theirs) = (
        merchants::create(&pool, "mine").await?.id,
        merchants::create(&pool, "theirs").await?.id,
    );
    let url = "https://shop.example/hook";
    let my_endpoint = webhook_endpoints::create(&pool, &keys, mine, url, None).await?;
    let their_endpoint = webhook_endpoints::create(&pool, &keys, theirs, url, None).await?;
    webhooks::merchant_default_secret(&pool, &keys, mine).await?;
    webhooks::merchant_default_secret(&pool, &keys, theirs).await?;

    // Their sealed secret copied onto my endpoint (someone with write access to the table
    // wanting deliveries signed with a secret they know): it does not open.
    sqlx::query(
        "UPDATE webhook_endpoints SET secret = (SELECT secret FROM webhook_endpoints WHERE id = $2) WHERE id = $1",
    )
    .bind(my_endpoint.id.as_uuid())
    .bind(their_endpoint.id.as_uuid())
    .execute(&pool)
    .await?;
    let read = webhook_endpoints::get_for_merchant(&pool, &keys, mine, my_endpoint.id).await;
    assert_eq!(unreadable(read), Some(SealError::Unauthentic));
    // The same between merchants' default secrets.
    sqlx::query(
        "UPDATE merchant_webhook_secrets SET secret = (SELECT secret FROM merchant_webhook_secrets WHERE merchant_id = $2)
         WHERE merchant_id = $1",
    )
    .bind(mine.as_uuid())
    .bind(theirs.as_uuid())
    .execute(&pool)
    .await?;
    let read = webhooks::merchant_default_secret(&pool, &keys, mine).await;
    assert_eq!(unreadable(read), Some(SealError::Unauthentic));

    // One character of their endpoint's ciphertext changed.
    sqlx::query(
        "UPDATE webhook_endpoints
         SET secret = left(secret, 10) || CASE WHEN substr(secret, 11, 1) = 'A' THEN 'B' ELSE 'A' END || substr(secret, 12)
         WHERE id = $1",
    )
    .bind(their_endpoint.id.as_uuid())
    .execute(&pool)
    .await?;
    let read = webhook_endpoints::get_for_merchant(&pool, &keys, theirs, their_endpoint.id).await;
    assert_eq!(unreadable(read), Some(SealError::Unauthentic));
    // Rotating a secret that does not open is refused too (nothing is re-sealed from it).
    let rotate = webhooks::rotate_endpoint_secret(
        &pool,
        &keys,
        theirs,
        their_endpoint.id,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(unreadable(rotate), Some(SealError::Unauthentic));
    Ok(())
}

#[tokio::test]
async fn rotating_the_key_keeps_every_read_working_and_then_the_old_key_can_go() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let only_a = keyring("a", &[("a", 1)])?;
    let b_current = keyring("b", &[("a", 1), ("b", 2)])?;
    let only_b = keyring("b", &[("b", 2)])?;
    let merchant = merchants::create(&pool, "shop").await?.id;
    let mut endpoints = Vec::new();
    for n in 0..5 {
        let url = format!("https://shop{n}.example/hook");
        endpoints.push(webhook_endpoints::create(&pool, &only_a, merchant, &url, None).await?);
    }
    webhooks::rotate_endpoint_secret(
        &pool,
        &only_a,
        merchant,
        endpoints[0].id,
        Duration::from_secs(3_600),
    )
    .await?;
    let default = webhooks::merchant_default_secret(&pool, &only_a, merchant).await?;
    let before = webhook_endpoints::list_enabled(&pool, &only_a, merchant).await?;

    // B is made current, A kept: everything still reads, new writes are under B.
    assert_eq!(
        webhook_endpoints::list_enabled(&pool, &b_current, merchant).await?,
        before
    );
    // The pass, two rows per batch; a second run finds nothing left (idempotent, resumable).
    let endpoints_pass = reseal::reseal_table(
        &pool,
        &b_current,
        SecretTable::WebhookEndpoints,
        2,
        ClearRows::Refuse,
    )
    .await?;
    assert_eq!(
        (endpoints_pass.resealed, endpoints_pass.failed.len()),
        (5, 0)
    );
    let defaults_pass = reseal::reseal_table(
        &pool,
        &b_current,
        SecretTable::MerchantWebhookSecrets,
        2,
        ClearRows::Refuse,
    )
    .await?;
    assert_eq!(defaults_pass.resealed, 1);
    for table in SecretTable::ALL {
        let again = reseal::reseal_table(&pool, &b_current, table, 2, ClearRows::Refuse).await?;
        assert_eq!(again, reseal::ResealReport::default(), "{table:?}");
    }
    assert!(raw_secrets(&pool)
        .await?
        .iter()
        .all(|v| v.starts_with("v1:b:")));

    // A removed: the same secrets, previous one included.
    assert_eq!(
        webhook_endpoints::list_enabled(&pool, &only_b, merchant).await?,
        before
    );
    assert_eq!(
        webhooks::merchant_default_secret(&pool, &only_b, merchant).await?,
        default
    );
    // A keyring without the key a row is sealed under: a clear error naming the key id.
    let lost = webhook_endpoints::list_enabled(&pool, &only_a, merchant).await;
    assert_eq!(unreadable(lost), Some(SealError::UnknownKey("b".into())));
    let report = reseal::reseal_table(
        &pool,
        &keyring("c", &[("a", 1), ("c", 3)])?,
        SecretTable::WebhookEndpoints,
        100,
        ClearRows::Refuse,
    )
    .await?;
    assert_eq!(report.resealed, 0);
    assert_eq!(report.failed.len(), 5, "each row named, none changed");
    assert!(report
        .failed
        .iter()
        .all(|(_, e)| *e == SealError::UnknownKey("b".into())));
    Ok(())
}

#[tokio::test]
async fn rows_written_in_clear_are_never_read_as_secrets_and_migrate_seals_them() -> TestResult {
    let (pool, _) = fresh_database().await?;
    let keys = keyring("a", &[("a", 1)])?;
    let merchant = merchants::create(&pool, "legacy").await?.id;
    // A database from before sealing: the constraints back to NOT VALID, rows in clear.
    for (table, column) in [
        ("webhook_endpoints", "secret"),
        ("webhook_endpoints", "previous_secret"),
        ("merchant_webhook_secrets", "secret"),
        ("merchant_webhook_secrets", "previous_secret"),
    ] {
        sqlx::query(&format!(
            "ALTER TABLE {table} DROP CONSTRAINT {table}_{column}_sealed"
        ))
        .execute(&pool)
        .await?;
    }
    let endpoint = uuid::Uuid::now_v7();
    let (clear, clear_before) = (
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([7_u8; 32])
        ),
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode([8_u8; 32])
        ),
    );
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, merchant_id, url, secret, previous_secret, previous_secret_expires_at)
         VALUES ($1, $2, 'https://shop.example/hook', $3, $4, now() + interval '1 hour')",
    )
    .bind(endpoint)
    .bind(merchant.as_uuid())
    .bind(&clear)
    .bind(&clear_before)
    .execute(&pool)
    .await?;
    sqlx::query("INSERT INTO merchant_webhook_secrets (merchant_id, secret) VALUES ($1, $2)")
        .bind(merchant.as_uuid())
        .bind(&clear)
        .execute(&pool)
        .await?;
    for (table, column) in [
        ("webhook_endpoints", "secret"),
        ("webhook_endpoints", "previous_secret"),
        ("merchant_webhook_secrets", "secret"),
        ("merchant_webhook_secrets", "previous_secret"),
    ] {
        sqlx::query(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT {table}_{column}_sealed CHECK ({column} LIKE 'v1:%') NOT VALID"
        ))
        .execute(&pool)
        .await?;
    }

    // Read in clear: refused, never used as a secret.
    let read = webhook_endpoints::list_enabled(&pool, &keys, merchant).await;
    assert_eq!(unreadable(read), Some(SealError::Clear));
    // The default secret's insert-or-read touches the row, which the NOT VALID CHECK
    // re-checks: Postgres itself refuses before the value could be read.
    let read = webhooks::merchant_default_secret(&pool, &keys, merchant).await;
    assert!(read.is_err(), "a clear default secret was used");
    // A key rotation does not take them for secrets either.
    let refused = reseal::reseal_table(
        &pool,
        &keys,
        SecretTable::WebhookEndpoints,
        10,
        ClearRows::Refuse,
    )
    .await?;
    assert_eq!(refused.failed, vec![(endpoint, SealError::Clear)]);
    assert!(reseal::validate_sealed_only(&pool).await.is_err());

    // `paygate migrate`'s pass seals them, then the constraints validate.
    let mut sealed = 0;
    for table in SecretTable::ALL {
        let report = reseal::reseal_table(&pool, &keys, table, 10, ClearRows::Seal).await?;
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(report.were_clear, report.resealed);
        sealed += report.resealed;
    }
    assert_eq!(sealed, 2);
    reseal::validate_sealed_only(&pool).await?;
    assert!(raw_secrets(&pool)
        .await?
        .iter()
        .all(|v| !v.contains("whsec_")));
    let read = webhook_endpoints::list_enabled(&pool, &keys, merchant).await?;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].secret.expose(), clear);
    assert_eq!(
        webhooks::merchant_default_secret(&pool, &keys, merchant)
            .await?
            .expose(),
        clear
    );
    Ok(())
}
