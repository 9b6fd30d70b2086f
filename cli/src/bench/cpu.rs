//! CPU time spent while a benchmark runs, by process kind and for the whole machine, read
//! from `/proc` (Linux): what a payment costs in CPU, and who pays it.
//!
//! Two snapshots (before and after the load) are subtracted. The machine's total comes from
//! `/proc/stat`, so it counts everything, processes that came and went included; the parts
//! come from each live process's `/proc/<pid>/stat` (user + system time), grouped by kind:
//! each paygate service by its executable's name, `postgres` (the server and every backend),
//! `tansu`, `redis-server`, and this benchmark itself (`bench`: the load generator and its
//! webhook receiver). A process that exited during the run is missing from its part but not
//! from the machine's total; what no part accounts for is reported as `other`.
//!
//! Postgres's part is split again by whom each backend served
//! ([`CpuSnapshot::take_with_postgres_clients`]): a client backend by its connection's
//! `application_name` (each paygate service names its connections after itself), the
//! server's own processes by their kind (`walwriter`, `autovacuum worker`, …). Postgres is
//! half of a payment's CPU, and this says which service's statements spent it.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use sqlx::Connection;

/// `/proc` reports times in clock ticks of `USER_HZ`, which the kernel's ABI fixes at 100 on
/// every architecture paygate runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of the CPU counters.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    /// Busy ticks of the whole machine (all CPUs; idle and iowait excluded).
    machine_busy: u64,
    /// Ticks (user + system) by pid, with the kind each pid belongs to.
    processes: BTreeMap<u32, (String, u64)>,
    /// Whom each Postgres process served when the snapshot was taken, by pid.
    postgres_clients: BTreeMap<u32, String>,
}

/// What the run cost, from two snapshots.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    pub seconds: f64,
    /// CPU-seconds the whole machine was busy.
    pub machine_cpu_secs: f64,
    /// Average busy share of the machine in % of one core (200 % = two cores busy).
    pub machine_busy_pct: f64,
    /// CPU-seconds by kind (`paygate-api`, `postgres`, `tansu`, `bench`, `other`, …).
    pub by_kind_cpu_secs: BTreeMap<String, f64>,
    /// `postgres` of `by_kind_cpu_secs` by whom its processes served: a client's
    /// `application_name` (`paygate-api`, …), a server process's kind (`walwriter`, …), or
    /// `unknown` (the postmaster, a backend that came and went).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub postgres_by_client_cpu_secs: BTreeMap<String, f64>,
}

/// The label of Postgres processes nobody's snapshot named.
const UNKNOWN_CLIENT: &str = "unknown";

impl CpuSnapshot {
    /// Reads the counters now.
    pub fn take() -> Self {
        let own = std::process::id();
        let mut processes = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                    continue;
                };
                let kind = if pid == own {
                    Some("bench".to_owned())
                } else {
                    kind_of(pid)
                };
                if let (Some(kind), Some(ticks)) = (kind, process_ticks(pid)) {
                    processes.insert(pid, (kind, ticks));
                }
            }
        }
        Self {
            at: Instant::now(),
            machine_busy: machine_busy_ticks().unwrap_or(0),
            processes,
            postgres_clients: BTreeMap::new(),
        }
    }

    /// Reads the counters now, with whom each Postgres process serves (asked of the server
    /// at `database_url`, [`postgres_clients`]), so the report splits Postgres's part.
    pub async fn take_with_postgres_clients(database_url: &str) -> Self {
        let clients = postgres_clients(database_url).await;
        Self {
            postgres_clients: clients,
            ..Self::take()
        }
    }

    /// The CPU spent between `self` (earlier) and `later`.
    pub fn until(&self, later: &CpuSnapshot) -> CpuReport {
        let seconds = later.at.saturating_duration_since(self.at).as_secs_f64();
        let machine = ticks_to_secs(later.machine_busy.saturating_sub(self.machine_busy));
        let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
        let mut postgres_by_client: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (kind, ticks)) in &later.processes {
            let before = self
                .processes
                .get(pid)
                .filter(|(k, _)| k == kind)
                .map_or(0, |(_, t)| *t);
            let spent = ticks_to_secs(ticks.saturating_sub(before));
            *by_kind.entry(kind.clone()).or_default() += spent;
            if kind == "postgres" && !later.postgres_clients.is_empty() {
                let client = later
                    .postgres_clients
                    .get(pid)
                    .or_else(|| self.postgres_clients.get(pid))
                    .map_or(UNKNOWN_CLIENT, String::as_str);
                *postgres_by_client.entry(client.to_owned()).or_default() += spent;
            }
        }
        let accounted: f64 = by_kind.values().sum();
        by_kind.insert("other".to_owned(), (machine - accounted).max(0.0));
        CpuReport {
            seconds,
            machine_cpu_secs: machine,
            machine_busy_pct: if seconds > 0.0 {
                100.0 * machine / seconds
            } else {
                0.0
            },
            by_kind_cpu_secs: by_kind,
            postgres_by_client_cpu_secs: postgres_by_client,
        }
    }
}

