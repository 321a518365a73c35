//! Test helpers for trueip: an app that records what it received and who it thinks its peer
//! is, a client that writes in chosen fragments, deterministic payloads that are cheap to
//! compare, and an OTLP trace collector ([`otlp`]).

pub mod otlp;

use std::{io, net::SocketAddr, time::Duration};

use socket2::SockRef;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::timeout,
};

/// How long a helper waits for anything before it declares the test hung.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What the test app does with a connection.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Reads until EOF, then closes.
    Sink,
    /// Writes back everything it reads, then half-closes after the client's EOF.
    Echo,
    /// Sends `n` bytes of [`pattern`] at once, then reads until EOF.
    Download(usize),
    /// Reads until EOF, then answers with these bytes and closes (a request/response).
    Reply(Vec<u8>),
    /// Reads `n` bytes, then resets the connection.
    ResetAfter(usize),
}

/// One connection as the app saw it, reported when the app is done with it.
#[derive(Debug, Clone)]
pub struct AppConn {
    /// The peer the app's `accept()` returned.
    pub peer: SocketAddr,
    /// Every byte received, in order.
    pub received: Vec<u8>,
    /// Whether the stream ended with a clean EOF (not a reset or error).
    pub clean_eof: bool,
}

/// A TCP app on loopback that reports every connection it served.
#[derive(Debug)]
pub struct App {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<AppConn>,
}

impl App {
    /// Starts an app on `127.0.0.1` with a kernel-chosen port.
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("address"), behaviour).await
    }

    /// Starts an app on `addr`.
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the test app");
        let addr = listener.local_addr().expect("app address");
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let tx = tx.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let conn = serve(stream, peer, behaviour).await;
                    let _ = tx.send(conn);
                });
            }
        });
        Self { addr, conns }
    }

    /// Where the app listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next connection the app finished, or `None` after `wait`.
    pub async fn next_conn(&mut self, wait: Duration) -> Option<AppConn> {
        timeout(wait, self.conns.recv()).await.ok().flatten()
    }

    /// The next finished connection; panics if none comes within [`PATIENCE`].
    pub async fn conn(&mut self) -> AppConn {
        self.next_conn(PATIENCE)
            .await
            .expect("the app got no connection")
    }

    /// Asserts that no connection reaches the app within `wait`.
    pub async fn assert_no_conn(&mut self, wait: Duration) {
        if let Some(c) = self.next_conn(wait).await {
            panic!(
                "the app got a connection from {} with {} bytes: {:?}",
                c.peer,
                c.received.len(),
                String::from_utf8_lossy(&c.received[..c.received.len().min(64)])
            );
        }
    }
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, behaviour: Behaviour) -> AppConn {
    let mut received = Vec::new();
    let mut clean_eof = false;
    let result: io::Result<()> = async {
        match behaviour {
            Behaviour::Sink => {
                stream.read_to_end(&mut received).await?;
                clean_eof = true;
            }
            Behaviour::Reply(answer) => {
                stream.read_to_end(&mut received).await?;
                clean_eof = true;
                stream.write_all(&answer).await?;
                stream.shutdown().await?;
            }
            Behaviour::Echo => {
                let mut buf = vec![0; 64 * 1024];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        clean_eof = true;
                        stream.shutdown().await?;
                        break;
                    }
                    received.extend_from_slice(&buf[..n]);
                    stream.write_all(&buf[..n]).await?;
                }
            }
            Behaviour::Download(n) => {
                let (mut r, mut w) = stream.split();
                let send = async {
                    w.write_all(&pattern(n)).await?;
                    w.shutdown().await
                };
                let recv = r.read_to_end(&mut received);
                let (s, r) = tokio::join!(send, recv);
                s?;
                r?;
                clean_eof = true;
            }
            Behaviour::ResetAfter(n) => {
                received.resize(n, 0);
                stream.read_exact(&mut received).await?;
                SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            }
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        clean_eof = false;
    }
    AppConn {
        peer,
        received,
        clean_eof,
    }
}

/// `n` deterministic pseudo-random bytes: every offset has a distinct-looking value, so lost,
/// duplicated or reordered bytes show up in a comparison.
pub fn pattern(n: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Connects to `addr` with TCP_NODELAY, so each write leaves as its own segment.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Writes `bytes` cut at `cuts` (offsets into `bytes`), pausing `gap` between pieces so that
/// they arrive as separate segments.
pub async fn write_fragmented(
    stream: &mut TcpStream,
    bytes: &[u8],
    cuts: &[usize],
    gap: Duration,
) -> io::Result<()> {
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let cut = cut.clamp(start, bytes.len());
        if cut > start {
            stream.write_all(&bytes[start..cut]).await?;
            tokio::time::sleep(gap).await;
        }
        start = cut;
    }
    Ok(())
}

/// Reads until EOF; `Err` if the connection was reset or the read hung past [`PATIENCE`].
pub async fn read_all(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "read hung"))??;
    Ok(out)
}

/// Whether the sidecar closed `stream` (EOF or reset) within `wait`, having sent nothing.
pub async fn closed_without_data(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}
