//! UDP listeners (`protocol: udp`): PROXY v2 in front of datagrams.
//!
//! ```text
//! LB ─[v2 header | payload]─► listener socket ─► classify (trust, CRC32c, length, UDP family)
//!      ◄─[v2 header? | reply]─┘                     │ drop + count by reason
//!                                                   ▼
//!                       flow table (one loopback socket per client flow, idle expiry, cap)
//!                                                   │ payload (proxy-v2: a clean header first)
//!                                                   ▼
//!                                                  app ─ replies ─► flow socket ─► LB
//! ```
//!
//! One task reads the listener socket and relays each datagram, in arrival order, through its
//! flow's socket (so a flow's datagrams are never reordered); one task per flow relays the app's
//! replies to the load balancer address the flow's datagrams last came from. In `ebpf` mode the
//! flow is recorded in the pod map before its first datagram reaches the app, and the agent's
//! recvmsg/sendmsg hooks show the app the client and send its replies back to the flow socket.

mod ebpf;
mod flows;
mod inbound;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::{net::UdpSocket, sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};
use trueip_addrs::{LbPeer, SidecarAddr};
use trueip_proxy_header::Limits;

pub use self::{
    flows::{Activity, FlowTable},
    inbound::{Dropped, Endpoints, Inbound, app_header, classify, reply_header},
};
/// The UDP listeners' counters (kept with the TCP ones in [`crate::metrics`]).
pub use crate::metrics::udp::{FlowClosed, UdpMetrics, UdpSnapshot};
pub use trueip_sidecar_config::{DatagramHeader, Protocol};

use crate::{
    listen::ListenError,
    metrics::RestoreOutcome,
    restore::{self, EbpfError},
    shutdown::stopped,
};
use trueip_sidecar_config::{ListenerConfig, Mode};

/// The largest UDP payload (65 535 minus the 8-byte UDP header; IPv4 allows 20 bytes less).
const MAX_DATAGRAM: usize = 65_527;
/// At most one warning per drop reason per this interval; the rest are counted in the next one.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// How the app of a UDP listener learns the client.
#[derive(Debug)]
enum Restore {
    /// Payload only.
    None,
    /// A clean v2 header in front of every datagram.
    ProxyV2 {
        allowed: Box<[bool; 256]>,
        crc32c: bool,
    },
    /// Entries in the pod map for the recvmsg/sendmsg hooks.
    Ebpf(ebpf::UdpEbpf),
}

impl Restore {
    fn new(config: &ListenerConfig, agent_socket: &Path) -> Result<Self, EbpfError> {
        Ok(match config.mode {
            // Refused by `validate`: neither can describe a datagram's client.
            Mode::None | Mode::ProxyV1 | Mode::Transparent | Mode::Http => Self::None,
            Mode::ProxyV2 => {
                let mut allowed = Box::new([false; 256]);
                for kind in &config.tlv_allow {
                    allowed[usize::from(kind.0)] = true;
                }
                Self::ProxyV2 {
                    allowed,
                    crc32c: config.crc32c,
                }
            }
            Mode::Ebpf => match ebpf::UdpEbpf::open(agent_socket, config.on_map_full) {
                Ok(ebpf) => Self::Ebpf(ebpf),
                Err(e) => Self::new(&restore::fallback(config, e)?, agent_socket)?,
            },
        })
    }

    fn mode(&self) -> Mode {
        match self {
            Self::None => Mode::None,
            Self::ProxyV2 { .. } => Mode::ProxyV2,
            Self::Ebpf(_) => Mode::Ebpf,
        }
    }
}

/// What the listener's tasks share.
#[derive(Debug)]
struct Shared {
    name: String,
    config: ListenerConfig,
    limits: Limits,
    restore: Restore,
    metrics: Arc<UdpMetrics>,
    /// The listener's bound address: the destination of flows whose header named none.
    local: SocketAddr,
    /// Zero of the flows' activity clock.
    epoch: Instant,
    /// Per reason: when a warning was last logged, and how many were held back since.
    logged: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
}

