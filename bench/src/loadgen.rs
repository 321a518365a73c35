//! The load generator (`trueip-loadgen`): opens connections to a target the way a load balancer
//! does — a PROXY v2 header (built with [`trueip_proxy_header::Header::to_v2`]) glued to the
//! first bytes — and runs one workload, bounded in time and count. Every result is checked:
//! byte counts are confirmed by the app, echoes are compared, failures are counted.

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Barrier,
    task::JoinSet,
};
use trueip_proxy_header::{Addresses, Command, Header, Transport, Version};

use crate::wire::{self, PREAMBLE_LEN};

/// Write and read buffer of a bulk stream.
const BULK_BUF: usize = 256 * 1024;

/// Highest latency the histograms track (anything slower saturates there).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Connections the idle workload opens at once.
const IDLE_RAMP: usize = 64;

/// No single connect, read or write waits longer than this: a stuck relay fails the workload
/// instead of hanging the run.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the client speaks PROXY v2 first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum HeaderKind {
    /// No header (direct, socat).
    None,
    /// A 28/52-byte v2 header naming the connection's own endpoints, glued to the first bytes.
    V2,
}

/// Where to connect and how to open a connection.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The address the load generator connects to.
    pub addr: SocketAddr,
    /// Whether it sends a PROXY header first.
    pub header: HeaderKind,
}

/// The direction of a bulk transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Direction {
    /// Client → app.
    Upload,
    /// App → client.
    Download,
}

/// How much a bulk transfer moves per stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// Exactly this many bytes (checked).
    Bytes(u64),
    /// As much as fits in this duration.
    Duration(Duration),
}

/// Result of a bulk transfer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkResult {
    /// Parallel streams.
    pub streams: usize,
    /// Payload bytes confirmed delivered (upload: by the app's count; download: received).
    pub bytes: u64,
    /// From the common start to the last stream's end (its EOF or the app's count).
    pub secs: f64,
    /// `bytes` × 8 / `secs` / 10⁹.
    pub gbps: f64,
}

/// Result of request/response over keep-alive connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RrResult {
    /// Connections, each one request in flight at a time.
    pub conns: usize,
    /// Request size = response size, bytes.
    pub size: usize,
    /// Completed requests.
    pub requests: u64,
    /// Measured duration.
    pub secs: f64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// 99.9th percentile latency, µs.
    pub p999_us: f64,
    /// Worst latency, µs.
    pub max_us: f64,
}

/// Result of the short-connection workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnResult {
    /// Concurrent connection loops.
    pub concurrency: usize,
    /// Completed connections (connect, header, request, response, close).
    pub conns: u64,
    /// Measured duration.
    pub secs: f64,
    /// Connections per second.
    pub cps: f64,
    /// Median connect-to-response time, µs.
    pub p50_us: f64,
    /// 99th percentile connect-to-response time, µs.
    pub p99_us: f64,
}

/// Result of opening idle connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleResult {
    /// Connections open end to end (each answered one echo).
    pub open: usize,
    /// How long opening them took.
    pub secs: f64,
}

// === connections ===

/// The PROXY v2 header a load balancer would send for this connection.
fn v2_header(stream: &TcpStream) -> io::Result<Vec<u8>> {
    let header = Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: stream.local_addr()?,
            destination: stream.peer_addr()?,
        },
        tlvs: trueip_proxy_header::Tlvs::default(),
    };
    header.to_v2(false).map_err(io::Error::other)
}

/// Connects and sends, in one write: the header (if any), the preamble and `first`.
async fn open(target: Target, mode: u8, arg: u64, first: &[u8]) -> io::Result<TcpStream> {
    let mut stream = timed(TcpStream::connect(target.addr)).await??;
    stream.set_nodelay(true)?;
    let mut out = match target.header {
        HeaderKind::None => Vec::with_capacity(PREAMBLE_LEN + first.len()),
        HeaderKind::V2 => v2_header(&stream)?,
    };
    out.extend_from_slice(&wire::preamble(mode, arg));
    out.extend_from_slice(first);
    timed(stream.write_all(&out)).await??;
    Ok(stream)
}

/// Connects and sends the header (if any) and `first` in one write, without a preamble.
async fn open_raw(target: Target, first: &[u8]) -> io::Result<TcpStream> {
    let mut stream = timed(TcpStream::connect(target.addr)).await??;
    stream.set_nodelay(true)?;
    let mut out = match target.header {
        HeaderKind::None => Vec::with_capacity(first.len()),
        HeaderKind::V2 => v2_header(&stream)?,
    };
    out.extend_from_slice(first);
    timed(stream.write_all(&out)).await??;
    Ok(stream)
}

/// `fut`, failing with `TimedOut` after [`IO_TIMEOUT`].
async fn timed<F: Future>(fut: F) -> io::Result<F::Output> {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "I/O timed out"))
}

fn histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

