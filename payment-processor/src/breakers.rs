//! Publishes this instance's circuit breakers to Redis every
//! [`gateway_health::PUBLISH_EVERY`], for the console's gateway health page
//! ([`paygate_core::gateway_health`] describes the hash). Breakers live in each processor's
//! memory, so each instance publishes its own; at shutdown it withdraws them.

use std::sync::Arc;

use chrono::Utc;
use paygate_core::domain::GatewayName;
use paygate_core::gateway_health::{self, BreakerReport};
use paygate_gateways::breaker::BreakerSnapshot;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::attempt::Engine;

/// The report of one breaker's snapshot, taken now.
pub fn report(snapshot: &BreakerSnapshot) -> BreakerReport {
    BreakerReport {
        state: snapshot.state,
        window_requests: snapshot.window_requests,
        window_failures: snapshot.window_failures,
        in_flight: snapshot.in_flight,
        opened_total: snapshot.opened_total,
        at: Utc::now(),
    }
}

/// Publishes until `shutdown`, then withdraws this instance's reports. A Redis failure is
/// logged and the next tick tries again: the console is the only reader.
pub async fn run(
    engine: Arc<Engine>,
    mut redis: ConnectionManager,
    prefix: String,
    shutdown: CancellationToken,
) {
    let instance = paygate_core::instance_reports::instance_id();
    let gateways: Vec<GatewayName> = engine.registry.names().cloned().collect();
    let mut tick = tokio::time::interval(gateway_health::PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let reports: Vec<(GatewayName, BreakerReport)> = gateways
            .iter()
            .filter_map(|name| {
                let breaker = engine.registry.breaker(name)?;
                Some((name.clone(), report(&breaker.snapshot())))
            })
            .collect();
        if let Err(error) = gateway_health::publish(&mut redis, &prefix, &instance, &reports).await
        {
            tracing::warn!(%error, "could not publish the breakers");
        }
    }
    if let Err(error) = gateway_health::withdraw(&mut redis, &prefix, &instance, &gateways).await {
        tracing::debug!(%error, "could not withdraw the breakers; they age out");
    }
}