/// Whom each Postgres process serves, by pid, from `pg_stat_activity`: a client backend's
/// `application_name` (or `unnamed`), any other process's `backend_type`. Empty when the
/// database cannot be asked: the split is then left out, the totals stay.
async fn postgres_clients(database_url: &str) -> BTreeMap<u32, String> {
    let rows: Result<Vec<(i32, String)>, sqlx::Error> = async {
        let mut connection = sqlx::PgConnection::connect(database_url).await?;
        let rows = sqlx::query_as(
            "SELECT pid, CASE WHEN backend_type = 'client backend' \
                    THEN coalesce(nullif(application_name, ''), 'unnamed') \
                    ELSE backend_type END \
             FROM pg_stat_activity",
        )
        .fetch_all(&mut connection)
        .await?;
        connection.close().await?;
        Ok(rows)
    }
    .await;
    rows.unwrap_or_default()
        .into_iter()
        .filter_map(|(pid, client)| Some((u32::try_from(pid).ok()?, client)))
        .collect()
}

impl CpuReport {
    /// Milliseconds of CPU per unit of work (a payment, a request) for each kind, for the
    /// machine (`machine`), for the machine without this benchmark (`machine - bench`), and
    /// for the stack's own processes (`stack`: every kind but `bench` and `other`, which
    /// stays right when something else, a build say, runs on the machine too).
    pub fn per_unit_ms(&self, units: u64) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        if units == 0 {
            return out;
        }
        let per = |secs: f64| 1_000.0 * secs / units as f64;
        for (kind, secs) in &self.by_kind_cpu_secs {
            out.insert(kind.clone(), per(*secs));
        }
        let bench = self.by_kind_cpu_secs.get("bench").copied().unwrap_or(0.0);
        let stack: f64 = self
            .by_kind_cpu_secs
            .iter()
            .filter(|(kind, _)| !matches!(kind.as_str(), "bench" | "other"))
            .map(|(_, secs)| secs)
            .sum();
        out.insert("stack".to_owned(), per(stack));
        out.insert("machine".to_owned(), per(self.machine_cpu_secs));
        out.insert(
            "machine - bench".to_owned(),
            per((self.machine_cpu_secs - bench).max(0.0)),
        );
        out
    }

    /// `postgres_by_client_cpu_secs` in milliseconds per unit of work.
    pub fn postgres_per_unit_ms(&self, units: u64) -> BTreeMap<String, f64> {
        if units == 0 {
            return BTreeMap::new();
        }
        self.postgres_by_client_cpu_secs
            .iter()
            .map(|(client, secs)| (client.clone(), 1_000.0 * secs / units as f64))
            .collect()
    }

    /// Prints the table: CPU-seconds, share of one core and ms per unit, by kind, then
    /// Postgres's part by client.
    pub fn print(&self, units: u64, unit: &str) {
        let per = self.per_unit_ms(units);
        println!(
            "CPU over {:.1} s: machine {:.1} CPU-s ({:.0} % of one core); per {unit}:",
            self.seconds, self.machine_cpu_secs, self.machine_busy_pct
        );
        let share = |secs: f64| {
            if self.seconds > 0.0 {
                100.0 * secs / self.seconds
            } else {
                0.0
            }
        };
        for (kind, secs) in &self.by_kind_cpu_secs {
            println!(
                "  {kind:<28} {secs:>8.2} CPU-s {:>6.1} % {:>8.3} ms/{unit}",
                share(*secs),
                per.get(kind).copied().unwrap_or(0.0)
            );
        }
        for total in ["stack", "machine - bench", "machine"] {
            println!(
                "  {total:<28} {:>8} {:>8} {:>8.3} ms/{unit}",
                "",
                "",
                per.get(total).copied().unwrap_or(0.0)
            );
        }
        let postgres = self.postgres_per_unit_ms(units);
        if !postgres.is_empty() {
            println!("  postgres by client:");
        }
        for (client, ms) in &postgres {
            println!("    {client:<26} {ms:>26.3} ms/{unit}");
        }
    }
}

fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / TICKS_PER_SECOND
}

/// The kind a process counts under, or `None` for processes that are not part of the stack.
fn kind_of(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.split(|b| *b == 0).next()?;
    let first = String::from_utf8_lossy(first);
    // A Postgres backend's title is `postgres: 15/main: …`: classified before taking the
    // basename, which its slash would cut.
    if let Some(kind) = classify(&first) {
        return Some(kind.to_owned());
    }
    let name = first.rsplit('/').next()?;
    classify(name).map(str::to_owned).or_else(|| {
        name.starts_with("paygate")
            .then(|| name.split_whitespace().next().unwrap_or(name).to_owned())
    })
}

