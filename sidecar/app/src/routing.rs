//! The policy routing of the `transparent` restore mode, installed in the pod's network
//! namespace at start and removed at exit.
//!
//! In `transparent` mode the sidecar connects to the app on loopback *from the client's
//! address*. The app's replies to that address would follow the default route out of the pod;
//! one rule and one route per address family deliver them to the sidecar's socket instead (the
//! recipe go-mmproxy documents):
//!
//! ```text
//! ip rule add from 127.0.0.0/8 iif lo lookup <table> pref <priority>
//! ip route add local default dev lo table <table>
//! ip -6 rule add from ::1/128 iif lo lookup <table> pref <priority>
//! ip -6 route add local default dev lo table <table>
//! ```
//!
//! `iif lo` matches locally generated packets, and only packets from a loopback address match
//! `from`: those can never leave the pod anyway, so nothing else in the pod is re-routed.
//! Measured on kernel 6.18: with the upstream on loopback no sysctl is needed
//! (`route_localnet` stays 0, replies keep their loopback route and are not re-checked as
//! martians), for IPv4 and IPv6 alike.
//!
//! Everything is done over rtnetlink with the message types of `netlink-packet-route` on a
//! blocking `netlink-sys` socket: the setup runs once before the listeners start and the removal
//! in `Drop`, where a blocking request/acknowledge exchange is all that is needed. Adding is
//! idempotent: an identical rule or route left by an earlier run (a crash, SIGKILL) is reused,
//! not duplicated, and removed at this run's exit.

use std::{fmt, io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use trueip_telemetry::Chain;

use trueip_sidecar_config::TransparentConfig;

/// `CAP_NET_ADMIN`'s bit in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// The loopback device, where the replies are delivered.
const LOOPBACK: &str = "lo";

/// An address family the mode serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// IPv4: the rule matches `from 127.0.0.0/8`.
    V4,
    /// IPv6: the rule matches `from ::1/128`.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn address_family(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }

    /// The loopback sources whose packets the rule re-routes, with their prefix length.
    fn loopback_net(self) -> (IpAddr, u8) {
        match self {
            Self::V4 => (IpAddr::from([127, 0, 0, 0]), 8),
            Self::V6 => (IpAddr::from(std::net::Ipv6Addr::LOCALHOST), 128),
        }
    }

    /// `ip`'s family flag, for messages a user can re-type.
    fn ip_flag(self) -> &'static str {
        match self {
            Self::V4 => "ip",
            Self::V6 => "ip -6",
        }
    }
}

/// One piece of the policy routing: the rule or the route of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Rule(Family),
    Route(Family),
}

/// Why the policy routing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The process lacks CAP_NET_ADMIN.
    #[error(
        "the transparent mode needs CAP_NET_ADMIN (for IP_TRANSPARENT sockets and the policy \
         routing that returns the app's replies to the sidecar) and this process does not have \
         it: add NET_ADMIN to the container's securityContext.capabilities.add and run it as \
         user 0 (Kubernetes gives added capabilities to root only; the trueip injector does \
         both for trueip.io/mode: transparent), or choose another mode"
    )]
    NoCapability,
    /// The capability sets could not be read.
    #[error("cannot read this process's capabilities from /proc/self/status")]
    Capabilities(#[source] io::Error),
    /// Talking to the kernel failed.
    #[error("cannot {what} over rtnetlink")]
    Netlink {
        /// The step.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel refused a rule or route.
    #[error("cannot add `{command}`{hint}")]
    Add {
        /// The piece, as the `ip` command that adds it.
        command: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The table already routes `default` somewhere else: it is not free for trueip.
    #[error(
        "routing table {table} ({family}) already has a default route that is not trueip's \
         `local default dev lo`; set `transparent.table` to a table nothing else uses"
    )]
    TableInUse {
        /// The table.
        table: u32,
        /// The family, as `ip` spells it.
        family: &'static str,
    },
}

/// The installed policy routing; dropping it removes every rule and route (also ones reused
/// from an earlier run).
pub struct PolicyRouting {
    socket: NetlinkSocket,
    config: TransparentConfig,
    loopback: u32,
    installed: Vec<Piece>,
}

impl fmt::Debug for PolicyRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyRouting")
            .field("config", &self.config)
            .field("installed", &self.installed)
            .finish_non_exhaustive()
    }
}

impl PolicyRouting {
    /// Checks for CAP_NET_ADMIN, then adds the route and the rule of each of `families` (route
    /// first, so the rule never points at an empty table). Pieces that exist already are
    /// reused. On error, what was added is removed again.
    pub fn install(config: TransparentConfig, families: &[Family]) -> Result<Self, RoutingError> {
        if !has_net_admin()? {
            return Err(RoutingError::NoCapability);
        }
        let loopback =
            nix::net::if_::if_nametoindex(LOOPBACK).map_err(|e| RoutingError::Netlink {
                what: "find the loopback device".into(),
                source: e.into(),
            })?;
        let mut routing = Self {
            socket: NetlinkSocket::open()?,
            config,
            loopback,
            installed: Vec::new(),
        };
        for &family in families {
            for piece in [Piece::Route(family), Piece::Rule(family)] {
                // On error `routing` drops here and removes what was added.
                let reused = routing.add(piece)?;
                tracing::info!(
                    rule = %routing.command("add", piece),
                    reused,
                    "policy routing for the transparent mode in place{}",
                    if reused { " (left by an earlier run; reused)" } else { "" }
                );
                routing.installed.push(piece);
            }
        }
        Ok(routing)
    }

