//! `trueip-record-app`, the pod app that records every byte it receives — the sidecar's
//! re-emitted PROXY header included — and the format of what it reports.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use anyhow::{Context, Result};

use crate::topology::Topology;
use trueip_test_kit::{
    netns::Netns,
    prereq::own_binary,
    process::{Launch, Proc},
    run::wait_for,
};

/// A connection that has sent something and then nothing for this long is recorded as is.
pub const IDLE: Duration = Duration::from_millis(400);

/// How long the app gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The event the app prints per connection.
const RECORDED: &str = "recorded";

/// What one connection delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The peer `accept()` returned (the sidecar, on loopback).
    pub peer: Option<SocketAddr>,
    /// Every byte received, in order.
    pub bytes: Vec<u8>,
}

impl Recording {
    /// `recorded peer=.. bytes=.. hex=..`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{RECORDED} peer={} bytes={} hex=",
            self.peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            self.bytes.len()
        );
        for b in &self.bytes {
            // Writing to a String cannot fail.
            let _ = write!(line, "{b:02x}");
        }
        line
    }

    /// Parses a `recorded` line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        if words.next() != Some(RECORDED) {
            return None;
        }
        let mut rec = Self {
            peer: None,
            bytes: Vec::new(),
        };
        for (key, value) in words.filter_map(|w| w.split_once('=')) {
            match key {
                "peer" => rec.peer = value.parse().ok(),
                "hex" => rec.bytes = from_hex(value)?,
                _ => {}
            }
        }
        Some(rec)
    }
}

/// Decodes lower- or upper-case hex.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A running `trueip-record-app`.
#[derive(Debug)]
pub struct RecordApp {
    proc: Proc,
}

impl RecordApp {
    /// Starts the app on `addrs` in `netns` and waits until it listens.
    pub fn start(topo: &Topology, netns: &Netns, addrs: &[SocketAddr]) -> Result<Self> {
        let mut proc = Launch::new("record-app", own_binary("trueip-record-app")?)
            .args(addrs.iter().map(ToString::to_string))
            .netns(netns)
            .spawn(topo.dir())?;
        for &addr in addrs {
            proc.wait_listening(netns, addr, START_TIMEOUT)?;
        }
        Ok(Self { proc })
    }

    /// Every connection recorded so far.
    pub fn recordings(&self) -> Vec<Recording> {
        self.proc
            .log()
            .lines()
            .filter_map(Recording::parse)
            .collect()
    }

    /// Waits until `n` connections have been recorded and returns them.
    pub fn wait_recordings(&mut self, n: usize, timeout: Duration) -> Result<Vec<Recording>> {
        wait_for(&format!("{n} recorded connection(s)"), timeout, || {
            let got = self.recordings();
            if got.len() < n {
                self.proc.ensure_running()?;
            }
            Ok((got.len() >= n).then_some(got))
        })
        .context("the record app's output")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_round_trip() {
        let rec = Recording {
            peer: Some("127.0.0.1:4000".parse().unwrap()),
            bytes: b"\r\n\r\n\0\r\nQUIT\n\x21\xff".to_vec(),
        };
        assert_eq!(Recording::parse(&rec.line()), Some(rec));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("abc"), None);
    }
}
