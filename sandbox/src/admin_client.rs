//! The typed client of the admin API ([`crate::admin`]). It lives in `paygate-sandbox-admin`
//! with the admin wire types, so that crates this one depends on (the gateways' conformance
//! kit) can use it too; re-exported here so `paygate_sandbox::admin_client::AdminClient`
//! keeps working.

pub use paygate_sandbox_admin::client::{AdminClient, AdminError};
