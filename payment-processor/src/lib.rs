//! paygate-payment-processor
