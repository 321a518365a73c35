//! How much one caller may ask of the agent: a token bucket of requests per caller, and caps on
//! the connections it (and everyone together) may hold open while their request is awaited.
//!
//! A caller is its pod cgroup: every process of a pod shares it, so a pod cannot multiply its
//! allowance by forking or by creating network namespaces, and only the kubelet (root) can
//! create more pod cgroups. Callers in the node's namespace are refused before they get here.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Requests a caller may make at once: a sidecar asks a handful of times at start (its map, its
/// UDP map, the fast path, one steering request per listener).
const BURST: f64 = 32.0;
/// Requests per second a caller gets back.
const REFILL_PER_SEC: f64 = 8.0;
/// Open connections one caller may hold while the agent waits for their requests.
pub(crate) const PER_CALLER: usize = 8;
/// Open connections all callers together may hold.
pub(crate) const TOTAL: usize = 512;
/// Callers remembered before idle ones (with a full bucket) are forgotten.
const REMEMBERED: usize = 4096;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// The caller asked too often.
    Rate,
    /// The caller, or everyone, holds too many connections.
    Connections,
}

/// The per-caller state.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Every caller's allowance.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    buckets: HashMap<String, Bucket>,
}

impl Limits {
    /// Admits one more connection of `caller`, who already holds `held` of the `total` open
    /// ones, or says which limit it would exceed. An admitted connection costs a token.
    pub(crate) fn admit(
        &mut self,
        caller: &str,
        held: usize,
        total: usize,
        now: Instant,
    ) -> Result<(), Exceeded> {
        if held >= PER_CALLER || total >= TOTAL {
            return Err(Exceeded::Connections);
        }
        if self.buckets.len() >= REMEMBERED {
            self.buckets.retain(|_, b| refilled(*b, now) < BURST);
        }
        if !self.buckets.contains_key(caller) {
            self.buckets.insert(
                caller.to_owned(),
                Bucket {
                    tokens: BURST,
                    at: now,
                },
            );
        }
        let Some(bucket) = self.buckets.get_mut(caller) else {
            return Err(Exceeded::Rate);
        };
        let tokens = refilled(*bucket, now);
        if tokens < 1.0 {
            return Err(Exceeded::Rate);
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        Ok(())
    }
}

/// The bucket's tokens at `now`.
fn refilled(bucket: Bucket, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * REFILL_PER_SEC).min(BURST)
}

/// Warnings about refused callers, at most [`LogLimiter::PER_SECOND`] a second: a flood of
/// hostile connections is counted in the metrics, and must not also flood the node's logs.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    const PER_SECOND: u32 = 10;

    /// A limiter whose first window starts at `now`.
    pub(crate) const fn new(now: Instant) -> Self {
        Self {
            window: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now; `Some(n)` also says that `n` lines were suppressed
    /// since the last one logged.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.logged = 0;
        }
        if self.logged >= Self::PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(n: u64) -> String {
        format!("/kubepods/pod{n}")
    }

    #[test]
    fn a_caller_gets_its_burst_then_its_rate() {
        let mut limits = Limits::default();
        let t0 = Instant::now();
        for _ in 0..32 {
            assert_eq!(limits.admit(&caller(1), 0, 0, t0), Ok(()));
        }
        assert_eq!(limits.admit(&caller(1), 0, 0, t0), Err(Exceeded::Rate));
        // Another caller is not affected.
        assert_eq!(limits.admit(&caller(2), 0, 0, t0), Ok(()));
        // A second later, eight more.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..8 {
            assert_eq!(limits.admit(&caller(1), 0, 0, t1), Ok(()));
        }
        assert_eq!(limits.admit(&caller(1), 0, 0, t1), Err(Exceeded::Rate));
    }

    #[test]
    fn connections_are_capped_per_caller_and_in_total() {
        let mut limits = Limits::default();
        let now = Instant::now();
        assert_eq!(
            limits.admit(&caller(1), PER_CALLER, 0, now),
            Err(Exceeded::Connections)
        );
        assert_eq!(
            limits.admit(&caller(1), 0, TOTAL, now),
            Err(Exceeded::Connections)
        );
        assert_eq!(
            limits.admit(&caller(1), PER_CALLER - 1, TOTAL - 1, now),
            Ok(())
        );
    }

    #[test]
    fn idle_callers_are_forgotten() {
        let mut limits = Limits::default();
        let t0 = Instant::now();
        for n in 0..REMEMBERED as u64 {
            limits.admit(&caller(n), 0, 0, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(10);
        limits.admit(&caller(u64::MAX), 0, 0, later).unwrap();
        assert_eq!(limits.buckets.len(), 1);
    }

    #[test]
    fn logs_are_limited_and_say_what_was_suppressed() {
        let t0 = Instant::now();
        let mut log = LogLimiter::new(t0);
        for _ in 0..LogLimiter::PER_SECOND {
            assert_eq!(log.allow(t0), Some(0));
        }
        assert_eq!(log.allow(t0), None);
        assert_eq!(log.allow(t0), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), Some(2));
    }
}
