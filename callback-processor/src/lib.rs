//! paygate-callback-processor
