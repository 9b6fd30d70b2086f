//! Provider secrets (API keys, webhook signing secrets): the configuration's own type, so a
//! secret read from `[gateways.<name>]` never passes through a printable `String`.

pub use paygate_core::secret::Secret;
