//! TCP traffic while a benchmark runs, from the kernel's own counters (`/proc/net/snmp`,
//! Linux): connections opened and segments sent per payment.
//!
//! Why count them: CPU time moves ±5–10 % run to run on a shared machine, more than most
//! single changes buy, while these counts are the same on any machine for the same code
//! and load. Every round trip on loopback is paid twice in kernel time (a send and a
//! wake-up on each side; a fifth of Postgres's samples under load), and a connection
//! opened per request is a handshake and a teardown more. The counters are the network
//! namespace's, so the load generator's own requests and webhooks count too (the same in
//! every run of one load).

use serde::Serialize;

/// One reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSnapshot {
    /// Connections this host opened (`ActiveOpens`: outgoing connects).
    active_opens: u64,
    /// Segments sent (`OutSegs`; on loopback each is also one received).
    out_segments: u64,
}

/// What the run cost on the wire, per unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TcpReport {
    pub connections_opened: u64,
    pub segments_sent: u64,
    pub connections_per_unit: f64,
    pub segments_per_unit: f64,
}

impl TcpSnapshot {
    /// Reads the counters now; zeros where `/proc/net/snmp` cannot be read.
    pub fn take() -> Self {
        std::fs::read_to_string("/proc/net/snmp")
            .ok()
            .and_then(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// The `Tcp:` pair of lines (names, then values) of `/proc/net/snmp`.
    fn parse(snmp: &str) -> Option<Self> {
        let mut tcp = snmp.lines().filter(|line| line.starts_with("Tcp:"));
        let names: Vec<&str> = tcp.next()?.split_whitespace().collect();
        let values: Vec<&str> = tcp.next()?.split_whitespace().collect();
        let field = |name: &str| -> Option<u64> {
            let at = names.iter().position(|n| *n == name)?;
            values.get(at)?.parse().ok()
        };
        Some(Self {
            active_opens: field("ActiveOpens")?,
            out_segments: field("OutSegs")?,
        })
    }

    /// The traffic between `self` (earlier) and `later`, per `units`.
    pub fn until(&self, later: &TcpSnapshot, units: u64) -> TcpReport {
        let opened = later.active_opens.saturating_sub(self.active_opens);
        let sent = later.out_segments.saturating_sub(self.out_segments);
        let per = |n: u64| {
            if units == 0 {
                0.0
            } else {
                n as f64 / units as f64
            }
        };
        TcpReport {
            connections_opened: opened,
            segments_sent: sent,
            connections_per_unit: per(opened),
            segments_per_unit: per(sent),
        }
    }
}

impl TcpReport {
    pub fn print(&self, unit: &str) {
        println!(
            "  TCP                 {:>10.2} connections opened, {:.1} segments sent per {unit} (the machine's, load generator included)",
            self.connections_per_unit, self.segments_per_unit
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
        Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
        Tcp: 1 200 120000 -1 1500 1400 3 10 60 900000 880000 12 0 40 0\n\
        Udp: InDatagrams NoPorts\nUdp: 5 0\n";

    #[test]
    fn reads_the_tcp_counters_by_name() {
        let snapshot = TcpSnapshot::parse(SNMP);
        assert_eq!(
            snapshot,
            Some(TcpSnapshot {
                active_opens: 1500,
                out_segments: 880_000
            })
        );
        assert_eq!(TcpSnapshot::parse("Ip: A\nIp: 1\n"), None);
        assert_eq!(TcpSnapshot::parse("Tcp: ActiveOpens\nTcp: many\n"), None);
    }

    #[test]
    fn the_run_is_the_difference_per_unit() {
        let before = TcpSnapshot {
            active_opens: 100,
            out_segments: 10_000,
        };
        let after = TcpSnapshot {
            active_opens: 300,
            out_segments: 60_000,
        };
        let report = before.until(&after, 1_000);
        assert_eq!(report.connections_opened, 200);
        assert!((report.connections_per_unit - 0.2).abs() < 1e-9);
        assert!((report.segments_per_unit - 50.0).abs() < 1e-9);
        // No payments: no rate rather than a division by zero.
        assert_eq!(before.until(&after, 0).segments_per_unit, 0.0);
    }
}
