//! `trueip-stream-app ADDR`: the fast-path tests' app (see `trueip_interop_tests::stream` for
//! the commands). It listens on ADDR, serves each connection on a thread by the command line
//! the client sends first, and prints one line per finished connection.
//!
//! It waits for readability with poll(2) before each read, as servers do, rather than sleeping
//! inside a blocking recv(): on the kernels measured, a socket in a socket map (the fast path)
//! can return EAGAIN from a blocking recv() when the peer's FIN arrives while it sleeps there
//! (README, "Fast path").

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd as _,
    process::ExitCode,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
};
use trueip_interop_tests::stream::{PatternCheck, pattern};

/// Nothing waits longer than this for the peer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Write size of the app.
const CHUNK: usize = 128 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Best effort: stderr is the only channel left.
            let _ = writeln!(io::stderr(), "trueip-stream-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .context("usage: trueip-stream-app ADDR")?
        .parse()
        .context("ADDR is not an address:port")?;
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    say(&format!("listening {addr}"));
    loop {
        let (stream, peer) = listener.accept().context("accepting")?;
        thread::spawn(move || {
            if let Err(e) = serve(stream) {
                say(&format!("failed peer={peer} error={e:#}"));
            }
        });
    }
}

fn serve(stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(Polled(stream.try_clone()?));
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the command")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut stream = stream;
    let number = |i: usize| -> Result<u64> {
        words
            .get(i)
            .context("missing a number")?
            .parse()
            .context("not a number")
    };
    match words.first().copied() {
        Some("download") => {
            let len = number(1)?;
            let wrote = if words.get(2) == Some(&"nb") {
                write_nonblocking(&stream, len)?
            } else {
                write_pattern(&mut stream, len)?
            };
            say(&format!("done download wrote={wrote}"));
            stream.shutdown(Shutdown::Write)?;
            drain(&mut reader)?;
        }
        Some("upload") => {
            let check = read_pattern(&mut reader)?;
            stream.write_all(
                format!("upload bytes={} bad={}\n", check.len, check.bad_label()).as_bytes(),
            )?;
            stream.shutdown(Shutdown::Write)?;
        }
        Some("echo") => {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n])?;
            }
            stream.shutdown(Shutdown::Write)?;
        }
        Some("first") => {
            let len = number(1)?;
            write_pattern(&mut stream, len)?;
            stream.shutdown(Shutdown::Write)?;
            let check = read_pattern(&mut reader)?;
            say(&format!(
                "first read={} bad={}",
                check.len,
                check.bad_label()
            ));
        }
        Some("reset") => {
            let len = number(1)?;
            write_pattern(&mut stream, len)?;
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            say(&format!("done reset wrote={len}"));
        }
        Some("flood") => {
            let mut buf = vec![0; CHUNK];
            let mut sent = 0u64;
            let error = loop {
                pattern(sent, &mut buf);
                match stream.write(&buf) {
                    Ok(n) => sent += n as u64,
                    Err(e) => break e,
                }
            };
            say(&format!("flood wrote={sent} error={:?}", error.kind()));
        }
        _ => bail!("unknown command {line:?}"),
    }
    Ok(())
}

/// Writes `len` pattern bytes with blocking writes.
fn write_pattern(stream: &mut TcpStream, len: u64) -> Result<u64> {
    let mut buf = vec![0; CHUNK];
    let mut sent = 0;
    while sent < len {
        let n = (len - sent).min(CHUNK as u64) as usize;
        pattern(sent, &mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .with_context(|| format!("writing after {sent} bytes"))?;
        sent += n as u64;
    }
    Ok(sent)
}

/// Writes `len` pattern bytes with non-blocking writes, waiting for writability on an
/// edge-triggered epoll after each EAGAIN, as event-loop servers (tokio, nginx) do.
fn write_nonblocking(stream: &TcpStream, len: u64) -> Result<u64> {
    stream.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    let interest =
        EpollFlags::EPOLLOUT | EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
    epoll.add(stream.as_fd(), EpollEvent::new(interest, 0))?;
    let timeout = EpollTimeout::try_from(IO_TIMEOUT).context("epoll timeout")?;
    let mut events = [EpollEvent::empty(); 4];
    let mut buf = vec![0; CHUNK];
    let mut sent = 0u64;
    let mut writer = stream;
    while sent < len {
        let n = (len - sent).min(CHUNK as u64) as usize;
        pattern(sent, &mut buf[..n]);
        match writer.write(&buf[..n]) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if epoll.wait(&mut events, timeout)? == 0 {
                    bail!("no writability event for {IO_TIMEOUT:?} after {sent} bytes (stalled)");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| format!("writing after {sent} bytes")),
        }
    }
    stream.set_nonblocking(false)?;
    Ok(sent)
}

/// A socket read after poll(2) says it is readable.
struct Polled(TcpStream);

impl Read for Polled {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = PollTimeout::try_from(IO_TIMEOUT).map_err(io::Error::other)?;
        loop {
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, timeout)? == 0 {
                return Err(io::ErrorKind::TimedOut.into());
            }
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

/// Reads to EOF, checking the pattern.
fn read_pattern(reader: &mut impl Read) -> Result<PatternCheck> {
    let mut check = PatternCheck::default();
    let mut buf = vec![0; CHUNK];
    loop {
        let n = reader.read(&mut buf).context("reading")?;
        if n == 0 {
            return Ok(check);
        }
        check.update(&buf[..n]);
    }
}

/// Reads and discards to EOF.
fn drain(reader: &mut impl Read) -> Result<()> {
    io::copy(reader, &mut io::sink()).context("draining")?;
    Ok(())
}

/// One line to stdout, flushed at once: the tests read it while the app runs.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    // A test that stopped reading has no use for the line.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
