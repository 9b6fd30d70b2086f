//! paygate-sandbox-admin: the sandbox's admin API (`/_admin`) as types, and a typed client of it.
//!
//! Why a crate of its own: the sandbox depends on `paygate-gateways` (it speaks the
//! connectors' wire formats), and the gateways' conformance kit needs to set the sandbox's
//! knobs and read its stats. The admin wire types and [`AdminClient`] depend on neither, so
//! they live here and every party uses the same client: the sandbox (which serves these
//! types), the conformance kit, the bench and chaos commands, the end-to-end topology and
//! `paygate-testkit`. No code outside this crate builds an `/_admin` URL by hand.
//!
//! ```no_run
//! # async fn demo() -> Result<(), paygate_sandbox_admin::AdminError> {
//! use paygate_sandbox_admin::AdminClient;
//! let admin = AdminClient::new("http://127.0.0.1:8090")?;
//! admin
//!     .patch_account_knobs("psp-json", serde_json::json!({"execute_then_error_rate": 1.0}))
//!     .await?;
//! assert_eq!(admin.account_stats("psp-json").await?.executed_elsewhere, 0);
//! # Ok(()) }
//! ```

pub mod client;
pub mod knobs;
pub mod references;

pub use client::{AdminClient, AdminError};
pub use knobs::{Knobs, KnobsReport, Stats, StatsReport};
pub use references::{ExecutionReport, Outcome, ReferenceReport};
