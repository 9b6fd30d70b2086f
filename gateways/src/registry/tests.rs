use super::*;
use serde_json::json;

/// Reads each table as the configuration does; the first problem's key on failure.
fn tables(entries: &[(&str, Value)]) -> Result<BTreeMap<String, GatewayConfig>, RegistryError> {
    entries
        .iter()
        .map(|(name, table)| {
            GatewayConfig::from_json(name, table.clone())
                .map(|config| (name.to_string(), config))
                .map_err(|e| match e.problems().first() {
                    Some(p) => RegistryError::from(p.clone()),
                    None => RegistryError::new("?", e.to_string()),
                })
        })
        .collect()
}

/// Tables read by the configuration, then built by the registry.
fn registry(entries: &[(&str, Value)]) -> Result<GatewayRegistry, RegistryError> {
    GatewayRegistry::from_config(&tables(entries)?)
}

fn settings(name: &str, table: Value) -> GatewaySettings {
    let config = GatewayConfig::from_json(name, table).unwrap_or_else(|e| panic!("{e}"));
    GatewaySettings::from_config(name, &config).unwrap_or_else(|e| panic!("{e}"))
}

fn valid(kind: &str) -> Value {
    json!({"kind": kind, "base_url": "http://127.0.0.1:8090/acct", "secret_key": "sk", "webhook_secret": "wh", "timeout_ms": "2500"})
}

