//! The machine the run measured: CPU, cores, kernel, memory, peer versions, date.

use std::{process::Command, time::SystemTime};

use serde::{Deserialize, Serialize};

/// What `RESULTS.md` says about the machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `nproc`.
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// The first `model name` of `/proc/cpuinfo`.
    pub cpu: String,
    /// `MemTotal`, GiB.
    pub mem_gib: f64,
    /// Versions of the peers, one line each.
    pub versions: Vec<String>,
    /// UTC date and time of the run's end, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// The open-file limit the run's processes had.
    pub nofile: u64,
}

impl Machine {
    /// Reads it all now.
    #[must_use]
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let versions = [
            ("haproxy", &["-v"][..]),
            ("nginx", &["-v"][..]),
            ("socat", &["-V"][..]),
        ]
        .iter()
        .filter_map(|(p, args)| version_line(p, args))
        .collect();
        Self {
            nproc: nproc(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            cpu,
            mem_gib: mem_kib / 1024.0 / 1024.0,
            versions,
            date: utc_now(),
            nofile: crate::fds::fd_limit(),
        }
    }
}

/// Online CPUs.
#[must_use]
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The 1-minute load average.
#[must_use]
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The first line of a program's version output that names a version.
fn version_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| l.to_lowercase().contains("version"))
        .map(|l| l.trim().to_owned())
}

/// Now, as `YYYY-MM-DD HH:MM UTC` (civil-from-days, no time zone database needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }
}
