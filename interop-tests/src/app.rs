//! The tests' minimal app (`trueip-echo-app`, a separate process so that it can run in the
//! pod's namespace and cgroup), the format of what it reports, and a raw TCP client for it.

use std::{
    fmt::Write as _,
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::topology::Topology;
use trueip_test_kit::{
    cgroup::Cgroup,
    netns::Netns,
    prereq::own_binary,
    process::{Launch, Proc},
    run::wait_for,
};

/// Read and write timeout of the client socket.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the app gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// FNV-1a (64 bit): names a payload in a line of text without printing it.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Fnv1a {
    /// The hash of nothing.
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Self {
        Self::new()
    }
}

/// The FNV-1a hash of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.update(bytes);
    h.finish()
}

/// One connection as the app saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The peer `accept()` returned.
    pub accept: Option<SocketAddr>,
    /// The peer `getpeername()` returned on the accepted socket: right after `accept()` in an
    /// `accepted` line, when the connection ended in a `served` line.
    pub getpeername: Option<SocketAddr>,
    /// The app's own address, `getsockname()`.
    pub local: Option<SocketAddr>,
    /// How many bytes it read (and echoed); 0 in an `accepted` line.
    pub bytes: u64,
    /// The FNV-1a hash of those bytes.
    pub fnv1a: u64,
    /// Whether the connection ended with the peer's FIN (not an error or a timeout).
    pub clean_eof: bool,
}

impl Served {
    /// The line the app prints:
    /// `<event> accept=.. getpeername=.. local=.. [bytes=.. fnv1a=.. eof=..]`.
    pub fn line(&self, event: &str) -> String {
        let addr = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let mut line = format!(
            "{event} accept={} getpeername={} local={}",
            addr(self.accept),
            addr(self.getpeername),
            addr(self.local)
        );
        if event != ACCEPTED {
            let eof = if self.clean_eof { "clean" } else { "error" };
            // Writing to a String cannot fail.
            let _ = write!(
                line,
                " bytes={} fnv1a={:016x} eof={eof}",
                self.bytes, self.fnv1a
            );
        }
        line
    }

    /// Parses a line of `event`, or `None` for any other line.
    pub fn parse(line: &str, event: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        if words.next() != Some(event) {
            return None;
        }
        let mut served = Self {
            accept: None,
            getpeername: None,
            local: None,
            bytes: 0,
            fnv1a: 0,
            clean_eof: false,
        };
        for (key, value) in words.filter_map(|w| w.split_once('=')) {
            match key {
                "accept" => served.accept = value.parse().ok(),
                "getpeername" => served.getpeername = value.parse().ok(),
                "local" => served.local = value.parse().ok(),
                "bytes" => served.bytes = value.parse().ok()?,
                "fnv1a" => served.fnv1a = u64::from_str_radix(value, 16).ok()?,
                "eof" => served.clean_eof = value == "clean",
                _ => {}
            }
        }
        Some(served)
    }
}

/// The event printed when a connection is accepted.
pub const ACCEPTED: &str = "accepted";

/// The event printed when a connection has ended.
pub const SERVED: &str = "served";

/// A running `trueip-echo-app`.
#[derive(Debug)]
pub struct EchoApp {
    proc: Proc,
}

impl EchoApp {
    /// Starts the app listening on `addrs` in `netns` (inside `cgroup` when given) and waits
    /// until it listens. Its output goes to `echo-app-<netns>.log` in the topology's directory.
    pub fn start(
        topo: &Topology,
        netns: &Netns,
        addrs: &[SocketAddr],
        cgroup: Option<&Cgroup>,
    ) -> Result<Self> {
        Self::start_named(
            topo,
            &format!("echo-app-{}", netns.name()),
            netns,
            addrs,
            cgroup,
        )
    }

