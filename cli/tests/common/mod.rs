//! What the binary's tests share: running `paygate` against a test's isolated config.

use std::process::Output;

use paygate_core::config::Config;

/// Runs the `paygate` binary with `args`, pointed at `config`'s database and Redis prefix.
pub fn paygate(config: &Config, args: &[&str]) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_paygate"))
        .args(args)
        .env("PAYGATE_DATABASE_URL", &config.database.url)
        .env("PAYGATE_REDIS_URL", &config.redis.url)
        .env("PAYGATE_REDIS_KEY_PREFIX", &config.redis.key_prefix)
        .env("PAYGATE_LOG_FILTER", "warn")
        .output()?)
}
