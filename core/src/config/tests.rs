use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(pairs: &[(&str, &str)]) -> Config {
    Config::load_from(None, env(pairs)).unwrap_or_else(|e| panic!("{e}"))
}

/// Where each problem of a failed load is reported.
fn places(file: Option<PathBuf>, pairs: &[(&str, &str)]) -> Vec<String> {
    match Config::load_from(file, env(pairs)) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(|p| p.at.clone()).collect(),
    }
}

/// A TOML file in a fresh directory (removed with the guard).
struct TempToml(PathBuf);

impl TempToml {
    fn new(text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("paygate-config-{}", uuid::Uuid::new_v4()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("paygate.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        Self(path)
    }

    fn path(&self) -> Option<PathBuf> {
        Some(self.0.clone())
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

const GATEWAY: &str =
    "[gateways.sandbox-json]\nkind = \"json\"\nbase_url = \"http://127.0.0.1:1\"\nsecret_key = \"sk\"\n";

#[test]
fn defaults_are_the_local_stack() {
    let config = load(&[]);
    assert_eq!(
        config.database.url,
        "postgres://postgres@127.0.0.1:5432/paygate"
    );
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379");
    assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(config.log.format, LogFormat::Pretty);
    assert_eq!(config.outbox.poll, Duration::from_millis(200));
    assert!(!config.destinations.allow_loopback && !config.destinations.allow_http);
}

#[test]
fn environment_overrides_with_single_underscore_keys() {
    let config = load(&[
        ("PAYGATE_KAFKA_BROKERS", "10.1.1.1:9092"),
        ("PAYGATE_KAFKA_TOPIC_PREFIX", "t1"),
        ("PAYGATE_DATABASE_MAX_CONNECTIONS", "3"),
        ("PAYGATE_LOG_FORMAT", "json"),
        ("PAYGATE_API_BIND", "127.0.0.1:9000"),
        ("PAYGATE_DISPATCHER_RETRY_SCHEDULE_SECS", "0,1,2"),
        ("PAYGATE_DESTINATIONS_ALLOW_LOOPBACK", "true"),
        ("PAYGATE_OUTBOX_BATCH_SIZE", "16"),
        ("PAYGATE_CONFIG", "/not/a/setting"),
        ("OTHER_THING", "ignored"),
    ]);
    assert_eq!(config.kafka.brokers, "10.1.1.1:9092");
    assert_eq!(config.kafka.topic_prefix, "t1");
    assert_eq!(config.database.max_connections, 3);
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.api.bind, "127.0.0.1:9000");
    assert_eq!(
        config.dispatcher.retry_schedule,
        [0, 1, 2].map(Duration::from_secs)
    );
    assert!(config.destinations.allow_loopback);
    assert_eq!(config.outbox.batch_size, 16);
}

#[test]
fn double_underscores_nest_gateway_keys() {
    let config = load(&[
        ("PAYGATE_GATEWAYS_MY_GW__KIND", "soap"),
        (
            "PAYGATE_GATEWAYS_MY_GW__BASE_URL",
            "http://127.0.0.1:2/acct",
        ),
        ("PAYGATE_GATEWAYS_MY_GW__SECRET_KEY", "sk"),
        ("PAYGATE_GATEWAYS_MY_GW__TIMEOUT_MS", "2500"),
        ("PAYGATE_GATEWAYS_MY_GW__BREAKER__WINDOW_MS", "20000"),
    ]);
    let gateway = &config.gateways["my_gw"];
    assert_eq!(gateway.kind, "soap");
    assert_eq!(gateway.timeout, Duration::from_millis(2_500));
    assert_eq!(gateway.breaker.window, Duration::from_secs(20));
    assert_eq!(
        gateway.breaker.buckets, 10,
        "the rest of the table defaulted"
    );
    assert_eq!(gateway.webhook_secret().expose(), "sk");
}

#[test]
fn durations_are_typed_at_load_in_their_keys_units() {
    let file = TempToml::new(
        "[processor]\nlock_ttl_ms = 1500\nstuck_after_secs = \"7\"\n\n[dispatcher]\nretry_schedule_secs = [0, 5]\n",
    );
    let config = Config::load_from(
        file.path(),
        env(&[
            ("PAYGATE_API_IDEMPOTENCY_RETENTION_HOURS", "48"),
            ("PAYGATE_RECOVERY_HEAL_POLL_MS", "250"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.processor.lock_ttl, Duration::from_millis(1_500));
    assert_eq!(config.processor.stuck_after, Duration::from_secs(7));
    assert_eq!(
        config.dispatcher.retry_schedule,
        [0, 5].map(Duration::from_secs)
    );
    assert_eq!(
        config.api.idempotency_retention,
        Duration::from_secs(48 * 3_600)
    );
    assert_eq!(config.recovery.heal_poll, Duration::from_millis(250));
    let fraction = places(None, &[("PAYGATE_PROCESSOR_LOCK_TTL_MS", "1.5")]);
    assert_eq!(fraction, ["PAYGATE_PROCESSOR_LOCK_TTL_MS"]);
}

#[test]
fn a_bad_value_names_the_variable() {
    let cases = [
        ("PAYGATE_DATABASE_MAX_CONNECTIONS", "lots"),
        ("PAYGATE_LOG_FORMAT", "xml"),
        ("PAYGATE_DATABASE_URL", "mysql://x"),
        ("PAYGATE_KAFKA_PARTITIONS", "0"),
        ("PAYGATE_REDIS_URL", "http://nope"),
        ("PAYGATE_DISPATCHER_RETRY_SCHEDULE_SECS", "0,soon"),
    ];
    for (var, value) in cases {
        assert_eq!(places(None, &[(var, value)]), [var], "{var}={value}");
    }
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    assert_eq!(
        places(None, &[("PAYGATE_DATABASE_PORT", "1")]),
        ["PAYGATE_DATABASE_PORT"]
    );
    let err = Config::load_from(None, env(&[("PAYGATE_API_BIDN", "x")]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("configuration: PAYGATE_API_BIDN: unknown field"),
        "{err}"
    );
    let file = TempToml::new("[kafka]\ntopic_prefx = \"x\"\n");
    let at = places(file.path(), &[]);
    assert_eq!(at, [format!("{} key kafka.topic_prefx", file.0.display())]);
    let moved = TempToml::new("[api]\noutbox_poll_ms = 100\n");
    assert_eq!(
        places(moved.path(), &[]).len(),
        1,
        "outbox keys moved to [outbox]"
    );
}

#[test]
fn every_problem_is_reported_together() {
    let at = places(
        None,
        &[
            ("PAYGATE_DATABASE_URL", "mysql://x"),
            ("PAYGATE_KAFKA_PARTITIONS", "0"),
            ("PAYGATE_CALLBACKS_CONCURRENCY", "0"),
            ("PAYGATE_DISPATCHER_CONCURRENCY", "0"),
            ("PAYGATE_API_RATE_LIMIT_BURST", "0"),
            ("PAYGATE_GATEWAYS_GW__KIND", "json"),
            ("PAYGATE_GATEWAYS_GW__BASE_URL", "ftp://x"),
            ("PAYGATE_GATEWAYS_GW__SECRET_KEY", ""),
        ],
    );
    assert_eq!(
        at,
        [
            "PAYGATE_DATABASE_URL",
            "PAYGATE_KAFKA_PARTITIONS",
            "PAYGATE_API_RATE_LIMIT_BURST",
            "PAYGATE_CALLBACKS_CONCURRENCY",
            "PAYGATE_DISPATCHER_CONCURRENCY",
            "PAYGATE_GATEWAYS_GW__BASE_URL",
            "PAYGATE_GATEWAYS_GW__SECRET_KEY",
        ]
    );
}

#[test]
fn toml_file_then_environment() {
    let file = TempToml::new(&format!(
        "[kafka]\ntopic_prefix = \"from-file\"\npartitions = 8\n\n{GATEWAY}"
    ));
    let config = Config::load_from(file.path(), env(&[("PAYGATE_KAFKA_PARTITIONS", "2")]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.kafka.topic_prefix, "from-file");
    assert_eq!(config.kafka.partitions, 2);
    assert_eq!(config.gateways["sandbox-json"].kind, "json");

    std::fs::write(&file.0, "[kafka]\npartitions = \"many\"\n").unwrap_or_else(|e| panic!("{e}"));
    let at = places(file.path(), &[]);
    assert_eq!(at, [format!("{} key kafka.partitions", file.0.display())]);
    let missing = places(Some(PathBuf::from("/nonexistent/paygate.toml")), &[]);
    assert_eq!(missing, [CONFIG_FILE_VAR]);
}

#[test]
fn a_bad_gateway_table_names_its_key() {
    let file = TempToml::new(&format!(
        "{GATEWAY}timeout_ms = \"soon\"\n[gateways.sandbox-json.breaker]\nwindow_ms = 5\n"
    ));
    let shown = file.0.display();
    assert_eq!(
        places(file.path(), &[]),
        [format!("{shown} key gateways.sandbox-json.timeout_ms")]
    );
    std::fs::write(
        &file.0,
        format!("{GATEWAY}[gateways.sandbox-json.breaker]\ntreshold = 5\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        places(file.path(), &[]),
        [format!(
            "{shown} key gateways.sandbox-json.breaker.treshold"
        )]
    );
    std::fs::write(&file.0, GATEWAY).unwrap_or_else(|e| panic!("{e}"));
    let zero = [("PAYGATE_GATEWAYS_SANDBOX-JSON__TIMEOUT_MS", "0")];
    assert_eq!(
        places(file.path(), &zero),
        ["PAYGATE_GATEWAYS_SANDBOX-JSON__TIMEOUT_MS"]
    );
    let no_kind = [("PAYGATE_GATEWAYS_OTHER__BASE_URL", "https://x")];
    assert_eq!(places(None, &no_kind), ["PAYGATE_GATEWAYS_OTHER__KIND"]);
}

#[test]
fn a_gateway_table_keeps_the_connectors_keys() {
    let file = TempToml::new(&format!("{GATEWAY}merchant_code = \"M-1\"\n"));
    let config = Config::load_from(file.path(), env(&[])).unwrap_or_else(|e| panic!("{e}"));
    let extra = &config.gateways["sandbox-json"].extra;
    assert_eq!(extra.len(), 1, "{extra:?}");
    assert_eq!(extra["merchant_code"], "M-1");
}

#[test]
fn gateway_tables_from_json_read_like_files() {
    let table = serde_json::json!({
        "kind": "json", "base_url": "https://x", "secret_key": "sk",
        "timeout_ms": "2500", "breaker": {"min_requests": 0}, "region": "eu",
    });
    let err = GatewayConfig::from_json("gw", table.clone()).err();
    let at: Vec<String> = err
        .iter()
        .flat_map(|e| e.problems())
        .map(|p| p.at.clone())
        .collect();
    assert_eq!(at, ["gateways.gw.breaker.min_requests"]);
    let mut table = table;
    table["breaker"] = serde_json::json!({});
    let gateway = GatewayConfig::from_json("gw", table).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gateway.timeout, Duration::from_millis(2_500));
    assert_eq!(gateway.extra.keys().collect::<Vec<_>>(), ["region"]);
    let secret = format!("{gateway:?}");
    assert!(!secret.contains("\"sk\""), "{secret}");
}

/// `load_from` (given pairs) and `load` (figment's `Env` over the process environment) read
/// the same variables the same way, errors included.
#[test]
#[allow(clippy::result_large_err)] // `Jail::expect_with` fixes the closure's error type
fn pairs_read_like_figments_env() {
    let vars = [
        ("PAYGATE_KAFKA_TOPIC_PREFIX", "jailed"),
        ("PAYGATE_API_BIND", "127.0.0.1:9000"),
        ("PAYGATE_DISPATCHER_RETRY_SCHEDULE_SECS", "0,5,300"),
        ("PAYGATE_DESTINATIONS_ALLOW_HTTP", "true"),
        ("PAYGATE_GATEWAYS_SANDBOX-PROTO__KIND", "protobuf"),
        (
            "PAYGATE_GATEWAYS_SANDBOX-PROTO__BASE_URL",
            "http://127.0.0.1:9/p",
        ),
        ("PAYGATE_GATEWAYS_SANDBOX-PROTO__SECRET_KEY", "sk"),
        (
            "PAYGATE_GATEWAYS_SANDBOX-PROTO__BREAKER__MAX_CONCURRENT",
            "7",
        ),
    ];
    figment::Jail::expect_with(|jail| {
        jail.clear_env();
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        let from_process = Config::load().map_err(|e| e.to_string())?;
        let from_pairs = Config::load_from(None, env(&vars)).map_err(|e| e.to_string())?;
        let json = |c: &Config| serde_json::to_value(c).map_err(|e| e.to_string());
        assert_eq!(json(&from_process)?, json(&from_pairs)?);
        assert_eq!(
            from_process.gateways["sandbox-proto"]
                .breaker
                .max_concurrent,
            7
        );

        jail.set_env("PAYGATE_PROCESSOR_CONCURRENCY", "0");
        jail.set_env("PAYGATE_API_BIDN", "x");
        let mut bad = env(&vars);
        bad.extend(env(&[
            ("PAYGATE_PROCESSOR_CONCURRENCY", "0"),
            ("PAYGATE_API_BIDN", "x"),
        ]));
        let errors = (Config::load().err(), Config::load_from(None, bad).err());
        assert!(errors.0.is_some());
        assert_eq!(errors.0, errors.1);
        Ok(())
    });
}

#[test]
fn destination_ports_are_a_bounded_list() {
    assert_eq!(load(&[]).destinations.allowed_ports, [443, 80, 8443]);
    let config = load(&[("PAYGATE_DESTINATIONS_ALLOWED_PORTS", "443,9443")]);
    assert_eq!(config.destinations.allowed_ports, [443, 9443]);
    let file = TempToml::new("[destinations]\nallowed_ports = [8443]\n");
    let config = Config::load_from(file.path(), env(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.destinations.allowed_ports, [8443]);
    for bad in [
        "[destinations]\nallowed_ports = []\n",
        "[destinations]\nallowed_ports = [0]\n",
    ] {
        let file = TempToml::new(bad);
        assert_eq!(
            places(file.path(), &[]).len(),
            1,
            "{bad} must be refused at one key"
        );
    }
    let file = TempToml::new("[destinations]\nallowed_ports = [70000]\n");
    assert!(!places(file.path(), &[]).is_empty(), "70000 is not a port");
}

#[test]
fn a_gateway_over_plain_http_is_refused_at_load_unless_loopback_or_allowed() {
    let remote =
        "[gateways.psp]\nkind = \"json\"\nbase_url = \"http://psp.example/v1\"\nsecret_key = \"sk_live\"\n";
    let file = TempToml::new(remote);
    let at = places(file.path(), &[]);
    assert!(
        at.len() == 1 && at[0].ends_with("gateways.psp.base_url"),
        "{at:?}"
    );
    let file = TempToml::new(&format!("{remote}allow_http = true\n"));
    assert!(places(file.path(), &[]).is_empty());
    // Loopback http (tests, `paygate dev`, scripts/topology.toml) needs no flag.
    let file = TempToml::new(GATEWAY);
    assert!(places(file.path(), &[]).is_empty());
}

#[test]
fn kafka_tls_and_sasl_come_from_the_environment_as_librdkafka_properties() {
    let config = load(&[
        ("PAYGATE_KAFKA_SECURITY__PROTOCOL", "sasl_ssl"),
        ("PAYGATE_KAFKA_SECURITY__SASL_MECHANISM", "SCRAM-SHA-256"),
        ("PAYGATE_KAFKA_SECURITY__SASL_USERNAME", "paygate"),
        ("PAYGATE_KAFKA_SECURITY__SASL_PASSWORD", "kafka-password-1"),
        (
            "PAYGATE_KAFKA_SECURITY__SSL_CA_LOCATION",
            "/etc/kafka/ca.pem",
        ),
    ]);
    let properties = config.kafka.security.librdkafka_properties();
    assert!(properties.contains(&("security.protocol", "sasl_ssl".to_owned())));
    assert!(properties.contains(&("sasl.mechanism", "SCRAM-SHA-256".to_owned())));
    assert!(properties.contains(&("sasl.password", "kafka-password-1".to_owned())));
    assert!(properties.contains(&("ssl.ca.location", "/etc/kafka/ca.pem".to_owned())));
    assert!(!format!("{config:?}").contains("kafka-password-1"));

    let at = places(None, &[("PAYGATE_KAFKA_SECURITY__PROTOCOL", "sasl_ssl")]);
    assert_eq!(at.len(), 3, "{at:?}");
    assert!(
        at.iter().all(|p| p.to_lowercase().contains("security")),
        "{at:?}"
    );
    let at = places(None, &[("PAYGATE_KAFKA_SECURITY__PROTOCOL", "kerberos")]);
    assert_eq!(at.len(), 1, "{at:?}");
}

#[test]
fn an_api_beyond_loopback_must_keep_its_metrics_private() {
    let public = [("PAYGATE_API_BIND", "0.0.0.0:8080")];
    let at = places(None, &public);
    assert!(
        at.len() == 1 && at[0].to_lowercase().contains("metrics_token"),
        "{at:?}"
    );
    let token = "m".repeat(32);
    let with_token = [
        public[0],
        ("PAYGATE_TELEMETRY_METRICS_TOKEN", token.as_str()),
    ];
    assert!(places(None, &with_token).is_empty());
    let own_bind = [
        public[0],
        ("PAYGATE_TELEMETRY_METRICS_BIND", "10.0.0.5:9100"),
    ];
    assert!(places(None, &own_bind).is_empty());
    let short = [("PAYGATE_TELEMETRY_METRICS_TOKEN", "short")];
    assert_eq!(places(None, &short).len(), 1);
    // Loopback (tests, `paygate dev`) keeps the open route.
    assert!(places(None, &[("PAYGATE_API_BIND", "127.0.0.1:0")]).is_empty());
    assert!(places(None, &[("PAYGATE_API_BIND", "localhost:8080")]).is_empty());
    assert!(places(None, &[("PAYGATE_API_BIND", "[::1]:8080")]).is_empty());
}

#[test]
fn connection_limits_have_floors() {
    let config = load(&[]);
    assert_eq!(config.api.header_read_timeout, Duration::from_secs(10));
    let at = places(
        None,
        &[
            ("PAYGATE_API_HEADER_READ_TIMEOUT_MS", "5"),
            ("PAYGATE_API_MAX_CONNECTIONS", "0"),
        ],
    );
    assert_eq!(at.len(), 2, "{at:?}");
}

#[test]
fn the_secrets_keyring_comes_from_the_environment_and_bad_keys_are_named_not_shown() {
    let (k1, k2) = (
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
        "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
    );
    // No keyring: loading is fine (only the services needing one refuse to start).
    assert!(load(&[]).secrets.is_empty());
    let config = load(&[
        ("PAYGATE_SECRETS_CURRENT_KEY", "2026-12"),
        ("PAYGATE_SECRETS_KEYS__2026-06", k1),
        ("PAYGATE_SECRETS_KEYS__2026-12", k2),
    ]);
    let keyring = config.secrets.keyring().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(keyring.current_key().as_str(), "2026-12");
    assert_eq!(keyring.key_ids().count(), 2);
    let shown = format!("{config:?}");
    assert!(!shown.contains(k1) && !shown.contains(k2), "{shown}");

    let bad = [
        ("PAYGATE_SECRETS_CURRENT_KEY", "2026-12"),
        ("PAYGATE_SECRETS_KEYS__2026-12", "dG9vLXNob3J0LWEta2V5"),
    ];
    let error = Config::load_from(None, env(&bad))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(error.contains("PAYGATE_SECRETS_KEYS__2026-12"), "{error}");
    assert!(!error.contains("dG9vLXNob3J0LWEta2V5"), "{error}");
    assert_eq!(
        places(None, &[("PAYGATE_SECRETS_KEYS__A", k1)]),
        ["PAYGATE_SECRETS_CURRENT_KEY"],
        "keys without a current one"
    );
}

/// `[gateways.x] callback_per_second` / `callback_burst` (issue 17): defaults, the
/// environment mapping every other gateway key has, and a zero refused by name.
#[test]
fn gateway_callback_limits_default_map_and_refuse_zero() {
    let base = [
        ("PAYGATE_GATEWAYS_MY_GW__KIND", "sandbox-json"),
        ("PAYGATE_GATEWAYS_MY_GW__BASE_URL", "http://127.0.0.1:2/"),
        ("PAYGATE_GATEWAYS_MY_GW__SECRET_KEY", "sk"),
    ];
    let gateway = &load(&base).gateways["my_gw"];
    assert_eq!(
        gateway.callback_per_second,
        super::DEFAULT_CALLBACK_PER_SECOND
    );
    assert_eq!(gateway.callback_burst, super::DEFAULT_CALLBACK_BURST);
    let mut set = base.to_vec();
    set.push(("PAYGATE_GATEWAYS_MY_GW__CALLBACK_PER_SECOND", "7"));
    set.push(("PAYGATE_GATEWAYS_MY_GW__CALLBACK_BURST", "9"));
    let gateway = &load(&set).gateways["my_gw"];
    assert_eq!(
        (gateway.callback_per_second, gateway.callback_burst),
        (7, 9)
    );
    let mut zero = base.to_vec();
    zero.push(("PAYGATE_GATEWAYS_MY_GW__CALLBACK_BURST", "0"));
    assert_eq!(
        places(None, &zero),
        ["PAYGATE_GATEWAYS_MY_GW__CALLBACK_BURST"]
    );
}
