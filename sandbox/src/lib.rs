//! paygate-sandbox
