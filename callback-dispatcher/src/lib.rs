//! paygate-callback-dispatcher
