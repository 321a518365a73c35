//! What the types alone cannot catch: values that are fine alone but not together, and
//! uniqueness across listeners. Each check names the listener and the key at fault.

use std::collections::HashSet;

use crate::{
    config::{Config, TransparentConfig},
    error::ConfigError,
    listener::ListenerConfig,
    policies::{HeaderPolicy, Mode, UntrustedPolicy},
    udp::{DatagramHeader, Protocol},
};

/// The largest v2 header the protocol can express: 16 fixed bytes and a 16-bit length.
const MAX_V2_WIRE_LEN: usize = 16 + u16::MAX as usize;
/// The smallest useful cap: a v2 header with IPv6 addresses and no TLVs.
const MIN_V2_CAP: usize = 16 + 36;

/// A listener key at fault and what is wrong with it.
type Problem = (&'static str, String);

impl Config {
    /// Checks what the types alone cannot: combinations of values and uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::NoListeners);
        }
        self.transparent.validate()?;
        let mut seen_addrs = HashSet::new();
        let mut seen_names = HashSet::new();
        for l in &self.listeners {
            l.validate()?;
            let name = l.name();
            let invalid = |key, problem: String| ConfigError::Invalid {
                listener: name.clone(),
                key,
                problem,
            };
            if !seen_addrs.insert((l.protocol, l.listen)) {
                return Err(invalid(
                    "listen",
                    format!("{} is used by another listener", l.listen),
                ));
            }
            if !seen_names.insert(name.clone()) {
                return Err(invalid("name", "is used by another listener".into()));
            }
        }
        Ok(())
    }
}

impl TransparentConfig {
    /// The kernel's own tables (`unspec`, `default`, `main`, `local`) are never trueip's.
    const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
    /// The priority of the `main` table's rule: trueip's must come first.
    const MAIN_RULE_PRIORITY: u32 = 32766;

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| ConfigError::Invalid {
            listener: "transparent".into(),
            key,
            problem,
        };
        if Self::RESERVED_TABLES.contains(&self.table) {
            return Err(invalid(
                "table",
                format!(
                    "{} is one of the kernel's tables (0, 253 default, 254 main, 255 local); \
                     choose a table of its own",
                    self.table
                ),
            ));
        }
        if self.priority == 0 || self.priority >= Self::MAIN_RULE_PRIORITY {
            return Err(invalid(
                "priority",
                format!(
                    "{} must be in 1..{}, before the rule of the main table",
                    self.priority,
                    Self::MAIN_RULE_PRIORITY
                ),
            ));
        }
        Ok(())
    }
}

