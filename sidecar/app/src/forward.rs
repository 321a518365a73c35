//! Moves bytes between the load balancer's connection and the app's, in both directions:
//! small messages by one recv and one send, bulk flows by splice(2) through a kernel pipe (no
//! copy into user space). Back-pressure comes from the sockets themselves (at most one buffer
//! or pipe's worth in flight per direction), and half-close is passed on (one side's FIN
//! becomes a shutdown of the other side's write half).

use std::{
    cell::RefCell,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use nix::{
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    sys::socket::{MsgFlags, recv},
    unistd::pipe2,
};
use socket2::SockRef;
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::TcpStream,
};

use trueip_telemetry::Chain;

use crate::metrics::ListenerMetrics;

/// The most moved by one splice(2) call; the pipe's capacity bounds it further.
const SPLICE_CHUNK: usize = 1 << 20;
/// The copy buffer for small messages; a read that fills it switches the direction to splice.
const COPY_CHUNK: usize = 16 * 1024;
/// The pipe capacity asked for when the listener sets none: 1 MiB moves about 45 % more per
/// CPU second than the kernel's 64 KiB on one bulk stream (bench/NOTES.md), and it is the most an
/// unprivileged process may ask for (`fs.pipe-max-size`).
pub const DEFAULT_PIPE_SIZE: usize = 1 << 20;

/// Bytes moved by a finished connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// From the client to the app, payload only.
    pub to_app: u64,
    /// From the app to the client.
    pub to_client: u64,
}

/// Which side of the relay failed, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The load balancer's connection.
    Client,
    /// The app's connection.
    App,
}

/// A forwarding failure; both connections have been reset.
#[derive(Debug, thiserror::Error)]
#[error("{side:?} side failed after {to_app} bytes to the app and {to_client} to the client")]
pub struct ForwardError {
    /// The side whose socket failed.
    pub side: Side,
    /// Bytes moved towards the app before the failure.
    pub to_app: u64,
    /// Bytes moved towards the client before the failure.
    pub to_client: u64,
    /// The failure.
    #[source]
    pub source: io::Error,
}

/// Empty pipes each worker thread keeps for the next bulk transfer. A direction holds a pipe
/// only while bytes are in it, so a few per thread serve every connection; this bounds the
/// pipes a busy sidecar owns (each one counts against the user's pipe budget,
/// `fs.pipe-user-pages-soft`) and keeps pipe2(2), F_SETPIPE_SZ and close(2) off the per-message
/// path.
const POOLED_PIPES: usize = 4;

thread_local! {
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    /// The worker thread's buffer for small messages (see [`copy_some`]).
    static COPY_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; COPY_CHUNK].into_boxed_slice());
}

/// A pipe used as splice(2)'s kernel buffer.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The capacity asked for, which decides whether a pooled pipe fits a transfer.
    size: usize,
}

impl Pipe {
    /// An empty pipe of `size` bytes: from this thread's pool, or a new one.
    fn take(size: usize) -> io::Result<Self> {
        let pooled = PIPES.with_borrow_mut(|pool| {
            let i = pool.iter().position(|p| p.size == size)?;
            Some(pool.swap_remove(i))
        });
        pooled.map_or_else(|| Self::new(size), Ok)
    }

    fn new(size: usize) -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A larger pipe moves more per system call; when the per-user pipe budget is spent
        // (fs.pipe-user-pages-soft) the kernel refuses and the default size still works.
        let asked = i32::try_from(size).unwrap_or(i32::MAX);
        if let Err(e) = fcntl(&write, FcntlArg::F_SETPIPE_SZ(asked)) {
            tracing::debug!(error = %Chain(&e), size, "pipe size not raised");
        }
        Ok(Self { read, write, size })
    }

    /// Returns an empty pipe to this thread's pool, or closes it when the pool is full. A pipe
    /// that may still hold bytes (a transfer that failed half-way) is dropped instead.
    fn give_back(self) {
        PIPES.with_borrow_mut(|pool| {
            if pool.len() < POOLED_PIPES {
                pool.push(self);
            }
        });
    }
}

