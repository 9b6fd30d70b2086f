//! The faults the suite applies, one per phase, and the plans (full and `--short`, with one
//! or N instances of each service).

use std::fmt;
use std::time::Duration;

use super::topology::Service;

/// How long after a kill an "immediate" restart comes (a supervisor restarting at once).
pub const IMMEDIATE: Duration = Duration::from_secs(1);
/// How long after a kill a "late" restart comes: past the 10 s session timeout, so the
/// group has already given the dead member's partitions away.
pub const LATE: Duration = Duration::from_secs(12);
/// How long Redis and the broker stay down before they start again.
pub const SERVER_DOWN: Duration = Duration::from_secs(3);

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL a service (its first instance), start it again after the delay.
    Kill {
        service: Service,
        restart_after: Duration,
    },
    /// SIGKILL one instance of every service at once (the last: `<service>-<N>`, or the
    /// only one), start each again after the delay, as an orchestrator replacing them would.
    KillOneOfEach { restart_after: Duration },
    /// Kill Redis, start it again (empty) after [`SERVER_DOWN`].
    Redis,
    /// `pg_ctl restart -m fast`.
    Postgres,
    /// Kill the broker, start it again after [`SERVER_DOWN`] with memory storage: empty.
    Broker,
}

impl Fault {
    /// The full plan: every service killed with an immediate and a late restart, then
    /// Redis, Postgres and the broker.
    pub fn all() -> Vec<Fault> {
        let mut plan = Vec::new();
        for service in Service::ALL {
            for restart_after in [IMMEDIATE, LATE] {
                plan.push(Fault::Kill {
                    service,
                    restart_after,
                });
            }
        }
        plan.extend([Fault::Redis, Fault::Postgres, Fault::Broker]);
        plan
    }

    /// The plan for `instances` of each service: [`Fault::short`] or [`Fault::all`] with one;
    /// with more, `--short` is just [`Fault::KillOneOfEach`] (what N instances add) and the
    /// full plan ends with it.
    pub fn plan(short: bool, instances: u16) -> Vec<Fault> {
        let one_of_each = Fault::KillOneOfEach {
            restart_after: IMMEDIATE,
        };
        match (short, instances > 1) {
            (true, false) => Fault::short(),
            (true, true) => vec![one_of_each],
            (false, false) => Fault::all(),
            (false, true) => {
                let mut plan = Fault::all();
                plan.push(one_of_each);
                plan
            }
        }
    }

    /// Every fault `--only` can name.
    pub fn known() -> Vec<Fault> {
        let mut known = Fault::all();
        known.push(Fault::KillOneOfEach {
            restart_after: IMMEDIATE,
        });
        known
    }

    /// The `--short` plan: an immediate kill of the payment processor (the restart that
    /// used to strand the most payments) and the broker coming back empty.
    pub fn short() -> Vec<Fault> {
        vec![
            Fault::Kill {
                service: Service::PaymentProcessor,
                restart_after: IMMEDIATE,
            },
            // The fault that needs every recovery path at once: topics recreated, the
            // sighting shared through Postgres, producers replaced, healers re-announcing.
            Fault::Broker,
        ]
    }

    /// The name `--only` takes, e.g. `kill-payment-processor-immediate`, `broker`.
    pub fn name(&self) -> String {
        match self {
            Fault::Kill {
                service,
                restart_after,
            } => {
                let when = if *restart_after <= IMMEDIATE {
                    "immediate"
                } else {
                    "late"
                };
                format!("kill-{service}-{when}")
            }
            Fault::KillOneOfEach { .. } => "kill-one-of-each".into(),
            Fault::Redis => "redis".into(),
            Fault::Postgres => "postgres".into(),
            Fault::Broker => "broker".into(),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill {
                service,
                restart_after,
            } => write!(
                f,
                "kill -9 {service}, restart after {} s",
                restart_after.as_secs()
            ),
            Fault::KillOneOfEach { restart_after } => write!(
                f,
                "kill -9 one instance of each service at once, restart after {} s",
                restart_after.as_secs()
            ),
            Fault::Redis => write!(f, "Redis down {} s (restart, empty)", SERVER_DOWN.as_secs()),
            Fault::Postgres => f.write_str("Postgres restart (pg_ctl restart -m fast)"),
            Fault::Broker => write!(
                f,
                "broker down {} s, back empty (memory storage)",
                SERVER_DOWN.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_plan_kills_each_service_twice_and_restarts_each_server() {
        let names: Vec<String> = Fault::all().iter().map(Fault::name).collect();
        assert_eq!(names.len(), 11);
        for service in Service::ALL {
            assert!(
                names.contains(&format!("kill-{service}-immediate")),
                "{names:?}"
            );
            assert!(names.contains(&format!("kill-{service}-late")), "{names:?}");
        }
        for server in ["redis", "postgres", "broker"] {
            assert!(names.contains(&server.to_owned()), "{names:?}");
        }
    }

    #[test]
    fn the_short_plan_is_an_immediate_processor_kill_and_an_empty_broker() {
        let names: Vec<String> = Fault::short().iter().map(Fault::name).collect();
        assert_eq!(names, ["kill-payment-processor-immediate", "broker"]);
    }

    #[test]
    fn one_instance_keeps_todays_plans_and_more_add_the_kill_of_one_of_each() {
        assert_eq!(Fault::plan(true, 1), Fault::short());
        assert_eq!(Fault::plan(false, 1), Fault::all());
        let names = |plan: Vec<Fault>| plan.iter().map(Fault::name).collect::<Vec<_>>();
        assert_eq!(names(Fault::plan(true, 2)), ["kill-one-of-each"]);
        let full = names(Fault::plan(false, 3));
        assert_eq!(full.len(), 12);
        assert_eq!(full.last().map(String::as_str), Some("kill-one-of-each"));
        assert!(names(Fault::known()).contains(&"kill-one-of-each".to_owned()));
    }
}
