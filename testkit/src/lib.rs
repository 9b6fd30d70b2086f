//! paygate-testkit: the one test kit every suite, the bench and the end-to-end crate share.
//!
//! Why: each suite used to carry its own copy of the same start-up code (a fresh database and
//! unique Redis/Kafka prefixes, the service built and run on a cancellation token, a sandbox
//! on port 0 with gateways pointed at it, admin URLs written by hand). Copies drift: one suite
//! forgot the port-0 bind, another stopped its service without waiting for it. Here each of
//! those is written once:
//!
//! - [`config`]: [`config::isolated_config`] (a fresh `pgt_…` database, which
//!   `scripts/test` drops before a run, and unique Redis/Kafka prefixes), the loopback
//!   destination policy tests use, and the private tansu broker of the fault tests.
//! - [`services`]: every service in process, on port 0 where it listens: the API
//!   ([`services::spawn_api`]), the payment processor, the callback processor, the dispatcher
//!   and the sandbox. Each returns a handle that cancels the service when dropped and whose
//!   `shutdown`/`stop` waits for it to finish.
//! - [`admin`]: the typed client of the sandbox admin API (knobs, stats, accounts,
//!   references) from `paygate-sandbox-admin`; nothing outside that crate builds an
//!   `/_admin` URL.
//! - [`kafka`]: reading a topic from the beginning, for tests that check what was published.
//! - [`wait`]: the one bounded polling loop for effects that happen eventually.
//!
//! The suites keep thin harnesses of their own (`api/tests/api/helpers.rs`,
//! `payment-processor/tests/common`, ...) for what is specific to them, built on this kit.
//!
//! It is test support: failures are `anyhow` errors with context, never panics.

pub mod admin;
pub mod config;
pub mod kafka;
pub mod services;
pub mod wait;

pub use admin::{AdminClient, AdminError};
pub use config::{allow_loopback, isolated_config, keyring, unique_name};
pub use services::{
    spawn_api, spawn_callback_processor, spawn_dispatcher, spawn_payment_processor, spawn_sandbox,
    Api, Running, SandboxHandle,
};
