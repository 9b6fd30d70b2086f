//! paygate-api
