//! Source ports for the loopback connections of `ebpf` mode.
//!
//! The sidecar binds its socket to the app before connecting, so that the map entry's key is
//! known before the app can accept. A bind to port 0 must find a port that no socket holds,
//! TIME_WAIT sockets included, and the sidecar is the one that closes first on most connections
//! (it passes the client's FIN on), so under connection churn its TIME_WAIT sockets fill the
//! ephemeral range: every bind scans longer, and once the range is full, bind fails and
//! connections are dropped. Instead the sidecar walks the range itself and binds each port with
//! `SO_REUSEADDR`, which a port held only by TIME_WAIT sockets accepts at once; connect() then
//! reuses a TIME_WAIT 4-tuple as it does for any client (`net.ipv4.tcp_tw_reuse`), or refuses one
//! that is still live (EADDRNOTAVAIL), and the caller moves on to the next port.

use std::{
    ops::RangeInclusive,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

/// Where the kernel's ephemeral range is read from, in the sidecar's network namespace.
const PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// Ports the administrator reserved; never handed out.
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// The kernel's default range, for when the file cannot be read.
const DEFAULT_RANGE: RangeInclusive<u16> = 32768..=60999;

/// Hands out the ports of the ephemeral range in turn, shared by every listener of the process.
#[derive(Debug)]
pub(super) struct PortCycle {
    next: AtomicU32,
    range: RangeInclusive<u16>,
    reserved: Vec<RangeInclusive<u16>>,
}

impl PortCycle {
    /// The process's cycle over its network namespace's ephemeral range, read on first use.
    pub(super) fn shared() -> &'static Self {
        static CYCLE: OnceLock<PortCycle> = OnceLock::new();
        CYCLE.get_or_init(|| {
            let range = std::fs::read_to_string(PORT_RANGE)
                .ok()
                .and_then(|s| parse_range(&s))
                .unwrap_or(DEFAULT_RANGE);
            let reserved = std::fs::read_to_string(RESERVED_PORTS)
                .map(|s| parse_reserved(&s))
                .unwrap_or_default();
            tracing::debug!(?range, ?reserved, "loopback source ports for ebpf mode");
            // Start somewhere else on every run, so that a restarted sidecar does not walk
            // straight into the ports its predecessor left in TIME_WAIT.
            Self::new(
                range,
                reserved,
                std::process::id().wrapping_mul(2_654_435_761),
            )
        })
    }

    fn new(range: RangeInclusive<u16>, reserved: Vec<RangeInclusive<u16>>, start: u32) -> Self {
        Self {
            next: AtomicU32::new(start),
            range,
            reserved,
        }
    }

    /// How many ports the cycle has.
    pub(super) fn len(&self) -> u32 {
        u32::from(*self.range.end()) - u32::from(*self.range.start()) + 1
    }

    /// The next port of the range that is not reserved (any port, if all of them are).
    pub(super) fn next(&self) -> u16 {
        let len = self.len();
        let mut port = *self.range.start();
        for _ in 0..len {
            let offset = self.next.fetch_add(1, Ordering::Relaxed) % len;
            // `offset < len` keeps the sum inside the range, which is made of u16s.
            port = u16::try_from(u32::from(*self.range.start()) + offset).unwrap_or(port);
            if !self.reserved.iter().any(|r| r.contains(&port)) {
                break;
            }
        }
        port
    }
}

/// `ip_local_port_range`: two numbers, low and high.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high))) = (numbers.next(), numbers.next()) else {
        return None;
    };
    (low <= high).then_some(low..=high)
}

/// `ip_local_reserved_ports`: comma-separated ports and `low-high` ranges; empty when none.
fn parse_reserved(text: &str) -> Vec<RangeInclusive<u16>> {
    text.trim()
        .split(',')
        .filter_map(|item| {
            let (low, high) = item.split_once('-').unwrap_or((item, item));
            Some(low.trim().parse().ok()?..=high.trim().parse().ok()?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_formats() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("1024 1024"), Some(1024..=1024));
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("garbage"), None);
        assert_eq!(parse_reserved("\n"), Vec::<RangeInclusive<u16>>::new());
        assert_eq!(
            parse_reserved("8080,40000-40010\n"),
            vec![8080..=8080, 40000..=40010]
        );
    }

    #[test]
    fn walks_the_whole_range_and_wraps() {
        let cycle = PortCycle::new(40000..=40003, Vec::new(), 2);
        let ports: Vec<u16> = (0..6).map(|_| cycle.next()).collect();
        assert_eq!(ports, [40002, 40003, 40000, 40001, 40002, 40003]);
    }

    #[test]
    fn skips_reserved_ports() {
        let cycle = PortCycle::new(40000..=40005, vec![40001..=40003], 0);
        let ports: Vec<u16> = (0..4).map(|_| cycle.next()).collect();
        assert_eq!(ports, [40000, 40004, 40005, 40000]);
    }

    #[test]
    fn a_fully_reserved_range_still_yields_ports() {
        let cycle = PortCycle::new(40000..=40001, vec![40000..=40001], 0);
        assert!((40000..=40001).contains(&cycle.next()));
    }

    #[test]
    fn counter_overflow_stays_in_range() {
        let cycle = PortCycle::new(32768..=60999, Vec::new(), u32::MAX - 1);
        for _ in 0..4 {
            assert!((32768..=60999).contains(&cycle.next()));
        }
    }
}