/// The fixed kinds by executable name; Postgres backends rename themselves `postgres: …`.
fn classify(name: &str) -> Option<&'static str> {
    if name.starts_with("postgres") || name.starts_with("postmaster") {
        Some("postgres")
    } else if name.starts_with("tansu") {
        Some("tansu")
    } else if name.starts_with("redis-server") {
        Some("redis-server")
    } else {
        None
    }
}

/// User + system ticks of one process (fields 14 and 15 of `/proc/<pid>/stat`, counted
/// after the command name, which may hold spaces and parentheses).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_ticks(&stat)
}

fn parse_process_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    user.checked_add(system)
}

/// Busy ticks of all CPUs from the first line of `/proc/stat`: everything but idle and
/// iowait (guest time is already inside user).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(stat.lines().next()?)
}

fn parse_machine_busy(line: &str) -> Option<u64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = values[..] else {
        return None;
    };
    [user, nice, system, irq, softirq, steal]
        .into_iter()
        .try_fold(0u64, u64::checked_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_stat_line_gives_user_plus_system_even_with_odd_names() {
        let line =
            "4242 (paygate (api) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 70 0 0 20 0 9 0";
        assert_eq!(parse_process_ticks(line), Some(320));
        assert_eq!(parse_process_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn the_machine_line_counts_busy_ticks_only() {
        let line = "cpu  100 5 40 9000 300 2 3 1 0 0";
        assert_eq!(parse_machine_busy(line), Some(100 + 5 + 40 + 2 + 3 + 1));
        assert_eq!(parse_machine_busy("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_machine_busy("cpu 1 2"), None);
    }

    #[test]
    fn kinds_group_postgres_backends_and_leave_strangers_out() {
        assert_eq!(
            classify("postgres: postgres bench 127.0.0.1"),
            Some("postgres")
        );
        assert_eq!(classify("postgres: 15/main: walwriter"), Some("postgres"));
        assert_eq!(classify("tansu"), Some("tansu"));
        assert_eq!(classify("bash"), None);
    }

    #[test]
    fn the_report_charges_what_no_process_explains_to_other_and_divides_per_unit() {
        let at = Instant::now();
        let before = CpuSnapshot {
            at,
            machine_busy: 1_000,
            processes: BTreeMap::from([(1, ("postgres".to_owned(), 100))]),
            postgres_clients: BTreeMap::new(),
        };
        let after = CpuSnapshot {
            at: at + std::time::Duration::from_secs(10),
            machine_busy: 1_500,
            processes: BTreeMap::from([
                (1, ("postgres".to_owned(), 300)),
                (2, ("bench".to_owned(), 100)),
            ]),
            postgres_clients: BTreeMap::new(),
        };
        let report = before.until(&after);
        assert_eq!(report.machine_cpu_secs, 5.0);
        assert_eq!(report.by_kind_cpu_secs["postgres"], 2.0);
        assert_eq!(report.by_kind_cpu_secs["other"], 2.0);
        assert_eq!(report.machine_busy_pct, 50.0);
        let per = report.per_unit_ms(1_000);
        assert_eq!(per["machine"], 5.0);
        assert_eq!(per["machine - bench"], 4.0);
        assert_eq!(per["postgres"], 2.0);
        assert_eq!(
            per["stack"], 2.0,
            "postgres alone: bench and other are not the stack"
        );
        assert!(report.per_unit_ms(0).is_empty());
        assert!(
            report.postgres_by_client_cpu_secs.is_empty(),
            "no clients read, no split"
        );
    }

    #[test]
    fn postgres_time_is_split_by_whom_each_process_served() {
        let at = Instant::now();
        let postgres = |ticks| ("postgres".to_owned(), ticks);
        let before = CpuSnapshot {
            at,
            machine_busy: 0,
            processes: BTreeMap::from([(10, postgres(100)), (11, postgres(0))]),
            postgres_clients: BTreeMap::from([(10, "paygate-api".to_owned())]),
        };
        let after = CpuSnapshot {
            at: at + std::time::Duration::from_secs(1),
            machine_busy: 1_000,
            processes: BTreeMap::from([
                (10, postgres(400)),
                (11, postgres(50)),
                (12, postgres(20)),
                (13, postgres(30)),
                (14, ("tansu".to_owned(), 70)),
            ]),
            postgres_clients: BTreeMap::from([
                (11, "walwriter".to_owned()),
                (12, "paygate-api".to_owned()),
                (14, "not postgres".to_owned()),
            ]),
        };
        let report = before.until(&after);
        let split = &report.postgres_by_client_cpu_secs;
        assert_eq!(split["paygate-api"], 3.2, "pid 10 named before, 12 after");
        assert_eq!(split["walwriter"], 0.5);
        assert_eq!(split[UNKNOWN_CLIENT], 0.3, "pid 13 named by neither");
        assert_eq!(split.len(), 3, "tansu is not Postgres: {split:?}");
        assert_eq!(report.by_kind_cpu_secs["postgres"], 4.0);
        assert_eq!(report.postgres_per_unit_ms(100)["walwriter"], 5.0);
    }
}
