//! The app behind every variant (`trueip-bench-app`): sink, source and echo over the
//! [`wire`](crate::wire) protocol, on a multi-threaded tokio runtime with large buffers, so that
//! it is never the bottleneck.
//!
//! It skips a PROXY v1 line or v2 header in front of the preamble (the `proxy-v1` variant
//! re-emits one; for fairness the app skips it and does no more), and it counts the peers
//! `accept()` returned, which tells the runner whether the eBPF restore mode worked.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::wire::{self, AppStats, PREAMBLE_LEN};

/// Read and write buffer per bulk connection.
const BULK_BUF: usize = 256 * 1024;

/// Echo buffer per connection (small messages; idle connections hold one too).
const ECHO_BUF: usize = 16 * 1024;

/// Listen backlog: the idle workload opens thousands of connections in bursts.
const BACKLOG: i32 = 4096;

/// The longest PROXY v1 line (spec: 107 bytes).
const V1_MAX: usize = 107;

/// Counters shared by all connections.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    loopback_peers: AtomicU64,
    other_peers: AtomicU64,
    v1_headers: AtomicU64,
    v2_headers: AtomicU64,
    errors: AtomicU64,
    http_requests: AtomicU64,
    http_forwarded: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> AppStats {
        AppStats {
            connections: self.connections.load(Ordering::Relaxed),
            loopback_peers: self.loopback_peers.load(Ordering::Relaxed),
            other_peers: self.other_peers.load(Ordering::Relaxed),
            v1_headers: self.v1_headers.load(Ordering::Relaxed),
            v2_headers: self.v2_headers.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            http_requests: self.http_requests.load(Ordering::Relaxed),
            http_forwarded: self.http_forwarded.load(Ordering::Relaxed),
        }
    }
}

/// Binds every address in `listen` (with a deep backlog) and serves them until the process is
/// killed; each address also echoes UDP datagrams (the `udp` workload). Returns only on a bind
/// or accept error.
pub async fn serve(listen: &[SocketAddr]) -> io::Result<()> {
    let listeners = listen
        .iter()
        .map(|a| bind(*a))
        .collect::<io::Result<Vec<_>>>()?;
    for &addr in listen {
        tokio::spawn(crate::udp::echo(tokio::net::UdpSocket::bind(addr).await?));
    }
    serve_listeners(listeners).await
}