    /// The `ip` command that adds (`verb` "add") or deletes ("del") `piece`, for logs and
    /// errors.
    fn command(&self, verb: &str, piece: Piece) -> String {
        let TransparentConfig { table, priority } = self.config;
        match piece {
            Piece::Rule(family) => {
                let (net, len) = family.loopback_net();
                format!(
                    "{} rule {verb} from {net}/{len} iif {LOOPBACK} lookup {table} pref {priority}",
                    family.ip_flag()
                )
            }
            Piece::Route(family) => format!(
                "{} route {verb} local default dev {LOOPBACK} table {table}",
                family.ip_flag()
            ),
        }
    }

    /// The netlink message that adds or deletes `piece`.
    fn message(&self, piece: Piece) -> RouteNetlinkMessage {
        match piece {
            Piece::Rule(family) => RouteNetlinkMessage::NewRule(rule(family, self.config)),
            Piece::Route(family) => {
                RouteNetlinkMessage::NewRoute(route(family, self.config.table, self.loopback))
            }
        }
    }

    /// Adds `piece`; `Ok(true)` when an identical one was there already.
    fn add(&self, piece: Piece) -> Result<bool, RoutingError> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        match self.socket.request(self.message(piece), flags) {
            Ok(()) => Ok(false),
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => match piece {
                // The kernel compares every field of a rule: an EEXIST one is identical.
                Piece::Rule(_) => Ok(true),
                // For routes it compares only destination, TOS and metric: check the type.
                Piece::Route(family) => {
                    if self.route_is_ours(family)? {
                        Ok(true)
                    } else {
                        Err(RoutingError::TableInUse {
                            table: self.config.table,
                            family: family.ip_flag(),
                        })
                    }
                }
            },
            Err(source) => Err(RoutingError::Add {
                command: self.command("add", piece),
                hint: match source.raw_os_error() {
                    Some(nix::libc::EPERM | nix::libc::EACCES) => {
                        "; the process needs CAP_NET_ADMIN in the pod's network namespace"
                    }
                    Some(nix::libc::EAFNOSUPPORT) => {
                        "; this address family is disabled in the pod: use an upstream of the \
                         other family"
                    }
                    _ => "",
                },
                source,
            }),
        }
    }

    /// Whether the table's default route of `family` is `local default dev lo`.
    fn route_is_ours(&self, family: Family) -> Result<bool, RoutingError> {
        let mut query = RouteMessage::default();
        query.header.address_family = family.address_family();
        let routes = self
            .socket
            .dump(RouteNetlinkMessage::GetRoute(query))
            .map_err(|source| RoutingError::Netlink {
                what: "list routes".into(),
                source,
            })?;
        Ok(routes.iter().any(|msg| {
            let RouteNetlinkMessage::NewRoute(r) = msg else {
                return false;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            table == self.config.table
                && r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Local
                && r.attributes.contains(&RouteAttribute::Oif(self.loopback))
        }))
    }

    /// Removes `piece`; gone already is fine.
    fn remove(&self, piece: Piece) {
        let message = match self.message(piece) {
            RouteNetlinkMessage::NewRule(r) => RouteNetlinkMessage::DelRule(r),
            RouteNetlinkMessage::NewRoute(r) => RouteNetlinkMessage::DelRoute(r),
            other => other,
        };
        match self.socket.request(message, NLM_F_REQUEST | NLM_F_ACK) {
            Ok(()) => tracing::info!(rule = %self.command("del", piece), "policy routing removed"),
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ENOENT | nix::libc::ESRCH)) => {
                tracing::info!(rule = %self.command("del", piece), "policy routing was gone already");
            }
            Err(e) => tracing::warn!(
                rule = %self.command("del", piece), error = %Chain(&e),
                "could not remove the policy routing; remove it by hand with this command"
            ),
        }
    }
}

impl Drop for PolicyRouting {
    fn drop(&mut self) {
        // Rules first, so no rule points at a table whose route is gone.
        for piece in self.installed.iter().rev() {
            self.remove(*piece);
        }
    }
}

