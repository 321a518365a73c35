//! UDP pieces of the interop tests: the tests' UDP app (`trueip-udp-echo-app`) and the format of
//! what it reports, a load balancer that puts a PROXY v2 header in front of every datagram (our
//! own encoder; no Debian package sends PROXY v2 over UDP), a UDP client, and the sidecar's
//! `/metrics` read over HTTP.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use trueip_proxy_header::{
    Addresses, Command, Header, Limits, Tlvs, Transport, Version, decode_datagram,
};

use crate::topology::Topology;
use trueip_test_kit::{
    cgroup::Cgroup,
    netns::Netns,
    prereq::own_binary,
    process::{Launch, Proc},
    run::wait_for,
};

/// How long a client waits for its echo.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the app and the sidecar get to bind.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the load balancer's threads look at their stop flag.
const POLL: Duration = Duration::from_millis(100);

/// One datagram as the UDP app saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The source `recvfrom()` returned.
    pub from: SocketAddr,
    /// The app socket's own address.
    pub local: SocketAddr,
    /// Payload bytes (after the header with `--proxy-v2`).
    pub bytes: usize,
    /// FNV-1a of the payload.
    pub fnv1a: u64,
    /// With `--proxy-v2`: the client the header named (`Some(None)`: a header without one).
    pub header: Option<Option<SocketAddr>>,
    /// Whether the datagram was valid for the app (with `--proxy-v2`: its header decoded).
    pub valid: bool,
}

impl Datagram {
    /// The line the app prints: `datagram from=.. local=.. bytes=.. fnv1a=.. header=..`.
    pub fn line(&self) -> String {
        let header = match (self.valid, self.header) {
            (false, _) => "invalid".to_owned(),
            (true, Some(Some(client))) => client.to_string(),
            (true, Some(None)) => "none".to_owned(),
            (true, None) => "-".to_owned(),
        };
        format!(
            "datagram from={} local={} bytes={} fnv1a={:016x} header={header}",
            self.from, self.local, self.bytes, self.fnv1a
        )
    }

    /// Parses a `datagram` line, or `None` for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        if words.next() != Some("datagram") {
            return None;
        }
        let mut from = None;
        let mut local = None;
        let mut bytes = None;
        let mut fnv1a = None;
        let mut header = None;
        let mut valid = true;
        for (key, value) in words.filter_map(|w| w.split_once('=')) {
            match key {
                "from" => from = value.parse().ok(),
                "local" => local = value.parse().ok(),
                "bytes" => bytes = value.parse().ok(),
                "fnv1a" => fnv1a = u64::from_str_radix(value, 16).ok(),
                "header" => match value {
                    "-" => {}
                    "invalid" => valid = false,
                    "none" => header = Some(None),
                    client => header = Some(Some(client.parse().ok()?)),
                },
                _ => {}
            }
        }
        Some(Self {
            from: from?,
            local: local?,
            bytes: bytes?,
            fnv1a: fnv1a?,
            header,
            valid,
        })
    }
}

/// A running `trueip-udp-echo-app`.
#[derive(Debug)]
pub struct UdpEchoApp {
    proc: Proc,
}

impl UdpEchoApp {
    /// Starts the app on `addrs` in `netns` (inside `cgroup` when given; `proxy_v2`: it parses
    /// the header itself) and waits until it is bound.
    pub fn start(
        topo: &Topology,
        netns: &Netns,
        addrs: &[SocketAddr],
        cgroup: Option<&Cgroup>,
        proxy_v2: bool,
    ) -> Result<Self> {
        let mut launch = Launch::new(
            &format!("udp-echo-app-{}", netns.name()),
            own_binary("trueip-udp-echo-app")?,
        )
        .args(
            proxy_v2
                .then(|| "--proxy-v2".to_owned())
                .into_iter()
                .chain(addrs.iter().map(ToString::to_string)),
        )
        .netns(netns);
        if let Some(cgroup) = cgroup {
            launch = launch.cgroup(cgroup);
        }
        let mut proc = launch.spawn(topo.dir())?;
        for &addr in addrs {
            wait_bound(netns, &mut proc, addr)?;
        }
        Ok(Self { proc })
    }

