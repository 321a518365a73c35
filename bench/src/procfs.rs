//! CPU time and memory of a middle hop — every process of its process group (nginx's workers,
//! socat's per-connection children) — read from `/proc`.

use std::{fs, io};

use nix::unistd::{SysconfVar, sysconf};

/// A point-in-time reading of a process group.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds of the live members, plus what their reaped children used
    /// (`cutime` + `cstime`: socat's finished per-connection processes).
    pub cpu_secs: f64,
    /// Sum of the members' resident set sizes, KiB (shared pages counted once per process).
    pub rss_kib: u64,
    /// Sum of the members' proportional set sizes, KiB (shared pages split between them).
    pub pss_kib: u64,
    /// Live members.
    pub procs: usize,
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn ticks_per_sec() -> f64 {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// The fields after the command name of `/proc/<pid>/stat` (field 3, the state, first).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

/// A `kB` line of `/proc/<pid>/status` or `smaps_rollup`.
fn kib_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads every process whose process group is `pgid`.
pub fn group_usage(pgid: u32) -> io::Result<Usage> {
    let ticks = ticks_per_sec();
    let mut usage = Usage::default();
    let mut total_ticks = 0u64;
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go while we read: a vanished one is simply skipped.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(f) = stat_fields(&stat) else {
            continue;
        };
        // Index = field number − 3: pgrp is field 5, utime..cstime are fields 14..17.
        if f.len() < 15 || f[2].parse::<u32>().ok() != Some(pgid) {
            continue;
        }
        total_ticks += f[11..15]
            .iter()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum::<u64>();
        usage.procs += 1;
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            usage.rss_kib += kib_field(&status, "VmRSS:");
        }
        if let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            usage.pss_kib += kib_field(&rollup, "Pss:");
        }
    }
    usage.cpu_secs = total_ticks as f64 / ticks;
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_group() {
        let pgid = nix::unistd::getpgrp().as_raw().cast_unsigned();
        let u = group_usage(pgid).unwrap();
        assert!(u.procs >= 1 && u.rss_kib > 0, "{u:?}");
    }

    #[test]
    fn parses_a_comm_with_spaces() {
        let f = stat_fields("12 (a b) S 1 12 12 0 -1 0 0 0 0 0 7 3 1 1").unwrap();
        assert_eq!(f[2], "12");
        assert_eq!(&f[11..15], ["7", "3", "1", "1"]);
    }
}