/// `from <loopback> iif lo lookup <table> pref <priority>`.
fn rule(family: Family, config: TransparentConfig) -> RuleMessage {
    let (net, len) = family.loopback_net();
    let mut rule = RuleMessage::default();
    rule.header.family = family.address_family();
    rule.header.src_len = len;
    rule.header.action = RuleAction::ToTable;
    // Tables above 255 only fit the attribute; the header's byte then says "see attribute".
    rule.header.table = u8::try_from(config.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    rule.attributes = vec![
        RuleAttribute::Source(net),
        RuleAttribute::Iifname(LOOPBACK.into()),
        RuleAttribute::Table(config.table),
        RuleAttribute::Priority(config.priority),
    ];
    rule
}

/// `local default dev lo table <table>`, as `ip route add` builds it (scope host, proto boot).
fn route(family: Family, table: u32, loopback: u32) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = family.address_family();
    route.header.destination_prefix_length = 0;
    route.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    route.header.protocol = RouteProtocol::Boot;
    route.header.scope = RouteScope::Host;
    route.header.kind = RouteType::Local;
    route.attributes = vec![RouteAttribute::Table(table), RouteAttribute::Oif(loopback)];
    route
}

/// Whether CAP_NET_ADMIN is in this process's effective set (`CapEff` in /proc/self/status).
pub fn has_net_admin() -> Result<bool, RoutingError> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(RoutingError::Capabilities)?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| {
            RoutingError::Capabilities(io::Error::new(
                io::ErrorKind::InvalidData,
                "no readable CapEff line",
            ))
        })?;
    Ok(effective & (1 << CAP_NET_ADMIN) != 0)
}

/// A blocking rtnetlink socket that sends one request at a time.
struct NetlinkSocket {
    socket: Socket,
}

impl NetlinkSocket {
    fn open() -> Result<Self, RoutingError> {
        let netlink = |what: &str| {
            let what = what.to_owned();
            move |source| RoutingError::Netlink { what, source }
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(netlink("open a socket"))?;
        socket.bind_auto().map_err(netlink("bind a socket"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(netlink("connect to the kernel"))?;
        Ok(Self { socket })
    }

    fn send(&self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let mut message = NetlinkMessage::from(message);
        message.header.flags = flags;
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(())
    }

    /// Sends `message` and waits for the kernel's acknowledgement (or error).
    fn request(&self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.send(message, flags)?;
        let mut result = None;
        self.receive(|payload| {
            if let NetlinkPayload::Error(e) = payload {
                result = Some(match e.code {
                    None => Ok(()),
                    Some(_) => Err(e.to_io()),
                });
            }
            result.is_some()
        })?;
        result.unwrap_or(Ok(()))
    }

    /// Sends a dump request and collects every answer until the kernel says done.
    fn dump(&self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.send(message, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut all = Vec::new();
        let mut error = None;
        self.receive(|payload| match payload {
            NetlinkPayload::InnerMessage(m) => {
                all.push(m);
                false
            }
            NetlinkPayload::Error(e) if e.code.is_some() => {
                error = Some(e.to_io());
                true
            }
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => true,
            _ => false,
        })?;
        error.map_or(Ok(all), Err)
    }

    /// Reads datagrams, feeding each message to `handle` until it returns `true`.
    fn receive(
        &self,
        mut handle: impl FnMut(NetlinkPayload<RouteNetlinkMessage>) -> bool,
    ) -> io::Result<()> {
        loop {
            let (buf, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < buf.len() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = message.header.length as usize;
                if handle(message.payload) {
                    return Ok(());
                }
                if len == 0 {
                    break;
                }
                // Messages are 4-byte aligned inside a datagram.
                offset += (len + 3) & !3;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_what_ip_rule_add_sends() {
        let config = TransparentConfig {
            table: 29810,
            priority: 100,
        };
        let v4 = rule(Family::V4, config);
        assert_eq!(v4.header.family, AddressFamily::Inet);
        assert_eq!(v4.header.src_len, 8);
        assert_eq!(v4.header.action, RuleAction::ToTable);
        assert_eq!(v4.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(v4.attributes.contains(&RuleAttribute::Table(29810)));
        assert!(v4.attributes.contains(&RuleAttribute::Priority(100)));
        assert!(v4.attributes.contains(&RuleAttribute::Iifname("lo".into())));
        assert!(
            v4.attributes
                .contains(&RuleAttribute::Source("127.0.0.0".parse().unwrap()))
        );
        let v6 = rule(Family::V6, TransparentConfig { table: 7, ..config });
        assert_eq!(v6.header.family, AddressFamily::Inet6);
        assert_eq!((v6.header.src_len, v6.header.table), (128, 7));
        assert!(
            v6.attributes
                .contains(&RuleAttribute::Source("::1".parse().unwrap()))
        );
    }

    #[test]
    fn the_route_is_a_local_default_on_loopback() {
        let r = route(Family::V6, 300, 1);
        assert_eq!(r.header.address_family, AddressFamily::Inet6);
        assert_eq!(r.header.kind, RouteType::Local);
        assert_eq!(r.header.scope, RouteScope::Host);
        assert_eq!(r.header.destination_prefix_length, 0);
        assert!(r.attributes.contains(&RouteAttribute::Table(300)));
        assert!(r.attributes.contains(&RouteAttribute::Oif(1)));
    }

    #[test]
    fn capabilities_are_read_from_proc() {
        // Whatever this process has, the status file parses.
        has_net_admin().unwrap();
    }
}
