//! Peak resident memory of the paygate processes on this machine while a benchmark runs,
//! read from `/proc` (Linux). A process counts when its executable's name starts with
//! `paygate` (the services, the sandbox, `paygate dev`), the benchmark itself excluded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Peak RSS in MiB by process name (`paygate-api`, …); several processes of one name keep
/// the largest.
#[derive(Debug, Clone, Default)]
pub struct PeakRss(Arc<Mutex<BTreeMap<String, f64>>>);

impl PeakRss {
    /// Samples every `every` until `stop` is cancelled.
    pub fn sample(&self, every: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let peaks = self.clone();
        tokio::spawn(async move {
            loop {
                peaks.sample_once();
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => break,
                }
            }
        })
    }

    fn sample_once(&self) {
        let own = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == own {
                continue;
            }
            let Some(name) = process_name(pid) else {
                continue;
            };
            if !name.starts_with("paygate") {
                continue;
            }
            if let Some(mib) = rss_mib(pid) {
                if let Ok(mut peaks) = self.0.lock() {
                    let peak = peaks.entry(name).or_insert(0.0);
                    *peak = peak.max(mib);
                }
            }
        }
    }

    pub fn peaks(&self) -> BTreeMap<String, f64> {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// The basename of the process's first command-line word.
fn process_name(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.split(|b| *b == 0).next()?;
    let path = String::from_utf8_lossy(first);
    Some(path.rsplit('/').next()?.to_owned())
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