#[test]
fn builds_every_kind_with_a_breaker_each() {
    let registry = registry(&[
        ("a-json", valid("sandbox-json")),
        ("b-soap", valid("sandbox-soap")),
        ("c-proto", valid("sandbox-proto")),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = registry.names().map(GatewayName::as_str).collect();
    assert_eq!(names, ["a-json", "b-soap", "c-proto"]);
    for name in registry.names() {
        assert_eq!(
            registry.get(name).map(|g| g.name().clone()),
            Some(name.clone())
        );
        assert_eq!(
            registry.breaker(name).map(|b| b.gateway().clone()),
            Some(name.clone())
        );
    }
    assert!(registry
        .get(&GatewayName::parse("nope").unwrap_or_else(|e| panic!("{e}")))
        .is_none());
}

#[test]
fn bad_tables_name_the_field() {
    let cases = [
        (
            json!({"base_url": "https://x", "secret_key": "s"}),
            "gateways.gw.kind",
        ),
        (
            json!({"kind": "carrier-pigeon", "base_url": "https://x", "secret_key": "s"}),
            "gateways.gw.kind",
        ),
        (
            json!({"kind": "sandbox-json", "base_url": "not a url", "secret_key": "s"}),
            "gateways.gw.base_url",
        ),
        (
            json!({"kind": "sandbox-json", "base_url": "ftp://x", "secret_key": "s"}),
            "gateways.gw.base_url",
        ),
        (
            json!({"kind": "sandbox-json", "base_url": "https://x"}),
            "gateways.gw.secret_key",
        ),
        (
            json!({"kind": "sandbox-json", "base_url": "https://x", "secret_key": ""}),
            "gateways.gw.secret_key",
        ),
        (
            json!({"kind": "sandbox-json", "base_url": "https://x", "secret_key": "s", "timeout_ms": 0}),
            "gateways.gw.timeout_ms",
        ),
        (
            json!({"kind": "sandbox-json", "base_url": "https://x", "secret_key": "s", "timeout_ms": 1.5}),
            "gateways.gw.timeout_ms",
        ),
        (
            json!({"kind": "sandbox-json", "base_url": "https://x", "secret_key": "s", "secret": "typo"}),
            "gateways.gw.secret",
        ),
        (
            json!({"kind": "sandbox-json", "base_url": "https://x", "secret_key": "s", "breaker": {"min_requests": 0}}),
            "gateways.gw.breaker.min_requests",
        ),
        (json!("json"), "gateways.gw"),
    ];
    for (table, path) in cases {
        let result = registry(&[("gw", table.clone())]);
        assert_eq!(
            result.map(|_| ()).map_err(|e| e.path),
            Err(path.to_owned()),
            "{table}"
        );
    }
    let bad_name = registry(&[("Bad Name", valid("sandbox-json"))]);
    assert_eq!(
        bad_name.map(|_| ()).map_err(|e| e.path),
        Err("gateways.Bad Name".to_owned())
    );
}

#[test]
fn settings_keep_the_base_path_and_never_print_secrets() {
    let settings = settings("gw", valid("sandbox-json"));
    assert_eq!(settings.base_url.as_str(), "http://127.0.0.1:8090/acct/");
    assert_eq!(settings.timeout, Duration::from_millis(2500));
    let shown = format!("{settings:?}");
    assert!(
        !shown.contains("\"sk\"") && !shown.contains("\"wh\""),
        "{shown}"
    );
    let defaulted = self::settings(
        "gw",
        json!({"kind": "sandbox-json", "base_url": "https://x", "secret_key": "sk"}),
    );
    assert_eq!(
        defaulted.webhook_secret.expose(),
        "sk",
        "Paystack signs webhooks with the secret key"
    );
}

#[test]
fn a_table_built_in_code_is_checked_too() {
    let mut table = GatewayConfig::new("sandbox-json", "http://127.0.0.1:1", "sk");
    table.breaker.error_threshold_percent = 0;
    let built = GatewayRegistry::from_config(&BTreeMap::from([("gw".to_owned(), table)]));
    assert_eq!(
        built.map(|_| ()).map_err(|e| e.path),
        Err("gateways.gw.breaker.error_threshold_percent".to_owned())
    );
}

#[test]
fn plain_http_base_urls_are_refused_unless_loopback_or_allowed() {
    for url in [
        "http://api.provider.example/v1",
        "http://10.0.0.5:8080/",
        "http://sandbox:8090/sandbox-json",
        "http://127.0.0.1.nip.io/",
    ] {
        let table = json!({"kind": "sandbox-json", "base_url": url, "secret_key": "sk_live"});
        let refused = registry(&[("gw", table)]);
        match refused {
            Ok(_) => panic!("{url} was admitted over plain http"),
            Err(e) => {
                assert_eq!(e.path, "gateways.gw.base_url", "{url}");
                assert!(e.message.contains("in clear"), "{url}: {}", e.message);
            }
        }
        // The same table built in code is checked by the registry too.
        let config = GatewayConfig::new("sandbox-json", url, "sk_live");
        assert_eq!(
            GatewaySettings::from_config("gw", &config)
                .map(|_| ())
                .map_err(|e| e.path),
            Err("gateways.gw.base_url".to_owned()),
            "{url} built in code"
        );
    }
    for url in [
        "https://api.provider.example/v1",
        "http://127.0.0.1:8090/sandbox-json",
        "http://localhost:8090/",
        "http://[::1]:8090/",
    ] {
        let table = json!({"kind": "sandbox-json", "base_url": url, "secret_key": "sk"});
        assert!(registry(&[("gw", table)]).is_ok(), "{url} refused");
    }
    // A sandbox on a private network (docker compose) says so explicitly.
    let sandbox = json!({"kind": "sandbox-json", "base_url": "http://sandbox:8090/sandbox-json",
        "secret_key": "sk", "allow_http": true});
    assert!(registry(&[("gw", sandbox)]).is_ok());
}

#[test]
fn every_connector_verifies_with_only_the_headers_it_declares() {
    use crate::test_support::{fields, settings as test_settings, transaction, WEBHOOK_SECRET};
    use crate::{ReportedStatus, Secret};
    use chrono::Utc;
    use paygate_core::domain::TransactionKind;

    let secret = Secret::new(WEBHOOK_SECRET);
    for kind in ["sandbox-json", "sandbox-soap", "sandbox-proto"] {
        let gateway = build(test_settings(kind, "http://127.0.0.1:1/"))
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let declared = gateway.callback_headers();
        assert!(declared.contains(&"content-type"), "{kind}: {declared:?}");
        for name in declared {
            assert_eq!(*name, name.to_ascii_lowercase(), "{kind}: lower case");
            assert!(
                !["authorization", "cookie", "proxy-authorization"].contains(name),
                "{kind} declares {name}"
            );
        }
        let tx = transaction(TransactionKind::Deposit);
        let facts = fields(&tx, ReportedStatus::Succeeded, Utc::now());
        let signed = match kind {
            "sandbox-json" => crate::json::signed_callback(&secret, &facts),
            "sandbox-soap" => crate::soap::signed_callback(&secret, &facts),
            _ => crate::protobuf::signed_callback(&secret, &facts),
        };
        let mut request = signed.to_request(Utc::now());
        request
            .headers
            .insert("authorization".into(), "Bearer sk_live_secret".into());
        request
            .headers
            .insert("cookie".into(), "session=s3cr3t".into());
        let full = gateway.handle_callback(&request);
        request
            .headers
            .retain(|name, _| declared.contains(&name.as_str()));
        assert!(!request.headers.contains_key("authorization"), "{kind}");
        let kept = gateway.handle_callback(&request);
        assert!(kept.is_ok(), "{kind}: {kept:?}");
        assert_eq!(
            kept, full,
            "{kind}: same verdict with only the declared headers"
        );
        // Every declared header but the content type is load-bearing where there is one:
        // dropping the signature header makes the callback unauthenticated.
        for name in declared.iter().filter(|n| **n != "content-type") {
            let mut stripped = request.clone();
            stripped.headers.remove(*name);
            assert!(
                matches!(
                    gateway.handle_callback(&stripped),
                    Err(crate::CallbackError::Unauthenticated(_))
                ),
                "{kind} without {name}"
            );
        }
    }
}
