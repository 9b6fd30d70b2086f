//! `PAYGATE_*` environment variables, mapped to keys by figment's own
//! [`Env`](figment::providers::Env) provider.
//!
//! A variable is `PAYGATE_<SECTION>_<KEY>`, upper case: the first `_` after the section
//! separates it from the key, and `__` goes one level deeper. `PAYGATE_DATABASE_URL` sets
//! `database.url`, `PAYGATE_KAFKA_TOPIC_PREFIX` sets `kafka.topic_prefix`,
//! `PAYGATE_GATEWAYS_SANDBOX-JSON__BASE_URL` sets `gateways.sandbox-json.base_url` and
//! `PAYGATE_GATEWAYS_SANDBOX-JSON__BREAKER__WINDOW_MS` sets its `breaker.window_ms`.
//! Values use figment's grammar: `true`/`false`, integers, `[1, 2]` arrays, anything else a
//! string (`0,5,300` included, which list settings split themselves).
//!
//! Two providers, one mapping. [`Config::load`](super::Config::load) reads the process
//! environment with figment's `Env::prefixed("PAYGATE_")` plus `.map()`/`.split("__")`
//! ([`process`]). [`Config::load_from`](super::Config::load_from) takes the variables as
//! pairs (tests, and the compose check, which loads *another* process's environment), and
//! figment's `Env` cannot be given pairs: it reads `std::env::vars_os()` and nothing else
//! (`Env::raw().only(..)` filters names, not sources), and figment's `Jail` would mean
//! changing this process's environment (and working directory) under a global lock, which
//! a library call must not do. So [`Pairs`] gives the given variables the same treatment:
//! the same key mapping ([`section_key`], then `__` → `.`), figment's own value parser
//! (`figment::value::Value: FromStr`) and the `Env` provider's metadata (so errors name the
//! variable the same way). The test `pairs_read_like_figments_env` runs both over the same
//! variables inside a `Jail` and compares the results.

use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

/// Every configuration variable starts with this.
pub const PREFIX: &str = "PAYGATE_";
/// `PAYGATE_CONFIG` names the TOML file; it is not itself a setting.
const FILE_VAR: &str = "CONFIG";
/// Separates nested keys below the section.
const NESTING: &str = "__";

/// The process environment's `PAYGATE_*` variables, as figment's `Env` provider.
pub(super) fn process() -> Env {
    Env::prefixed(PREFIX)
        .ignore(&[FILE_VAR])
        .map(|rest| section_key(rest.as_str()).into())
        .split(NESTING)
}

/// `KAFKA_TOPIC_PREFIX` → `KAFKA.TOPIC_PREFIX`: the first `_` ends the section.
fn section_key(rest: &str) -> String {
    match rest.split_once('_') {
        Some((section, key)) => format!("{section}.{key}"),
        None => rest.to_owned(),
    }
}

/// The key a variable sets, as [`process`] maps it (`None`: not a setting).
fn key_of(var: &str) -> Option<String> {
    let var = var.trim();
    let head = var.get(..PREFIX.len())?;
    let rest = var.get(PREFIX.len()..)?;
    if !head.eq_ignore_ascii_case(PREFIX) || rest.eq_ignore_ascii_case(FILE_VAR) {
        return None;
    }
    let key = section_key(rest).replace(NESTING, ".");
    let key = key.trim();
    if key.split('.').any(str::is_empty) {
        return None;
    }
    Some(key.to_ascii_lowercase())
}

/// The variable that sets `key`: `kafka.topic_prefix` → `PAYGATE_KAFKA_TOPIC_PREFIX`,
/// `gateways.x.base_url` → `PAYGATE_GATEWAYS_X__BASE_URL`.
pub fn var_for(key: &str) -> String {
    let upper = key.to_ascii_uppercase();
    match upper.split_once('.') {
        Some((section, rest)) => format!("{PREFIX}{section}_{}", rest.replace('.', NESTING)),
        None => format!("{PREFIX}{upper}"),
    }
}

/// Whether a value's source is the environment (either provider).
pub(super) fn is_env(metadata: &Metadata) -> bool {
    metadata.name == process().metadata().name
}

/// Given `PAYGATE_*` variables, read as [`process`] reads the process environment.
pub(super) struct Pairs(pub Vec<(String, String)>);

impl Provider for Pairs {
    fn metadata(&self) -> Metadata {
        process().metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (var, raw) in &self.0 {
            if let Some(key) = key_of(var) {
                let value = raw.parse::<Value>().unwrap_or_else(|never| match never {});
                insert(&mut dict, &key, value);
            }
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Sets `a.b.c` in `dict`, making the tables on the way.
fn insert(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_variables_map_both_ways() {
        let cases = [
            ("PAYGATE_DATABASE_URL", "database.url"),
            ("PAYGATE_KAFKA_TOPIC_PREFIX", "kafka.topic_prefix"),
            (
                "PAYGATE_GATEWAYS_SANDBOX-JSON__BASE_URL",
                "gateways.sandbox-json.base_url",
            ),
            (
                "PAYGATE_GATEWAYS_MY_GW__BREAKER__WINDOW_MS",
                "gateways.my_gw.breaker.window_ms",
            ),
            ("PAYGATE_OUTBOX_POLL_MS", "outbox.poll_ms"),
        ];
        for (var, key) in cases {
            assert_eq!(key_of(var).as_deref(), Some(key), "{var}");
            assert_eq!(var_for(key), var, "{key}");
        }
        assert_eq!(key_of("PAYGATE_CONFIG"), None);
        assert_eq!(key_of("PAYGATE_"), None);
        assert_eq!(key_of("OTHER_THING"), None);
    }
}
