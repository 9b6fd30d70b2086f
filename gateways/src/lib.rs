//! paygate-gateways