impl Shared {
    /// Microseconds since the listener started: the flows' activity clock (fine enough that
    /// "idle the longest" rarely ties between flows a few datagrams apart).
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Counts a dropped datagram and logs it, at most once a second per reason.
    fn drop_datagram(&self, reason: &'static str, peer: SocketAddr, detail: &str) {
        self.metrics.dropped(reason);
        self.warn_limited(reason, peer, detail);
    }

    /// One warning per reason per [`LOG_EVERY`], saying how many were held back.
    fn warn_limited(&self, reason: &'static str, peer: SocketAddr, detail: &str) {
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = logged.entry(reason).or_insert((None, 0));
        if entry
            .0
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            entry.1 += 1;
            return;
        }
        let held_back = std::mem::take(&mut entry.1);
        entry.0 = Some(now);
        drop(logged);
        warn!(listener = %self.name, %peer, reason, held_back, "datagram dropped: {detail}");
    }
}

/// One client flow: its socket to the app and the task relaying the app's replies.
#[derive(Debug)]
struct Flow {
    /// Removes the flow's eBPF entries when dropped: declared first, so that it goes before the
    /// socket can close and its port be reused.
    #[expect(
        dead_code,
        reason = "held only for its Drop, which removes the entries"
    )]
    entry: Option<ebpf::FlowEntry>,
    socket: Arc<UdpSocket>,
    /// The load balancer address the flow's datagrams last came from: where replies go.
    lb: Arc<Mutex<SocketAddr>>,
    /// `proxy-v2`: the header written in front of each datagram to the app.
    preamble: Vec<u8>,
    /// The task relaying the app's replies; started once the flow is in the table.
    replies: Option<JoinHandle<()>>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(task) = &self.replies {
            task.abort();
        }
    }
}

/// A bound UDP listener, ready to serve.
#[derive(Debug)]
pub struct UdpListener {
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
}