    /// [`start`](Self::start) with its own name (and log file `<name>.log`), for several apps
    /// in one namespace.
    pub fn start_named(
        topo: &Topology,
        name: &str,
        netns: &Netns,
        addrs: &[SocketAddr],
        cgroup: Option<&Cgroup>,
    ) -> Result<Self> {
        let mut launch = Launch::new(name, own_binary("trueip-echo-app")?)
            .args(addrs.iter().map(ToString::to_string))
            .netns(netns);
        if let Some(cgroup) = cgroup {
            launch = launch.cgroup(cgroup);
        }
        let mut proc = launch.spawn(topo.dir())?;
        for &addr in addrs {
            proc.wait_listening(netns, addr, START_TIMEOUT)?;
        }
        Ok(Self { proc })
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// The connections accepted so far.
    pub fn accepted(&self) -> Vec<Served> {
        self.events(ACCEPTED)
    }

    /// Waits until `n` connections have been accepted and returns them, in accept order.
    pub fn wait_accepted(&mut self, n: usize, timeout: Duration) -> Result<Vec<Served>> {
        self.wait_events(ACCEPTED, n, timeout)
    }

    /// Waits until `n` connections have ended and returns them, in the order they ended.
    pub fn wait_served(&mut self, n: usize, timeout: Duration) -> Result<Vec<Served>> {
        self.wait_events(SERVED, n, timeout)
    }

    fn wait_events(&mut self, event: &str, n: usize, timeout: Duration) -> Result<Vec<Served>> {
        wait_for(
            &format!("the app to log {n} `{event}` line(s)"),
            timeout,
            || {
                let events = self.events(event);
                if events.len() < n {
                    self.proc.ensure_running()?;
                }
                Ok((events.len() >= n).then_some(events))
            },
        )
    }

    fn events(&self, event: &str) -> Vec<Served> {
        self.proc
            .log()
            .lines()
            .filter_map(|l| Served::parse(l, event))
            .collect()
    }
}

/// What a client got back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The client's own address: who the app should see.
    pub local: SocketAddr,
    /// Every byte read before the connection ended.
    pub bytes: Vec<u8>,
    /// Whether it ended with a reset rather than a FIN.
    pub reset: bool,
}

/// A client connection, made from inside a namespace.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    to: SocketAddr,
}

impl Conn {
    /// Connects from inside `ns` to `to`.
    pub fn open(ns: &Netns, to: SocketAddr) -> Result<Self> {
        let stream = ns
            .run(|| TcpStream::connect_timeout(&to, IO_TIMEOUT))?
            .with_context(|| format!("connecting from {} to {to}", ns.name()))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Self { stream, to })
    }

    /// Sends `payload`, half-closes, and reads until the other side closes. Writing and
    /// reading run concurrently, so an echo of any size fits.
    pub fn finish(self, payload: &[u8]) -> Result<Reply> {
        let Self { stream, to } = self;
        let local = stream.local_addr()?;
        let mut writer = stream.try_clone().context("cloning the client socket")?;
        let mut reader = stream;
        thread::scope(|s| {
            // A write error means the other side closed first; the reader sees how.
            s.spawn(move || {
                let _ = writer
                    .write_all(payload)
                    .and_then(|()| writer.shutdown(Shutdown::Write));
            });
            let mut bytes = Vec::new();
            match reader.read_to_end(&mut bytes) {
                Ok(_) => Ok(Reply {
                    local,
                    bytes,
                    reset: false,
                }),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Reply {
                    local,
                    bytes,
                    reset: true,
                }),
                Err(e) => bail!(
                    "reading the reply from {to} after {} bytes: {e}",
                    bytes.len()
                ),
            }
        })
    }
}

/// [`Conn::open`] then [`Conn::finish`]: one whole exchange.
pub fn exchange(ns: &Netns, to: SocketAddr, payload: &[u8]) -> Result<Reply> {
    Conn::open(ns, to)?.finish(payload)
}

/// `len` random bytes, so that a payload cannot pass by accident.
pub fn random_bytes(len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_lines_round_trip() {
        let served = Served {
            accept: Some("[2001:db8:c::7]:40112".parse().unwrap()),
            getpeername: Some("203.0.113.7:40112".parse().unwrap()),
            local: Some("127.0.0.1:9000".parse().unwrap()),
            bytes: 1 << 20,
            fnv1a: fnv1a(b"payload"),
            clean_eof: true,
        };
        assert_eq!(
            Served::parse(&served.line(SERVED), SERVED),
            Some(served.clone())
        );
        assert_eq!(Served::parse(&served.line(SERVED), ACCEPTED), None);
        let accepted = Served::parse(&served.line(ACCEPTED), ACCEPTED).unwrap();
        assert_eq!((accepted.accept, accepted.bytes), (served.accept, 0));
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut split = Fnv1a::new();
        split.update(b"foo");
        split.update(b"bar");
        assert_eq!(split.finish(), fnv1a(b"foobar"));
    }
}