/// Relays between `client` and `app` until both directions have finished.
///
/// `preamble` (a re-emitted header) and then `rest` (payload bytes that arrived together with
/// the PROXY header) are written to the app before anything else; `rest` counts as payload.
/// The sockets stay open until the caller drops them, so that it can release per-connection
/// state (the eBPF entry) while the 4-tuple still belongs to this connection; the caller must
/// drop them once this returns, because the direction that finishes last leaves its FIN to
/// that close (without `fast_path`).
///
/// With `fast_path` the kernel sends the app's bytes to `client` itself (sk_msg), so that the
/// app → client pump only sees what the app wrote before its socket was wired (nothing, when
/// wired before connect) and the app's FIN: it copies, never splices, into `client` (a socket
/// in a socket map), and the FIN it passes on follows every redirected byte, which the kernel
/// queued on `client` inside the app's own `sendmsg()`.
pub async fn forward(
    client: &TcpStream,
    app: &mut TcpStream,
    preamble: &[u8],
    rest: &[u8],
    pipe_size: usize,
    fast_path: bool,
    metrics: &ListenerMetrics,
) -> Result<Transfer, ForwardError> {
    if !preamble.is_empty() || !rest.is_empty() {
        if let Err(source) = app.write_all(&[preamble, rest].concat()).await {
            reset(client);
            reset(app);
            return Err(ForwardError {
                side: Side::App,
                to_app: 0,
                to_client: 0,
                source,
            });
        }
        metrics.to_app(rest.len() as u64);
    }
    let app = &*app;
    let up = pump(client, app, Some(pipe_size), |n| metrics.to_app(n));
    let down_pipe = (!fast_path).then_some(pipe_size);
    let down = pump(app, client, down_pipe, |n| metrics.to_client(n));
    tokio::pin!(up, down);
    let (mut to_app, mut to_client) = (None, None);
    while to_app.is_none() || to_client.is_none() {
        let (result, dir_up) = tokio::select! {
            r = &mut up, if to_app.is_none() => (r, true),
            r = &mut down, if to_client.is_none() => (r, false),
        };
        // Without the fast path the sockets close as soon as both directions have finished,
        // and that close sends the FIN: only the first direction to finish shuts down.
        let (dst, last) = if dir_up {
            (app, to_client.is_some())
        } else {
            (client, to_app.is_some())
        };
        let result = result.and_then(|n| {
            pass_on_eof(dst, last && !fast_path)
                .map(|()| n)
                .map_err(|e| (PumpSide::Destination, e))
        });
        match result {
            Ok(n) if dir_up => to_app = Some(n + rest.len() as u64),
            Ok(n) => to_client = Some(n),
            Err((side, source)) => {
                let side = match (dir_up, side) {
                    (true, PumpSide::Source) | (false, PumpSide::Destination) => Side::Client,
                    _ => Side::App,
                };
                reset(client);
                reset(app);
                return Err(ForwardError {
                    side,
                    to_app: to_app.unwrap_or(0) + rest.len() as u64,
                    to_client: to_client.unwrap_or(0),
                    source,
                });
            }
        }
    }
    Ok(Transfer {
        to_app: to_app.unwrap_or(0),
        to_client: to_client.unwrap_or(0),
    })
}

/// Passes a direction's EOF on to its destination `dst`: a shutdown of its write half, or,
/// when `closing` (the caller closes both sockets next), nothing, since `dst` is then the other
/// direction's source, read to its EOF, so the close sends the FIN (never a reset) and the
/// shutdown would be one more system call for the same segment. A destination the peer has
/// reset still fails the relay, as a shutdown or a send would have noticed.
fn pass_on_eof(dst: &TcpStream, closing: bool) -> io::Result<()> {
    let socket = SockRef::from(dst);
    if closing {
        return socket.take_error()?.map_or(Ok(()), Err);
    }
    socket
        .shutdown(std::net::Shutdown::Write)
        .or_else(|e| match e.kind() {
            // The destination is already gone; the other direction will notice.
            io::ErrorKind::NotConnected => Ok(()),
            _ => Err(e),
        })
}

/// Which socket of a pump failed.
#[derive(Debug, Clone, Copy)]
enum PumpSide {
    Source,
    Destination,
}

/// Moves bytes from `src` to `dst` until `src` reaches EOF; returns the number of bytes moved.
/// The EOF is passed on by the caller ([`pass_on_eof`]), which knows whether the other
/// direction has finished.
///
/// Small messages (requests, responses, handshakes) are copied through the worker thread's buffer:
/// one recv and one send each, and no pipe. The first read that fills the buffer marks a bulk
/// flow, which switches to splice(2) through a kernel pipe of `pipe_size` bytes for the rest of
/// the connection; `pipe_size: None` copies throughout.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_size: Option<usize>,
    mut count: impl FnMut(u64),
) -> Result<u64, (PumpSide, io::Error)> {
    let mut total = 0u64;
    let mut bulk = false;
    loop {
        let moved = match pipe_size {
            Some(size) if bulk => splice_some(src, dst, size).await?,
            _ => {
                let n = copy_some(src, dst).await?;
                bulk = n == COPY_CHUNK;
                n
            }
        };
        if moved == 0 {
            return Ok(total);
        }
        total += moved as u64;
        count(moved as u64);
    }
}