impl UdpListener {
    /// Binds the listener's address and prepares its restore mode; its counters go to `metrics`.
    pub fn bind(
        config: ListenerConfig,
        agent_socket: &Path,
        metrics: &crate::metrics::SidecarMetrics,
    ) -> Result<Self, ListenError> {
        let name = config.name();
        let restore = Restore::new(&config, agent_socket).map_err(|source| ListenError::Ebpf {
            listener: name.clone(),
            source,
        })?;
        let bind_err = |source| ListenError::Bind {
            listener: name.clone(),
            addr: config.listen,
            source,
        };
        let socket = bind(config.listen).map_err(bind_err)?;
        let local = socket.local_addr().map_err(bind_err)?;
        info!(
            listener = %name, listen = %local, protocol = "udp", upstream = %config.upstream,
            mode = ?restore.mode(), datagram_header = ?config.datagram_header,
            reply_header = config.reply_header, max_flows = config.max_flows,
            flow_idle_timeout = %humantime::format_duration(config.flow_idle_timeout), "listening"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                metrics: Arc::new(metrics.udp_listener(&name)),
                name,
                limits: Limits {
                    max_v2_len: config.max_header_len,
                },
                config,
                restore,
                local,
                epoch: Instant::now(),
                logged: Mutex::default(),
            }),
            socket: Arc::new(socket),
        })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The listener's counters.
    pub fn metrics(&self) -> Arc<UdpMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// What `/readyz` says of this listener (see [`crate::listen::describe`]).
    pub(crate) fn readiness(&self) -> String {
        let config = &self.shared.config;
        crate::admin::describe(
            &self.shared.name,
            "udp",
            config.mode,
            self.shared.restore.mode(),
            false,
        )
    }

    /// Relays datagrams until `shutdown` turns true, then closes every flow. Datagrams have no
    /// connection to drain, so this returns 0 (nothing cut).
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> usize {
        let shared = &self.shared;
        let idle = shared.config.flow_idle_timeout;
        let idle_us = u64::try_from(idle.as_micros()).unwrap_or(u64::MAX);
        let mut sweep = tokio::time::interval(
            (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flows = FlowTable::new(shared.config.max_flows.get());
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut scratch = Vec::new();
        loop {
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, source)) => {
                        self.relay(&mut flows, &buf[..len], source, &mut scratch).await;
                    }
                    Err(e) => shared.warn_limited("recv_error", shared.local, &e.to_string()),
                },
                _ = sweep.tick() => {
                    let expired = flows.expire(shared.now(), idle_us);
                    if !expired.is_empty() {
                        debug!(listener = %shared.name, flows = expired.len(), "idle flows expired");
                        shared.metrics.closed(FlowClosed::Expired, expired.len());
                        shared.metrics.set_active(flows.len());
                    }
                }
                () = stopped(&mut shutdown) => break,
            }
        }
        let open = flows.clear();
        shared.metrics.closed(FlowClosed::Shutdown, open);
        shared.metrics.set_active(0);
        info!(listener = %shared.name, flows = open, "UDP listener stopped");
        0
    }

    /// Relays one datagram from `source`, opening its flow if needed.
    async fn relay(
        &self,
        flows: &mut FlowTable<SocketAddr, Flow>,
        datagram: &[u8],
        source: SocketAddr,
        scratch: &mut Vec<u8>,
    ) {
        let shared = &self.shared;
        let now = shared.now();
        let known = shared.config.datagram_header == DatagramHeader::First
            && flows.contains(&inbound::unmapped(source));
        let inbound = match classify(&shared.config, &shared.limits, datagram, source, known) {
            Ok(inbound) => inbound,
            Err(dropped) => {
                shared.drop_datagram(dropped.reason, source, &dropped.detail);
                return;
            }
        };
        let payload = &datagram[inbound.payload_at..];
        if flows.get(&inbound.key, now).is_none() {
            if let Some((evicted, _flow)) = flows.make_room() {
                shared.metrics.closed(FlowClosed::Evicted, 1);
                shared.warn_limited(
                    "flow_evicted",
                    evicted,
                    "flow table full (max_flows); closed the flow idle the longest",
                );
            }
            match self.open(&inbound, source) {
                Ok((flow, outcome)) => {
                    shared.metrics.opened(outcome);
                    let (activity, _) = flows.insert(inbound.key, flow, now);
                    if let Some(flow) = flows.get(&inbound.key, now) {
                        flow.replies = Some(tokio::spawn(relay_replies(
                            Arc::clone(shared),
                            Arc::clone(&self.socket),
                            Arc::clone(&flow.socket),
                            Arc::clone(&flow.lb),
                            activity,
                            reply_prefix(shared, &inbound, source),
                        )));
                    }
                    shared.metrics.set_active(flows.len());
                    debug!(
                        listener = %shared.name, flow = %inbound.key, lb = %source,
                        client = ?inbound.endpoints.map(|e| e.client), outcome = outcome.label(),
                        "flow opened"
                    );
                }
                Err(dropped) => {
                    shared.drop_datagram(dropped.reason, source, &dropped.detail);
                    return;
                }
            }
        }
        let Some(flow) = flows.get(&inbound.key, now) else {
            return;
        };
        *flow.lb.lock().unwrap_or_else(PoisonError::into_inner) = source;
        let out = if flow.preamble.is_empty() {
            payload
        } else {
            scratch.clear();
            scratch.extend_from_slice(&flow.preamble);
            scratch.extend_from_slice(payload);
            scratch.as_slice()
        };
        match flow.socket.send(out).await {
            Ok(_) => shared.metrics.to_app(payload.len()),
            Err(e) => {
                let reason = if e.raw_os_error() == Some(nix::errno::Errno::EMSGSIZE as i32) {
                    "too_large"
                } else {
                    "upstream_unreachable"
                };
                shared.drop_datagram(reason, source, &format!("sending to the app: {e}"));
            }
        }
    }

    /// Opens a flow for `inbound`: its socket to the app (and in `ebpf` mode its map entries);
    /// the caller starts its reply task once the flow is in the table.
    fn open(&self, inbound: &Inbound, lb: SocketAddr) -> Result<(Flow, RestoreOutcome), Dropped> {
        let shared = &self.shared;
        let upstream = shared.config.upstream;
        let io_drop = |e: io::Error| Dropped {
            reason: "upstream_unreachable",
            detail: format!("cannot open a socket to the app at {upstream}: {e}"),
        };
        let socket =
            flow_socket(upstream, matches!(shared.restore, Restore::Ebpf(_))).map_err(io_drop)?;
        let local = socket.local_addr().map_err(io_drop)?;
        let mut outcome = inbound.outcome;
        let mut entry = None;
        let mut preamble = Vec::new();
        match (&shared.restore, inbound.endpoints) {
            (Restore::Ebpf(ebpf), Some(endpoints)) => {
                let sidecar = SidecarAddr::new(local);
                (entry, outcome) = ebpf.record(upstream.port(), sidecar, endpoints.client)?;
            }
            (Restore::ProxyV2 { allowed, crc32c }, endpoints) => {
                let unnamed = Endpoints::unnamed(LbPeer::new(lb), SidecarAddr::new(shared.local));
                let endpoints = endpoints.unwrap_or(unnamed);
                preamble = app_header(endpoints, inbound.header.as_deref(), allowed, *crc32c);
            }
            _ => {}
        }
        // Connected only now: in `ebpf` mode the entries exist before anything can be sent.
        socket.connect(upstream).map_err(io_drop)?;
        let socket = UdpSocket::from_std(socket).map_err(io_drop)?;
        Ok((
            Flow {
                entry,
                socket: Arc::new(socket),
                lb: Arc::new(Mutex::new(lb)),
                preamble,
                replies: None,
            },
            outcome,
        ))
    }
}

