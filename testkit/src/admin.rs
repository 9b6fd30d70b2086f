//! The sandbox admin API: the typed client and its wire types, re-exported from
//! `paygate-sandbox-admin` (a crate of its own so that the gateways' conformance kit, which
//! the sandbox depends on, can use the same client).

pub use paygate_sandbox_admin::{
    AdminClient, AdminError, ExecutionReport, Knobs, KnobsReport, Outcome, ReferenceReport, Stats,
    StatsReport,
};
