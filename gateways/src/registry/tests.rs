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
        ("a-json", valid("json")),
        ("b-soap", valid("soap")),
        ("c-proto", valid("protobuf")),
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
            json!({"base_url": "http://x", "secret_key": "s"}),
            "gateways.gw.kind",
        ),
        (
            json!({"kind": "carrier-pigeon", "base_url": "http://x", "secret_key": "s"}),
            "gateways.gw.kind",
        ),
        (
            json!({"kind": "json", "base_url": "not a url", "secret_key": "s"}),
            "gateways.gw.base_url",
        ),
        (
            json!({"kind": "json", "base_url": "ftp://x", "secret_key": "s"}),
            "gateways.gw.base_url",
        ),
        (
            json!({"kind": "json", "base_url": "http://x"}),
            "gateways.gw.secret_key",
        ),
        (
            json!({"kind": "json", "base_url": "http://x", "secret_key": ""}),
            "gateways.gw.secret_key",
        ),
        (
            json!({"kind": "json", "base_url": "http://x", "secret_key": "s", "timeout_ms": 0}),
            "gateways.gw.timeout_ms",
        ),
        (
            json!({"kind": "json", "base_url": "http://x", "secret_key": "s", "timeout_ms": 1.5}),
            "gateways.gw.timeout_ms",
        ),
        (
            json!({"kind": "json", "base_url": "http://x", "secret_key": "s", "secret": "typo"}),
            "gateways.gw.secret",
        ),
        (
            json!({"kind": "json", "base_url": "http://x", "secret_key": "s", "breaker": {"min_requests": 0}}),
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
    let bad_name = registry(&[("Bad Name", valid("json"))]);
    assert_eq!(
        bad_name.map(|_| ()).map_err(|e| e.path),
        Err("gateways.Bad Name".to_owned())
    );
}

#[test]
fn settings_keep_the_base_path_and_never_print_secrets() {
    let settings = settings("gw", valid("json"));
    assert_eq!(settings.base_url.as_str(), "http://127.0.0.1:8090/acct/");
    assert_eq!(settings.timeout, Duration::from_millis(2500));
    let shown = format!("{settings:?}");
    assert!(
        !shown.contains("\"sk\"") && !shown.contains("\"wh\""),
        "{shown}"
    );
    let defaulted = self::settings(
        "gw",
        json!({"kind": "json", "base_url": "http://x", "secret_key": "sk"}),
    );
    assert_eq!(
        defaulted.webhook_secret.expose(),
        "sk",
        "Paystack signs webhooks with the secret key"
    );
}

#[test]
fn a_table_built_in_code_is_checked_too() {
    let mut table = GatewayConfig::new("json", "http://127.0.0.1:1", "sk");
    table.breaker.error_threshold_percent = 0;
    let built = GatewayRegistry::from_config(&BTreeMap::from([("gw".to_owned(), table)]));
    assert_eq!(
        built.map(|_| ()).map_err(|e| e.path),
        Err("gateways.gw.breaker.error_threshold_percent".to_owned())
    );
}