impl ListenerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.check_header()
            .and_then(|()| self.check_mode())
            .and_then(|()| self.check_steer())
            .and_then(|()| self.http.limits.problem().map_or(Ok(()), Err))
            .and_then(|()| self.check_udp())
            .map_err(|(key, problem)| ConfigError::Invalid {
                listener: self.name(),
                key,
                problem,
            })
    }

    /// The header keys: timeouts, size cap, who is trusted, and `header: off`.
    fn check_header(&self) -> Result<(), Problem> {
        if self.header_timeout.is_zero() {
            return Err(("header_timeout", "must be longer than 0s".into()));
        }
        if self.header == HeaderPolicy::Optional && self.detect_timeout > self.header_timeout {
            return Err((
                "detect_timeout",
                format!(
                    "{} is longer than header_timeout ({})",
                    humantime::format_duration(self.detect_timeout),
                    humantime::format_duration(self.header_timeout)
                ),
            ));
        }
        if !(MIN_V2_CAP..=MAX_V2_WIRE_LEN).contains(&self.max_header_len) {
            return Err((
                "max_header_len",
                format!(
                    "{} is outside {MIN_V2_CAP}..={MAX_V2_WIRE_LEN}",
                    self.max_header_len
                ),
            ));
        }
        if self.header != HeaderPolicy::Off && self.trusted_sources.is_empty() {
            return Err((
                "trusted_sources",
                "is empty, so every header would be refused; list the load balancers' \
                 addresses (0.0.0.0/0 and ::/0 trust everyone), or set `header: off`"
                    .into(),
            ));
        }
        if self.header == HeaderPolicy::Off && self.mode != Mode::None {
            return Err((
                "mode",
                "needs a PROXY header to restore from; with `header: off` use `mode: none`".into(),
            ));
        }
        Ok(())
    }

    /// The mode and what it needs: an app on loopback, a usable fallback, `http`'s keys.
    fn check_mode(&self) -> Result<(), Problem> {
        if matches!(self.mode, Mode::Ebpf | Mode::Transparent) && !self.upstream.ip().is_loopback()
        {
            return Err((
                "upstream",
                format!(
                    "{} is not on loopback; `mode: {}` restores connections to an app in \
                     the same pod (127.0.0.1 or ::1)",
                    self.upstream,
                    self.mode.label()
                ),
            ));
        }
        if self.fallback == Some(Mode::Ebpf) {
            return Err(("fallback", "cannot be ebpf itself".into()));
        }
        if self.fallback == Some(Mode::Transparent) {
            return Err((
                "fallback",
                "cannot be transparent (its routing is set up at start, for listeners in that \
                 mode); use none, proxy-v1 or proxy-v2"
                    .into(),
            ));
        }
        if self.fallback.is_some() && self.mode != Mode::Ebpf {
            return Err(("fallback", "applies to `mode: ebpf` only".into()));
        }
        if self.mode == Mode::Http && self.untrusted == UntrustedPolicy::Passthrough {
            return Err((
                "untrusted",
                "`passthrough` would hand the PROXY header to the HTTP parser; `mode: http` \
                 needs `reject`"
                    .into(),
            ));
        }
        if self.http.tls.is_some() && self.mode != Mode::Http {
            return Err(("http.tls", "applies to `mode: http` only".into()));
        }
        Ok(())
    }

    /// Steering: the app on loopback, and never with `transparent`.
    fn check_steer(&self) -> Result<(), Problem> {
        if self.steer && !self.upstream.ip().is_loopback() {
            return Err((
                "steer",
                format!(
                    "needs the upstream on loopback (127.0.0.1 or ::1), not {}: the sidecar's own \
                     connections to the app would be steered back to the sidecar",
                    self.upstream
                ),
            ));
        }
        if self.steer && self.mode == Mode::Transparent {
            return Err((
                "steer",
                "cannot be used with `mode: transparent`: the sidecar connects to the app from \
                 the client's address, and steering would hand that connection back to the \
                 sidecar; point the load balancer at the sidecar's port"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks the keys of a UDP listener (and that TCP-only keys are not asked of one): the key at
    /// fault and what is wrong.
    fn check_udp(&self) -> Result<(), Problem> {
        if self.protocol != Protocol::Udp {
            return Ok(());
        }
        if self.mode == Mode::ProxyV1 || self.fallback == Some(Mode::ProxyV1) {
            return Err((
                "mode",
                "proxy-v1 cannot describe UDP (v1 only has TCP4/TCP6); use proxy-v2, ebpf or none"
                    .into(),
            ));
        }
        if matches!(self.mode, Mode::Transparent | Mode::Http) {
            return Err((
                "mode",
                format!(
                    "{} applies to TCP listeners only; for UDP use proxy-v2, ebpf or none",
                    self.mode.label()
                ),
            ));
        }
        if self.steer {
            return Err((
                "steer",
                "applies to TCP listeners only (for UDP, point the load balancer at the sidecar's port)"
                    .into(),
            ));
        }
        if self.flow_idle_timeout.is_zero() {
            return Err(("flow_idle_timeout", "must be longer than 0s".into()));
        }
        if self.datagram_header == DatagramHeader::First && self.header != HeaderPolicy::Required {
            return Err((
                "datagram_header",
                "`first` needs `header: required` (a flow starts with its header)".into(),
            ));
        }
        Ok(())
    }
}