/// Copies what `src` has (at least one byte, or 0 at EOF) to `dst`; returns how much.
///
/// The bytes go through the worker thread's buffer and straight on to `dst`: only the part
/// `dst` does not take at once is kept in a buffer of this connection's own while it waits for
/// room. So a small message costs no allocation, and an idle connection holds no buffer.
async fn copy_some(src: &TcpStream, dst: &TcpStream) -> Result<usize, (PumpSide, io::Error)> {
    loop {
        src.readable().await.map_err(|e| (PumpSide::Source, e))?;
        let copied = COPY_BUF.with_borrow_mut(|buf| {
            let Some(n) = try_recv(src, buf)? else {
                return Ok(None);
            };
            if n == 0 {
                return Ok(Some((0, Vec::new())));
            }
            let sent = match dst.try_write(&buf[..n]) {
                Ok(sent) => sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err((PumpSide::Destination, e)),
            };
            Ok(Some((n, buf[sent..n].to_vec())))
        })?;
        if let Some((n, left)) = copied {
            send_all(dst, &left).await?;
            return Ok(n);
        }
    }
}

/// One non-blocking read of `src` into `buf`: the byte count (0 at EOF), or `None` when there
/// was nothing to read after all (tokio has then cleared the readiness).
///
/// A read shorter than `buf` has emptied the socket's receive queue (TCP copies until the queue
/// or the buffer is exhausted), so its readiness is cleared inside the same `try_io`: that saves
/// the second, empty recv that would otherwise only return EAGAIN. Clearing inside `try_io` is
/// race-free: tokio only clears the readiness it observed before the call, and bytes arriving
/// meanwhile set it again.
fn try_recv(src: &TcpStream, buf: &mut [u8]) -> Result<Option<usize>, (PumpSide, io::Error)> {
    let mut drained = None;
    match src.try_io(Interest::READABLE, || {
        let n = recv(src.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)?;
        if n > 0 && n < buf.len() {
            drained = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(drained),
        Err(e) => Err((PumpSide::Source, e)),
    }
}

/// Writes all of `bytes` to `dst`, waiting for room as needed.
async fn send_all(dst: &TcpStream, mut bytes: &[u8]) -> Result<(), (PumpSide, io::Error)> {
    while !bytes.is_empty() {
        dst.writable()
            .await
            .map_err(|e| (PumpSide::Destination, e))?;
        match dst.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err((PumpSide::Destination, e)),
        }
    }
    Ok(())
}

/// Splices what `src` has into a pipe and all of it out to `dst`; 0 at EOF. The pipe is taken
/// from the thread's pool only once `src` is readable and goes back empty, so no byte is ever
/// left behind in it and an idle connection holds none.
async fn splice_some(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_size: usize,
) -> Result<usize, (PumpSide, io::Error)> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let (pipe, filled) = loop {
        src.readable().await.map_err(|e| (PumpSide::Source, e))?;
        let pipe = Pipe::take(pipe_size).map_err(|e| (PumpSide::Source, e))?;
        match src.try_io(Interest::READABLE, || {
            splice(
                src.as_fd(),
                None,
                pipe.write.as_fd(),
                None,
                SPLICE_CHUNK,
                flags,
            )
            .map_err(io::Error::from)
        }) {
            Ok(0) => {
                pipe.give_back();
                return Ok(0);
            }
            Ok(n) => break (pipe, n),
            Err(e) => {
                // A failed splice moved nothing: the pipe is still empty.
                pipe.give_back();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err((PumpSide::Source, e));
                }
            }
        }
    };
    let mut left = filled;
    while left > 0 {
        dst.writable()
            .await
            .map_err(|e| (PumpSide::Destination, e))?;
        match dst.try_io(Interest::WRITABLE, || {
            splice(pipe.read.as_fd(), None, dst.as_fd(), None, left, flags).map_err(io::Error::from)
        }) {
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err((PumpSide::Destination, e)),
        }
    }
    pipe.give_back();
    Ok(filled)
}

/// Makes the next close send a reset, so that the peer learns the relay broke rather than
/// seeing a clean end of stream.
fn reset(stream: &TcpStream) {
    // Best effort: the socket may already be closed by the peer.
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}