    /// The datagrams received so far.
    pub fn datagrams(&self) -> Vec<Datagram> {
        self.proc
            .log()
            .lines()
            .filter_map(Datagram::parse)
            .collect()
    }

    /// Waits until `n` datagrams have been received and returns them, in order.
    pub fn wait_datagrams(&mut self, n: usize, timeout: Duration) -> Result<Vec<Datagram>> {
        wait_for(
            &format!("the app to receive {n} datagram(s)"),
            timeout,
            || {
                let got = self.datagrams();
                if got.len() < n {
                    self.proc.ensure_running()?;
                }
                Ok((got.len() >= n).then_some(got))
            },
        )
    }
}

/// Waits until a UDP socket of `proc` is bound to `addr`'s port in `netns`.
pub fn wait_bound(netns: &Netns, proc: &mut Proc, addr: SocketAddr) -> Result<()> {
    wait_for(
        &format!("{} to bind UDP {addr}", proc.name()),
        START_TIMEOUT,
        || {
            proc.ensure_running()?;
            Ok(is_bound(netns, addr)?.then_some(()))
        },
    )
}

/// Whether a UDP socket is bound to `addr`'s port in `netns` (the kernel's socket table).
pub fn is_bound(netns: &Netns, addr: SocketAddr) -> Result<bool> {
    let table = if addr.is_ipv4() { "udp" } else { "udp6" };
    let text =
        netns.run(|| std::fs::read_to_string(format!("/proc/thread-self/net/{table}")))??;
    let port = format!(":{:04X}", addr.port());
    Ok(text.lines().skip(1).any(|line| {
        line.split_whitespace()
            .nth(1)
            .is_some_and(|local| local.ends_with(&port))
    }))
}

/// Sends `payload` from a fresh socket in `ns` to `to` and waits for one datagram back.
/// Returns the client socket's own address (who the app should see) and the reply.
pub fn exchange(ns: &Netns, to: SocketAddr, payload: &[u8]) -> Result<(SocketAddr, Vec<u8>)> {
    let socket = client_socket(ns, to)?;
    socket
        .send(payload)
        .with_context(|| format!("sending to {to}"))?;
    let local = socket.local_addr()?;
    let mut buf = vec![0u8; 65_536];
    let len = socket
        .recv(&mut buf)
        .with_context(|| format!("waiting for a reply from {to} (from {local})"))?;
    buf.truncate(len);
    Ok((local, buf))
}

/// A socket in `ns` connected to `to`, with [`REPLY_TIMEOUT`] on reads.
pub fn client_socket(ns: &Netns, to: SocketAddr) -> Result<UdpSocket> {
    let any: SocketAddr = match to.ip() {
        IpAddr::V4(_) => "0.0.0.0:0".parse()?,
        IpAddr::V6(_) => "[::]:0".parse()?,
    };
    let socket = ns
        .run(|| UdpSocket::bind(any))?
        .with_context(|| format!("binding a UDP socket in {}", ns.name()))?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(REPLY_TIMEOUT))?;
    Ok(socket)
}

/// Sends `datagram` to `to` from a socket bound to `from` in `ns`, and nothing else.
pub fn send_raw(ns: &Netns, from: SocketAddr, to: SocketAddr, datagram: &[u8]) -> Result<()> {
    let socket = ns
        .run(|| UdpSocket::bind(from))?
        .with_context(|| format!("binding {from} in {}", ns.name()))?;
    socket.send_to(datagram, to)?;
    Ok(())
}

/// A v2 header for a UDP flow from `client` to `destination`, with a CRC32c.
pub fn udp_header(client: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    header(Transport::Datagram, client, destination)
}