/// The header put in front of the flow's replies, when `reply_header` asks for one.
fn reply_prefix(shared: &Shared, inbound: &Inbound, lb: SocketAddr) -> Vec<u8> {
    if !shared.config.reply_header {
        return Vec::new();
    }
    let endpoints = inbound.endpoints.unwrap_or(Endpoints::unnamed(
        LbPeer::new(lb),
        SidecarAddr::new(shared.local),
    ));
    reply_header(endpoints, shared.config.crc32c)
}

/// Relays the app's replies on one flow to the load balancer, until the flow is closed.
async fn relay_replies(
    shared: Arc<Shared>,
    listener: Arc<UdpSocket>,
    flow: Arc<UdpSocket>,
    lb: Arc<Mutex<SocketAddr>>,
    activity: Arc<Activity<SocketAddr>>,
    prefix: Vec<u8>,
) {
    let at = prefix.len();
    let mut buf = vec![0u8; at + MAX_DATAGRAM + 1];
    buf[..at].copy_from_slice(&prefix);
    loop {
        let peer = *lb.lock().unwrap_or_else(PoisonError::into_inner);
        match flow.recv(&mut buf[at..]).await {
            Ok(len) => {
                activity.touch(shared.now());
                let to = *lb.lock().unwrap_or_else(PoisonError::into_inner);
                match listener.send_to(&buf[..at + len], to).await {
                    Ok(_) => shared.metrics.to_client(len),
                    Err(e) => shared.drop_datagram(
                        "reply_failed",
                        to,
                        &format!("sending a reply to the load balancer: {e}"),
                    ),
                }
            }
            // ECONNREFUSED: an earlier datagram found no app listening (ICMP port unreachable).
            Err(e) => shared.warn_limited(
                "upstream_unreachable",
                peer,
                &format!(
                    "the app at {} is not answering: {e}",
                    shared.config.upstream
                ),
            ),
        }
    }
}

/// A flow's socket: bound on the upstream's loopback address in `ebpf` mode (the entries name
/// it), on the family's wildcard otherwise; not yet connected.
fn flow_socket(upstream: SocketAddr, loopback: bool) -> io::Result<std::net::UdpSocket> {
    let ip = match (loopback, upstream.ip()) {
        (true, ip) => ip,
        (false, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (false, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The listening socket: dual-stack on `[::]` so IPv4 load balancers reach it too.
fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(SockProtocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