/// Joins every task; the first error fails the whole workload.
async fn join_all<T: 'static>(mut set: JoinSet<io::Result<T>>) -> io::Result<Vec<T>> {
    let mut out = Vec::with_capacity(set.len());
    while let Some(joined) = set.join_next().await {
        out.push(joined.map_err(io::Error::other)??);
    }
    Ok(out)
}

// === bulk ===

/// Moves `amount` per stream over `streams` parallel connections in `direction`, all starting
/// together once every connection is open.
pub async fn bulk(
    target: Target,
    direction: Direction,
    streams: usize,
    amount: Amount,
) -> io::Result<BulkResult> {
    let barrier = Arc::new(Barrier::new(streams + 1));
    let mut set = JoinSet::new();
    for _ in 0..streams {
        let barrier = Arc::clone(&barrier);
        set.spawn(async move {
            let (mode, arg) = match (direction, amount) {
                (Direction::Upload, _) => (wire::SINK, 0),
                (Direction::Download, Amount::Bytes(n)) => (wire::SOURCE, n),
                (Direction::Download, Amount::Duration(_)) => (wire::SOURCE, wire::UNLIMITED),
            };
            let stream = open(target, mode, arg, &[]).await;
            // Wait even when the connect failed, or the others would wait forever.
            barrier.wait().await;
            let stream = stream?;
            let started = Instant::now();
            let bytes = match direction {
                Direction::Upload => upload(stream, amount).await?,
                Direction::Download => download(stream, amount).await?,
            };
            Ok((bytes, started.elapsed()))
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let done = join_all(set).await?;
    let secs = started.elapsed().as_secs_f64();
    let bytes = done.iter().map(|(b, _)| b).sum::<u64>();
    Ok(BulkResult {
        streams,
        bytes,
        secs,
        gbps: bytes as f64 * 8.0 / secs / 1e9,
    })
}

async fn upload(mut stream: TcpStream, amount: Amount) -> io::Result<u64> {
    let buf = wire::pattern(BULK_BUF);
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match amount {
            Amount::Bytes(total) if sent >= total => break,
            Amount::Bytes(total) => {
                usize::try_from((total - sent).min(BULK_BUF as u64)).unwrap_or(BULK_BUF)
            }
            Amount::Duration(d) if started.elapsed() >= d => break,
            Amount::Duration(_) => BULK_BUF,
        };
        sent += timed(stream.write(&buf[..n])).await?? as u64;
    }
    timed(stream.shutdown()).await??;
    let mut count = [0u8; 8];
    timed(stream.read_exact(&mut count)).await??;
    let confirmed = u64::from_be_bytes(count);
    if confirmed != sent {
        return Err(io::Error::other(format!(
            "sent {sent} bytes, the app counted {confirmed}"
        )));
    }
    Ok(confirmed)
}

async fn download(mut stream: TcpStream, amount: Amount) -> io::Result<u64> {
    let mut buf = vec![0u8; BULK_BUF];
    let started = Instant::now();
    let mut received = 0u64;
    let mut stopped = false;
    loop {
        if let Amount::Duration(d) = amount
            && !stopped
            && started.elapsed() >= d
        {
            // Ask the app to stop; what is in flight is still counted until its FIN.
            timed(stream.shutdown()).await??;
            stopped = true;
        }
        let n = timed(stream.read(&mut buf)).await??;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    if let Amount::Bytes(total) = amount
        && received != total
    {
        return Err(io::Error::other(format!(
            "expected {total} bytes, received {received}"
        )));
    }
    Ok(received)
}

// === request/response ===

/// `conns` keep-alive connections, each sending `size`-byte requests back to back (one in
/// flight) for `duration`; every response is compared with its request.
pub async fn request_response(
    target: Target,
    conns: usize,
    size: usize,
    duration: Duration,
) -> io::Result<RrResult> {
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut set = JoinSet::new();
    for _ in 0..conns {
        let barrier = Arc::clone(&barrier);
        set.spawn(async move {
            let stream = open(target, wire::ECHO, 0, &[]).await;
            barrier.wait().await;
            let mut stream = stream?;
            let request = wire::pattern(size);
            let mut response = vec![0u8; size];
            let mut hist = histogram();
            let started = Instant::now();
            while started.elapsed() < duration {
                let t = Instant::now();
                timed(stream.write_all(&request)).await??;
                timed(stream.read_exact(&mut response)).await??;
                hist.saturating_record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                if response != request {
                    return Err(io::Error::other("echo differs from the request"));
                }
            }
            Ok(hist)
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let hists = join_all(set).await?;
    let secs = started.elapsed().as_secs_f64();
    let mut all = histogram();
    for h in &hists {
        all.add(h).map_err(io::Error::other)?;
    }
    let requests = all.len();
    Ok(RrResult {
        conns,
        size,
        requests,
        secs,
        rps: requests as f64 / secs,
        p50_us: us(&all, 0.5),
        p99_us: us(&all, 0.99),
        p999_us: us(&all, 0.999),
        max_us: all.max() as f64 / 1e3,
    })
}

// === HTTP ===

/// `conns` keep-alive HTTP/1.1 connections (the PROXY header, if any, once at the start), each
/// sending `GET /<size>` back to back (one in flight) for `duration`; every response must be a
/// `200` with the `size`-byte body.
pub async fn http_requests(
    target: Target,
    conns: usize,
    size: usize,
    duration: Duration,
) -> io::Result<RrResult> {
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut set = JoinSet::new();
    for _ in 0..conns {
        let barrier = Arc::clone(&barrier);
        set.spawn(async move {
            let request = format!("GET /{size} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
            let stream = open_raw(target, &[]).await;
            barrier.wait().await;
            let mut stream = stream?;
            let expected = wire::pattern(size);
            let mut buf = Vec::with_capacity(4096 + size);
            let mut hist = histogram();
            let started = Instant::now();
            while started.elapsed() < duration {
                let t = Instant::now();
                timed(stream.write_all(&request)).await??;
                let body = timed(read_response(&mut stream, &mut buf)).await??;
                hist.saturating_record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                if body != expected {
                    return Err(io::Error::other("HTTP body differs from the pattern"));
                }
            }
            Ok(hist)
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let hists = join_all(set).await?;
    let secs = started.elapsed().as_secs_f64();
    let mut all = histogram();
    for h in &hists {
        all.add(h).map_err(io::Error::other)?;
    }
    let requests = all.len();
    Ok(RrResult {
        conns,
        size,
        requests,
        secs,
        rps: requests as f64 / secs,
        p50_us: us(&all, 0.5),
        p99_us: us(&all, 0.99),
        p999_us: us(&all, 0.999),
        max_us: all.max() as f64 / 1e3,
    })
}

/// Reads one `200` response with a `content-length` body; returns the body. `buf` carries
/// bytes read past it to the next call.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        let status = head.lines().next().unwrap_or_default().to_owned();
        return Err(io::Error::other(format!("HTTP answer {status:?}")));
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| io::Error::other("HTTP answer without content-length"))?;
    while buf.len() < head_end + len {
        read_more(stream, buf).await?;
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Ok(body)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

// === short connections ===

/// `concurrency` loops of: connect, header + preamble + a `size`-byte request in one write,
/// read the echo, close; for `duration`.
pub async fn short_connections(
    target: Target,
    concurrency: usize,
    size: usize,
    duration: Duration,
) -> io::Result<ConnResult> {
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        set.spawn(async move {
            let request = wire::pattern(size);
            let mut response = vec![0u8; size];
            let mut hist = histogram();
            while started.elapsed() < duration {
                let t = Instant::now();
                let mut stream = open(target, wire::ECHO, 0, &request).await?;
                timed(stream.read_exact(&mut response)).await??;
                if response != request {
                    return Err(io::Error::other("echo differs from the request"));
                }
                drop(stream);
                hist.saturating_record(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            Ok(hist)
        });
    }
    let hists = join_all(set).await?;
    let secs = started.elapsed().as_secs_f64();
    let mut all = histogram();
    for h in &hists {
        all.add(h).map_err(io::Error::other)?;
    }
    let conns = all.len();
    Ok(ConnResult {
        concurrency,
        conns,
        secs,
        cps: conns as f64 / secs,
        p50_us: us(&all, 0.5),
        p99_us: us(&all, 0.99),
    })
}

// === idle connections ===

/// Opens `count` connections end to end (each echoes one 8-byte ping), [`IDLE_RAMP`] at a
/// time, and returns them open.
pub async fn open_idle(target: Target, count: usize) -> io::Result<(Vec<TcpStream>, IdleResult)> {
    let started = Instant::now();
    let mut open_streams = Vec::with_capacity(count);
    let mut set = JoinSet::new();
    let mut launched = 0;
    while open_streams.len() < count {
        while launched < count && set.len() < IDLE_RAMP {
            launched += 1;
            set.spawn(async move {
                let ping = *b"idle-ok!";
                let mut stream = open(target, wire::ECHO, 0, &ping).await?;
                let mut pong = [0u8; 8];
                timed(stream.read_exact(&mut pong)).await??;
                if pong != ping {
                    return Err(io::Error::other("idle ping echo differs"));
                }
                Ok(stream)
            });
        }
        match set.join_next().await {
            Some(joined) => open_streams.push(joined.map_err(io::Error::other)??),
            None => break,
        }
    }
    let result = IdleResult {
        open: open_streams.len(),
        secs: started.elapsed().as_secs_f64(),
    };
    Ok((open_streams, result))
}

/// The app's counters, asked on a fresh connection (no header: the runner asks from inside
/// the app's namespace).
pub async fn app_stats(addr: SocketAddr) -> io::Result<wire::AppStats> {
    let target = Target {
        addr,
        header: HeaderKind::None,
    };
    let mut stream = open(target, wire::STATS, 0, &[]).await?;
    let mut line = Vec::new();
    timed(stream.read_to_end(&mut line)).await??;
    serde_json::from_slice(&line).map_err(io::Error::other)
}