/// A v2 header of `transport` (a TCP one is invalid in a datagram), with a CRC32c.
pub fn header(transport: Transport, client: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    Header {
        version: Version::V2,
        command: Command::Proxy,
        transport,
        addresses: Addresses::Inet {
            source: client,
            destination,
        },
        tlvs: Tlvs::default(),
    }
    .to_v2(true)
    .expect("a header without TLVs encodes")
}

/// A load balancer in the LB namespace, as go-mmproxy users, caddy-l4 and LoxiLB send UDP: it
/// takes client datagrams on `front`, sends each to `backend` from one socket on its pod side,
/// behind a v2 header naming the client; the sidecar's replies (`reply_header: true`) carry a
/// header naming the client, which routes them back out of `front`.
#[derive(Debug)]
pub struct HeaderLb {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HeaderLb {
    /// Starts relaying from `front` to `backend`; `back` is the LB's own address on the pod side.
    pub fn start(ns: &Netns, front: SocketAddr, back: IpAddr, backend: SocketAddr) -> Result<Self> {
        let (front_socket, back_socket) = ns.run(|| -> std::io::Result<_> {
            Ok((
                UdpSocket::bind(front)?,
                UdpSocket::bind(SocketAddr::new(back, 0))?,
            ))
        })??;
        for s in [&front_socket, &back_socket] {
            s.set_read_timeout(Some(POLL))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (front_in, back_out) = (front_socket.try_clone()?, back_socket.try_clone()?);
        let stop_in = Arc::clone(&stop);
        let inbound = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop_in.load(Ordering::Relaxed) {
                let Ok((len, client)) = front_in.recv_from(&mut buf) else {
                    continue;
                };
                let mut datagram = udp_header(client, front);
                datagram.extend_from_slice(&buf[..len]);
                let _ = back_out.send_to(&datagram, backend);
            }
        });
        let stop_out = Arc::clone(&stop);
        let outbound = thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stop_out.load(Ordering::Relaxed) {
                let Ok((len, _)) = back_socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Ok((header, at)) = decode_datagram(&buf[..len], &Limits::default())
                    && let Some(client) = header.original_destination()
                {
                    let _ = front_socket.send_to(&buf[at..len], client);
                }
            }
        });
        Ok(Self {
            stop,
            threads: vec![inbound, outbound],
        })
    }
}

impl Drop for HeaderLb {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `GET /metrics` from the sidecar's admin endpoint at `addr`, from inside `ns`.
pub fn metrics(ns: &Netns, addr: SocketAddr) -> Result<String> {
    let text = ns.run(|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, REPLY_TIMEOUT)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    })??;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => bail!("unexpected /metrics answer: {text}"),
    }
}

/// The value of the series `name{...labels...}` in a metrics text, 0 when absent.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_lines_round_trip() {
        let d = Datagram {
            from: "[2001:db8:c::7]:40112".parse().unwrap(),
            local: "127.0.0.1:9053".parse().unwrap(),
            bytes: 5,
            fnv1a: 0x1234,
            header: Some(Some("203.0.113.7:1".parse().unwrap())),
            valid: true,
        };
        assert_eq!(Datagram::parse(&d.line()), Some(d.clone()));
        let plain = Datagram { header: None, ..d };
        assert_eq!(Datagram::parse(&plain.line()), Some(plain));
    }

    #[test]
    fn metric_values_are_found_by_labels() {
        let text = "trueip_udp_datagrams_dropped_total{listener=\"dns\",reason=\"truncated\"} 3\n\
                    trueip_udp_datagrams_dropped_total{listener=\"dns\",reason=\"crc32c_mismatch\"} 1\n";
        let name = "trueip_udp_datagrams_dropped_total";
        assert_eq!(metric(text, name, &[("reason", "truncated")]), 3);
        assert_eq!(metric(text, name, &[("reason", "crc32c_mismatch")]), 1);
        assert_eq!(metric(text, name, &[("reason", "other")]), 0);
    }
}
