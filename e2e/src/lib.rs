//! Harness for the end-to-end tests: the paygate services as separate processes.
//!
//! [`Topology::start`] runs the real topology of one deployment on this machine, for one
//! test: `paygate-sandbox` (the three gateways `sandbox-json`, `sandbox-soap`,
//! `sandbox-proto` over HTTP), `paygate-api`, `paygate-payment-processor`,
//! `paygate-callback-processor` and `paygate-callback-dispatcher`, each its own OS process,
//! against
//!
//! - a fresh, migrated Postgres database and unique Redis key, Kafka topic and consumer
//!   group prefixes ([`paygate_testkit::isolated_config`], the one test kit's);
//! - the real Kafka-protocol broker of the test stack (tansu on 127.0.0.1:9092, or
//!   `PAYGATE_KAFKA_BROKERS`; `scripts/test` and `scripts/stack up` start it);
//! - free ports on 127.0.0.1, with one TOML file (`PAYGATE_CONFIG`) for the run.
//!
//! Each process's stdout and stderr go to `target/e2e/<run>/<service>.log`; a failure
//! passed to [`Topology::finish`] comes back with every log's tail. Every process is
//! SIGKILLed if the topology is dropped. [`Topology::kill`] and [`Topology::restart`] crash
//! and restart one service.
//!
//! The binaries are those of the test's own profile (`target/<profile>/`), brought up to
//! date once per test process by `cargo build --bins -p …` (see [`binaries`]).

pub mod binaries;
pub mod process;
pub mod topology;

pub use process::Service;
pub use topology::{Kind, Merchant, Topology, TopologyOptions, GATEWAYS, PROVIDERS, ROUTE};
