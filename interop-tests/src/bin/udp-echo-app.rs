//! `trueip-udp-echo-app [--proxy-v2] ADDR...`: the unmodified UDP app of the interop tests. It
//! binds every ADDR, and for each datagram prints one line with the address `recvfrom()` returned
//! and sends the payload back to that address with `sendto()`, the two calls trueip's UDP eBPF
//! mode rewrites:
//!
//! ```text
//! datagram from=203.0.113.7:40112 local=127.0.0.1:9053 bytes=5 fnv1a=5c1f0e3a9b27d461 header=-
//! ```
//!
//! With `--proxy-v2` it is an app that parses PROXY v2 itself (as the `proxy-v2` restore mode
//! expects): it strips the header each datagram starts with, prints the client it names in
//! `header=`, and echoes the payload only. A datagram whose header does not decode is printed
//! with `header=invalid` and not echoed.

use std::{
    io::{self, Write},
    net::{SocketAddr, UdpSocket},
    process::ExitCode,
    thread,
};

use anyhow::{Context, Result};
use trueip_interop_tests::{app::fnv1a, udp::Datagram};
use trueip_proxy_header::{Limits, decode_datagram};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Best effort: stderr is the only channel left.
            let _ = writeln!(io::stderr(), "trueip-udp-echo-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut proxy_v2 = false;
    let mut addrs = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--proxy-v2" {
            proxy_v2 = true;
        } else {
            addrs.push(
                arg.parse::<SocketAddr>()
                    .with_context(|| format!("`{arg}` is not an address:port"))?,
            );
        }
    }
    anyhow::ensure!(
        !addrs.is_empty(),
        "usage: trueip-udp-echo-app [--proxy-v2] ADDR..."
    );
    let mut workers = Vec::new();
    for addr in addrs {
        let socket = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
        say(&format!("listening {addr}"));
        workers.push(thread::spawn(move || serve(&socket, proxy_v2)));
    }
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

fn serve(socket: &UdpSocket, proxy_v2: bool) -> Result<()> {
    let local = socket.local_addr()?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = socket.recv_from(&mut buf).context("recvfrom")?;
        let datagram = &buf[..len];
        let (payload, header) = if proxy_v2 {
            match decode_datagram(datagram, &Limits::default()) {
                Ok((header, at)) => (Some(&datagram[at..]), Some(header.client())),
                Err(_) => (None, None),
            }
        } else {
            (Some(datagram), None)
        };
        let line = Datagram {
            from,
            local,
            bytes: payload.map_or(0, <[u8]>::len),
            fnv1a: payload.map_or(0, fnv1a),
            header: if proxy_v2 {
                Some(header.flatten())
            } else {
                None
            },
            valid: payload.is_some(),
        }
        .line();
        say(&line);
        if let Some(payload) = payload {
            socket
                .send_to(payload, from)
                .with_context(|| format!("sendto {from}"))?;
        }
    }
}

/// One line to stdout, flushed at once (the tests read it while the app runs).
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
