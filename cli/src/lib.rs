//! The library side of the `paygate` binary: what tests drive in process.
//!
//! - [`dev`]: `paygate dev`, the whole pipeline in one process.

pub mod dev;
