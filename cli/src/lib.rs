//! The library side of the `paygate` binary: what tests drive in process.
//!
//! - [`dev`]: `paygate dev`, the whole pipeline in one process;
//! - [`bench`]: `paygate bench …`, load against a running API.

pub mod bench;
pub mod dev;