/// Serves already bound listeners (tests bind port 0 first) until an accept error.
pub async fn serve_listeners(listeners: Vec<TcpListener>) -> io::Result<()> {
    let counters = Arc::new(Counters::default());
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        let counters = Arc::clone(&counters);
        tasks.spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await?;
                let counters = Arc::clone(&counters);
                tokio::spawn(async move {
                    if handle(stream, peer, &counters).await.is_err() {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
    }
    match tasks.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(io::Error::other(e)),
        None => Ok(()),
    }
}

/// A listener on `addr` with `SO_REUSEADDR` and a deep backlog; must run inside a tokio
/// runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Serves one connection: skip a PROXY header, read the preamble, run its mode.
async fn handle(mut stream: TcpStream, peer: SocketAddr, counters: &Counters) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(ECHO_BUF);
    fill(&mut stream, &mut buf, 1).await?;
    let skip = match buf[0] {
        b'P' => {
            let end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i + 2;
                }
                if buf.len() > V1_MAX {
                    return Err(invalid("PROXY v1 line too long"));
                }
                let want = buf.len() + 1;
                fill(&mut stream, &mut buf, want).await?;
            };
            counters.v1_headers.fetch_add(1, Ordering::Relaxed);
            end
        }
        b'\r' => {
            fill(&mut stream, &mut buf, 16).await?;
            let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
            counters.v2_headers.fetch_add(1, Ordering::Relaxed);
            16 + len
        }
        _ => 0,
    };
    fill(&mut stream, &mut buf, skip + PREAMBLE_LEN).await?;
    let mut preamble = [0u8; PREAMBLE_LEN];
    preamble.copy_from_slice(&buf[skip..skip + PREAMBLE_LEN]);
    let (mode, arg) = wire::parse_preamble(&preamble);
    let rest = buf.split_off(skip + PREAMBLE_LEN);
    if mode != wire::STATS {
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let counter = if peer.ip().to_canonical().is_loopback() {
            &counters.loopback_peers
        } else {
            &counters.other_peers
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    match mode {
        wire::SINK => sink(stream, rest.len() as u64).await,
        wire::SOURCE => source(stream, arg).await,
        wire::ECHO => echo(stream, rest).await,
        wire::HTTP => http(stream, [&preamble[..], &rest].concat(), counters).await,
        wire::STATS => {
            let mut line = serde_json::to_vec(&counters.snapshot()).map_err(io::Error::other)?;
            line.push(b'\n');
            stream.write_all(&line).await?;
            stream.shutdown().await
        }
        other => Err(invalid(&format!("unknown mode byte {other:#04x}"))),
    }
}

/// Reads until `buf` holds at least `want` bytes; EOF before that is an error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
    while buf.len() < want {
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads to EOF, then answers the total count (including `already` bytes read with the
/// preamble).
async fn sink(mut stream: TcpStream, already: u64) -> io::Result<()> {
    let mut buf = vec![0u8; BULK_BUF];
    let mut total = already;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.shutdown().await
}

/// Writes `limit` bytes, or until the client's FIN when `limit` is [`wire::UNLIMITED`].
async fn source(stream: TcpStream, limit: u64) -> io::Result<()> {
    let (mut rd, mut wr) = stream.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut sink = [0u8; 64];
            // Any byte, the FIN or an error all mean "stop sending".
            let _ = rd.read(&mut sink).await;
            stop.store(true, Ordering::Relaxed);
            rd
        })
    };
    let buf = wire::pattern(BULK_BUF);
    let mut left = limit;
    let mut result = Ok(());
    while left > 0 && !stop.load(Ordering::Relaxed) {
        let n = usize::try_from(left.min(BULK_BUF as u64)).unwrap_or(BULK_BUF);
        match wr.write(&buf[..n]).await {
            Ok(written) => left -= written as u64,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = wr.shutdown().await;
    }
    // Wait for the client's FIN before closing, so that the close is clean on both sides.
    let _ = watcher.await;
    result
}

/// The longest HTTP request head the app reads.
const HTTP_HEAD_MAX: usize = 16 * 1024;

/// HTTP/1.1 keep-alive: answers every `GET /<n>` with an `n`-byte body until the client closes
/// (or says `Connection: close`). `buf` holds what was read so far.
async fn http(mut stream: TcpStream, mut buf: Vec<u8>, counters: &Counters) -> io::Result<()> {
    static BODY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| wire::pattern(wire::PATTERN_LEN));
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > HTTP_HEAD_MAX {
                return Err(invalid("HTTP request head too long"));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return if buf.is_empty() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let size = head
            .strip_prefix("get /")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| invalid("not a GET /<size> request"))?
            .min(wire::PATTERN_LEN);
        counters.http_requests.fetch_add(1, Ordering::Relaxed);
        let forwarded = head
            .lines()
            .find_map(|l| l.strip_prefix("x-forwarded-for:"));
        if forwarded
            .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| !ip.is_loopback())
        {
            counters.http_forwarded.fetch_add(1, Ordering::Relaxed);
        }
        let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n").into_bytes();
        out.extend_from_slice(&body[..size]);
        stream.write_all(&out).await?;
        if head.contains("\r\nconnection: close\r\n") {
            return stream.shutdown().await;
        }
    }
}

/// Echoes until EOF; `rest` arrived with the preamble.
async fn echo(mut stream: TcpStream, rest: Vec<u8>) -> io::Result<()> {
    if !rest.is_empty() {
        stream.write_all(&rest).await?;
    }
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        stream.write_all(&buf[..n]).await?;
    }
}
