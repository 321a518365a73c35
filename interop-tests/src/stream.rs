//! Byte-stream scenarios for the fast-path tests: the tests' stream app (`trueip-stream-app`)
//! and the client that drives it through a sidecar.
//!
//! After the PROXY header (which the sidecar strips) the client sends one command line; the app
//! answers by the command and prints one line per finished connection. Every payload is the
//! [`pattern`]: eight-byte little-endian words counting up from 0, so that a lost, duplicated
//! or reordered byte shows as the offset of the first bad word.
//!
//! ```text
//! download <n> [nb]   the app writes n bytes (nb: non-blocking writes waiting on an
//!                     edge-triggered epoll, as tokio or nginx do), then its FIN; drains to EOF
//! upload              the app reads to EOF, then answers `upload bytes=<n> bad=<offset|->`
//! echo                the app echoes to EOF, then its FIN
//! first <n>           the app writes n bytes and its FIN first, then reads to EOF and prints
//!                     `first read=<n> bad=<offset|->`
//! reset <n>           the app writes n bytes, then resets the connection (SO_LINGER 0)
//! flood               the app writes until a write fails, then prints `flood error=<kind>`
//! ```
//!
//! The app prints `done <command> wrote=<n>` when it has written everything of a download.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use trueip_proxy_header::Transport;

use trueip_test_kit::netns::Netns;

/// Read and write timeout of the test client.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Fills `buf` with the pattern's bytes at stream offsets `offset..offset + buf.len()`.
pub fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let at = offset + i as u64;
        *b = (at / 8).to_le_bytes()[(at % 8) as usize];
    }
}

/// Checks the pattern incrementally; remembers the first bad offset.
#[derive(Debug, Default, Clone)]
pub struct PatternCheck {
    /// Bytes checked so far.
    pub len: u64,
    /// The offset of the first byte that is not the pattern's.
    pub bad: Option<u64>,
}

impl PatternCheck {
    /// Checks the next bytes of the stream.
    pub fn update(&mut self, bytes: &[u8]) {
        if self.bad.is_none() {
            let mut expected = vec![0; bytes.len()];
            pattern(self.len, &mut expected);
            if let Some(i) = bytes.iter().zip(&expected).position(|(a, b)| a != b) {
                self.bad = Some(self.len + i as u64);
            }
        }
        self.len += bytes.len() as u64;
    }

    /// `-` or the first bad offset, as the app prints it.
    pub fn bad_label(&self) -> String {
        self.bad.map_or_else(|| "-".to_owned(), |b| b.to_string())
    }
}

/// A client connection to a sidecar from `ns`, its header and command already sent.
#[derive(Debug)]
pub struct StreamConn {
    /// The socket.
    pub stream: TcpStream,
}

impl StreamConn {
    /// Connects from `ns` to `to`, sends a PROXY v2 header naming the real addresses and
    /// `command` as one line.
    pub fn open(ns: &Netns, to: SocketAddr, command: &str) -> Result<Self> {
        let stream = ns
            .run(|| TcpStream::connect_timeout(&to, CLIENT_TIMEOUT))?
            .with_context(|| format!("connecting from {} to {to}", ns.name()))?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        let mut conn = Self { stream };
        // Encoded by the codec under test: the streams here test the relay, not the decoder
        // (the differential test and the fuzzers check the codec against HAProxy's).
        let mut first = crate::udp::header(Transport::Stream, conn.stream.local_addr()?, to);
        first.extend_from_slice(command.as_bytes());
        first.push(b'\n');
        conn.stream
            .write_all(&first)
            .context("sending the command")?;
        Ok(conn)
    }

    /// Reads to EOF (or a reset), checking the pattern from offset 0.
    pub fn read_pattern(&mut self) -> Result<Received> {
        self.read_pattern_from(PatternCheck::default())
    }

    /// Reads to EOF (or a reset), going on with `check` (what was read before).
    pub fn read_pattern_from(&mut self, mut check: PatternCheck) -> Result<Received> {
        let mut buf = vec![0; 256 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Ok(Received {
                        check,
                        reset: false,
                    });
                }
                Ok(n) => check.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(Received { check, reset: true });
                }
                Err(e) => bail!("reading after {} bytes: {e}", check.len),
            }
        }
    }

    /// Reads everything up to EOF as bytes.
    pub fn read_to_end(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.stream
            .read_to_end(&mut out)
            .with_context(|| format!("reading after {} bytes", out.len()))?;
        Ok(out)
    }

    /// Writes `len` bytes of the pattern.
    pub fn write_pattern(&mut self, len: u64) -> Result<()> {
        let mut buf = vec![0; 256 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = (len - sent).min(buf.len() as u64) as usize;
            pattern(sent, &mut buf[..n]);
            self.stream
                .write_all(&buf[..n])
                .with_context(|| format!("writing after {sent} bytes"))?;
            sent += n as u64;
        }
        Ok(())
    }

    /// Half-closes: the app reads EOF.
    pub fn finish_writing(&self) -> Result<()> {
        self.stream
            .shutdown(Shutdown::Write)
            .context("half-closing the client")
    }

    /// Closes with a reset (SO_LINGER 0).
    pub fn reset(self) -> Result<()> {
        socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))?;
        drop(self);
        Ok(())
    }
}

/// What a client read.
#[derive(Debug, Clone)]
pub struct Received {
    /// The pattern check over everything read.
    pub check: PatternCheck,
    /// Whether the read ended with a reset rather than EOF.
    pub reset: bool,
}

impl Received {
    /// Fails unless exactly `len` pattern bytes arrived, followed by a clean EOF.
    pub fn expect_intact(&self, len: u64, what: &str) -> Result<()> {
        ensure!(
            self.check.bad.is_none() && self.check.len == len && !self.reset,
            "{what}: expected {len} pattern bytes and EOF, got {} bytes, first bad offset {}, \
             reset {}",
            self.check.len,
            self.check.bad_label(),
            self.reset
        );
        Ok(())
    }
}
