//! `paygate bench …`: load against a running paygate, measured from the merchant's side.
//!
//! - [`accept`]: the API alone (`POST /v1/deposits` throughput and latency);
//! - [`e2e`]: the whole pipeline, accept to signed webhook, with `pgbench -N` as yardstick;
//! - [`broker`]: the Kafka broker alone, its CPU and a consumer's wait per partitions and fetch wait.

pub mod accept;
pub mod broker;
mod cpu;
pub mod e2e;
pub(crate) mod load;
mod net;
mod pgbench;
mod rss;
mod stages;
mod statements;

pub use accept::{accept, print, AcceptArgs, AcceptReport};
pub use e2e::{E2eArgs, E2eReport};
pub use load::Percentiles;
