//! The library side of the `paygate` binary: what tests drive in process.
//!
//! - [`dev`]: `paygate dev`, the whole pipeline in one process;
//! - [`bench`]: `paygate bench …`, load against a running API;
//! - [`chaos`]: `paygate chaos`, faults under load on the real topology;
//! - [`receiver`]: a signature-verifying webhook receiver (dev demo, bench, tests);
//! - [`merchant_setup`]: a merchant with an API key and a webhook endpoint.

pub mod bench;
pub mod chaos;
pub mod dev;
pub mod merchant_setup;
pub mod receiver;
