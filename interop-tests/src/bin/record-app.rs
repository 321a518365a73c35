//! `trueip-record-app ADDR...`: a pod app that records the raw bytes of every connection, PROXY
//! header included, so that a test can decode what the sidecar re-emitted with its own decoder.
//!
//! Per connection it reads until the peer's FIN or until nothing has arrived for a moment
//! (an HTTP client waits for the answer), prints one line
//!
//! ```text
//! recorded peer=127.0.0.1:40112 bytes=62 hex=0d0a0d0a000d0a515549540a2111...
//! ```
//!
//! then answers a minimal HTTP response and closes.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::ExitCode,
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use trueip_interop_tests::record::{IDLE, Recording};

/// The most bytes recorded per connection.
const MAX_RECORD: usize = 256 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Best effort: stderr is the only channel left.
            let _ = writeln!(io::stderr(), "trueip-record-app: {e:#}");
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
    anyhow::ensure!(!addrs.is_empty(), "usage: trueip-record-app ADDR...");
    let mut acceptors = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        acceptors.push(thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || record(stream));
            }
        }));
    }
    for acceptor in acceptors {
        acceptor
            .join()
            .map_err(|_| anyhow::anyhow!("an acceptor panicked"))?;
    }
    Ok(())
}

fn record(mut stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let mut bytes = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    // The first byte may take a while (the sender's header); after that, idleness ends it.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                if bytes.len() >= MAX_RECORD {
                    break;
                }
                let _ = stream.set_read_timeout(Some(IDLE));
            }
        }
    }
    let line = Recording { peer, bytes }.line();
    {
        let mut out = io::stdout().lock();
        // A test that stopped reading has no use for the line.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    let _ =
        stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
}
