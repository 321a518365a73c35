//! `trueip-echo-app ADDR...`: the minimal unmodified app of the interop tests. It listens on
//! every ADDR, echoes each connection's bytes back until the peer's FIN, and prints one line when
//! it accepts a connection and one when the connection ends:
//!
//! ```text
//! accepted accept=203.0.113.7:40112 getpeername=203.0.113.7:40112 local=127.0.0.1:9000
//! served accept=203.0.113.7:40112 getpeername=203.0.113.7:40112 local=127.0.0.1:9000
//!        bytes=1048576 fnv1a=5c1f0e3a9b27d461 eof=clean        (one line)
//! ```
//!
//! `accept` is the address `accept()` returned, `getpeername` what `getpeername()` returns, right
//! after `accept()` and again when the connection ends: the calls trueip's eBPF mode rewrites.
//! Being a separate process, it can run in a pod's network namespace and cgroup.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use trueip_interop_tests::app::{ACCEPTED, Fnv1a, SERVED, Served};

/// Nothing waits longer than this for the peer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Best effort: stderr is the only channel left.
            let _ = writeln!(io::stderr(), "trueip-echo-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let addrs: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .with_context(|| format!("`{a}` is not an address:port"))
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(!addrs.is_empty(), "usage: trueip-echo-app ADDR...");
    let mut acceptors = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        say(&format!("listening {addr}"));
        acceptors.push(thread::spawn(move || accept_loop(&listener)));
    }
    for acceptor in acceptors {
        acceptor
            .join()
            .map_err(|_| anyhow::anyhow!("an acceptor panicked"))?;
    }
    Ok(())
}

fn accept_loop(listener: &TcpListener) {
    loop {
        match listener.accept() {
            Ok((stream, accept)) => {
                thread::spawn(move || serve(stream, accept));
            }
            Err(e) => say(&format!("accept failed: {e}")),
        }
    }
}

/// Reports the peer as `accept()` and `getpeername()` returned it, echoes, reports the bytes.
fn serve(mut stream: TcpStream, accept: SocketAddr) {
    let mut served = Served {
        accept: Some(accept),
        getpeername: stream.peer_addr().ok(),
        local: stream.local_addr().ok(),
        bytes: 0,
        fnv1a: 0,
        clean_eof: false,
    };
    say(&served.line(ACCEPTED));
    let mut hash = Fnv1a::new();
    served.clean_eof = echo(&mut stream, &mut served, &mut hash).is_ok();
    served.fnv1a = hash.finish();
    // Again at the end, before our FIN (a closed socket has no peer): a restored address must
    // hold for the connection's whole life.
    served.getpeername = stream.peer_addr().ok();
    if served.clean_eof {
        // The peer may be gone already; its FIN was all that mattered.
        let _ = stream.shutdown(Shutdown::Write);
    }
    say(&served.line(SERVED));
}

/// Echoes until the peer's FIN.
fn echo(stream: &mut TcpStream, served: &mut Served, hash: &mut Fnv1a) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                served.bytes += n as u64;
                hash.update(&buf[..n]);
                stream.write_all(&buf[..n])?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One line to stdout, flushed at once: the tests read it while the app runs.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    // A test that stopped reading has no use for the line.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
