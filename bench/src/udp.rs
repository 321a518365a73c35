//! The UDP workload: the app's echo on UDP, and the load generator's request/response over
//! datagrams, each flow (one client socket) with one datagram in flight, behind a PROXY v2 UDP
//! header when the target is a sidecar (what a load balancer sends), bare otherwise.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::{net::UdpSocket, sync::Barrier, task::JoinSet};
use trueip_proxy_header::{Addresses, Command, Header, Transport, Version};

use crate::{
    loadgen::{HeaderKind, Target},
    wire,
};

/// A request whose echo has not come back by then is counted lost and the flow goes on.
const LOSS_TIMEOUT: Duration = Duration::from_secs(1);

/// Highest latency the histogram tracks.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Result of the UDP request/response workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UdpResult {
    /// Client flows, one datagram in flight each.
    pub flows: usize,
    /// Payload size of a request (= its echo), bytes.
    pub size: usize,
    /// Round trips completed (request out, echo back and checked).
    pub datagrams: u64,
    /// Requests whose echo did not come back within a second.
    pub lost: u64,
    /// Measured duration.
    pub secs: f64,
    /// Round trips per second.
    pub dps: f64,
    /// Median round-trip time, µs.
    pub p50_us: f64,
    /// 99th percentile round-trip time, µs.
    pub p99_us: f64,
}

/// The v2 header a load balancer puts in front of a flow's datagrams.
fn v2_header(local: SocketAddr, target: SocketAddr) -> io::Result<Vec<u8>> {
    Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Datagram,
        addresses: Addresses::Inet {
            source: local,
            destination: target,
        },
        tlvs: trueip_proxy_header::Tlvs::default(),
    }
    .to_v2(false)
    .map_err(io::Error::other)
}

/// `flows` client sockets, each sending `size`-byte datagrams to `target` one at a time for
/// `duration`, checking every echo.
pub async fn request_response(
    target: Target,
    flows: usize,
    size: usize,
    duration: Duration,
) -> io::Result<UdpResult> {
    let barrier = Arc::new(Barrier::new(flows + 1));
    let mut set = JoinSet::new();
    for _ in 0..flows {
        let barrier = Arc::clone(&barrier);
        set.spawn(async move {
            let ready = flow_socket(target, size).await;
            barrier.wait().await;
            let (socket, request) = ready?;
            let payload = wire::pattern(size);
            let mut buf = vec![0u8; 65_536];
            let mut hist = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .map_err(io::Error::other)?;
            let mut lost = 0u64;
            let started = Instant::now();
            while started.elapsed() < duration {
                let t = Instant::now();
                socket.send(&request).await?;
                match tokio::time::timeout(LOSS_TIMEOUT, socket.recv(&mut buf)).await {
                    Ok(len) => {
                        if buf[..len?] != payload[..] {
                            return Err(io::Error::other("UDP echo differs from the request"));
                        }
                        hist.saturating_record(
                            u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
                        );
                    }
                    Err(_) => lost += 1,
                }
            }
            Ok((hist, lost))
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut all =
        Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3).map_err(io::Error::other)?;
    let mut lost = 0;
    while let Some(joined) = set.join_next().await {
        let (hist, l) = joined.map_err(io::Error::other)??;
        all.add(&hist).map_err(io::Error::other)?;
        lost += l;
    }
    let secs = started.elapsed().as_secs_f64();
    let us = |q| all.value_at_quantile(q) as f64 / 1e3;
    Ok(UdpResult {
        flows,
        size,
        datagrams: all.len(),
        lost,
        secs,
        dps: all.len() as f64 / secs,
        p50_us: us(0.5),
        p99_us: us(0.99),
    })
}

/// A client socket connected to the target, and the request it sends (header + payload).
async fn flow_socket(target: Target, size: usize) -> io::Result<(UdpSocket, Vec<u8>)> {
    let any = match target.addr.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(target.addr).await?;
    let mut request = match target.header {
        HeaderKind::None => Vec::new(),
        HeaderKind::V2 => v2_header(socket.local_addr()?, target.addr)?,
    };
    request.extend_from_slice(&wire::pattern(size));
    Ok((socket, request))
}

/// Echoes every datagram on `socket` back to its sender, until an error.
pub async fn echo(socket: UdpSocket) -> io::Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = socket.recv_from(&mut buf).await?;
        socket.send_to(&buf[..len], from).await?;
    }
}
