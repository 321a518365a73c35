//! The two programs the tests run as child processes of this binary.
//!
//! * **app**: an unmodified TCP server. It listens, prints `LISTENING <addr>`, and on every line
//!   `?` a client sends, answers with what the kernel told it about that connection:
//!   `accept=<addr from accept()> peer=<getpeername()> local=<getsockname()>`.
//! * **sidecar**: does what the real sidecar does with `trueip-agent-client`, driven by commands
//!   on stdin (one answer line each on stdout):
//!   - at start: `PodMap::connect` → `ready <max_entries>` or `error <message>`
//!   - `open <id> <app> <client|-> <dst|-> [<bind>]` → binds a loopback socket (to `<bind>` or
//!     port 0 on the app's address), inserts the entry unless `<client>` is `-`, connects →
//!     `ok <sidecar addr> <restored|none|full|error:…>`
//!   - `ask <id>` → sends `?` on the connection, prints the app's answer
//!   - `forget <id>` → removes the entry, keeps the connection → `ok`
//!   - `close <id>` → removes the entry, closes → `ok`
//! * **steer**: a steering sidecar. `__trueip_steer <agent socket> <app port> [<netns path>]`
//!   listens on `[::]:0`, hands the listener to the agent with `trueip_agent_client::steer`
//!   (from inside `<netns path>` when given: a caller trying to steer with another namespace's
//!   socket) → `steering <addr>` or `error <message>`. Every connection it accepts gets one line,
//!   `sidecar local=<addr> peer=<addr>`. On stdin, `probe <addr>` connects to `<addr>` (from the
//!   pod, so over loopback), sends `?` and prints the one-line answer.

use std::{
    collections::HashMap,
    io::{self, BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd as _,
    path::Path,
    process::ExitCode,
    thread,
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Socket, Type};
use trueip_addrs::{AppAddr, ClientAddr, OriginalDst, SidecarAddr};
use trueip_agent_client::{InsertError, LoopbackConn, PodMap, Restored};

/// Argument that selects the app role.
pub(crate) const APP: &str = "__trueip_app";
/// Argument that selects the sidecar role.
pub(crate) const SIDECAR: &str = "__trueip_sidecar";
/// Argument that selects the steering sidecar role.
pub(crate) const STEER: &str = "__trueip_steer";

/// The app: `__trueip_app <listen addr>`.
pub(crate) fn app(args: &[String]) -> ExitCode {
    match run_app(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_app(args: &[String]) -> anyhow::Result<()> {
    let addr: SocketAddr = args.first().context("listen address")?.parse()?;
    let listener = TcpListener::bind(addr)?;
    say(&format!("LISTENING {}", listener.local_addr()?))?;
    loop {
        let (stream, accepted) = listener.accept()?;
        thread::spawn(move || {
            let Ok(reader) = stream.try_clone() else {
                return;
            };
            let mut stream = stream;
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if line != "?" {
                    continue;
                }
                let describe = |a: io::Result<SocketAddr>| {
                    a.map_or_else(|e| format!("error:{e}"), |a| a.to_string())
                };
                let answer = format!(
                    "accept={accepted} peer={} local={}\n",
                    describe(stream.peer_addr()),
                    describe(stream.local_addr())
                );
                if stream.write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
        });
    }
}

/// The sidecar: `__trueip_sidecar <agent socket>`.
pub(crate) fn sidecar(args: &[String]) -> ExitCode {
    match run_sidecar(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidecar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Conn {
    stream: BufReader<TcpStream>,
    loopback: LoopbackConn,
}

fn run_sidecar(args: &[String]) -> anyhow::Result<()> {
    let socket = Path::new(args.first().context("agent socket")?);
    let map = match PodMap::connect(socket) {
        Ok(map) => map,
        Err(e) => {
            // The whole chain, so the test can check what the sidecar would log.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            return say(&format!("error {message}"));
        }
    };
    say(&format!("ready {}", map.max_entries()))?;
    let mut conns: HashMap<String, Conn> = HashMap::new();
    for line in io::stdin().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["open", id, app, client, dst, rest @ ..] => {
                let app: SocketAddr = app.parse()?;
                let restored = match (*client, *dst) {
                    ("-", _) => None,
                    (client, "-") => Some(Restored {
                        client: ClientAddr::new(client.parse()?),
                        original_dst: None,
                    }),
                    (client, dst) => Some(Restored {
                        client: ClientAddr::new(client.parse()?),
                        original_dst: Some(OriginalDst::new(dst.parse()?)),
                    }),
                };
                let bind: SocketAddr = match rest {
                    [bind] => bind.parse()?,
                    _ => SocketAddr::new(app.ip(), 0),
                };
                // Bind first to learn the port, record the entry, and only then connect.
                let sock = Socket::new(Domain::for_address(app), Type::STREAM, None)?;
                sock.set_reuse_address(true)?;
                sock.bind(&bind.into())?;
                let sidecar = sock.local_addr()?.as_socket().context("bound address")?;
                let loopback = LoopbackConn {
                    app: AppAddr::new(app),
                    sidecar: SidecarAddr::new(sidecar),
                };
                let status = match restored.map(|r| map.insert(&loopback, &r)) {
                    None => "none".to_owned(),
                    Some(Ok(())) => "restored".to_owned(),
                    Some(Err(InsertError::Full)) => "full".to_owned(),
                    Some(Err(InsertError::Taken)) => "taken".to_owned(),
                    Some(Err(InsertError::Other(e))) => format!("error:{e}"),
                };
                sock.connect(&app.into())?;
                let stream = BufReader::new(TcpStream::from(sock));
                conns.insert((*id).to_owned(), Conn { stream, loopback });
                format!("ok {sidecar} {status}")
            }
            ["ask", id] => {
                let conn = conns.get_mut(*id).context("no such connection")?;
                conn.stream.get_mut().write_all(b"?\n")?;
                let mut answer = String::new();
                conn.stream.read_line(&mut answer)?;
                answer.trim_end().to_owned()
            }
            ["forget", id] => {
                let conn = conns.get(*id).context("no such connection")?;
                map.remove(&conn.loopback)?;
                "ok".to_owned()
            }
            ["close", id] => {
                let conn = conns.remove(*id).context("no such connection")?;
                drop(conn.stream);
                map.remove(&conn.loopback)?;
                "ok".to_owned()
            }
            _ => bail!("unknown command {line:?}"),
        };
        say(&answer)?;
    }
    Ok(())
}

/// The steering sidecar (see the module docs).
pub(crate) fn steer(args: &[String]) -> ExitCode {
    match run_steer(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steer: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_steer(args: &[String]) -> anyhow::Result<()> {
    let socket = Path::new(args.first().context("agent socket")?);
    let port: u16 = args.get(1).context("app port")?.parse()?;
    let listener = TcpListener::bind("[::]:0")?;
    if let Some(other) = args.get(2) {
        let ns = std::fs::File::open(other)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    }
    if let Err(e) = trueip_agent_client::steer(socket, port, listener.as_fd()) {
        return say(&format!("error {e}"));
    }
    say(&format!("steering {}", listener.local_addr()?))?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let line = format!(
                "sidecar local={} peer={}\n",
                stream
                    .local_addr()
                    .map_or_else(|e| e.to_string(), |a| a.to_string()),
                stream
                    .peer_addr()
                    .map_or_else(|e| e.to_string(), |a| a.to_string()),
            );
            drop(stream.write_all(line.as_bytes()));
        }
    });
    for line in io::stdin().lines() {
        let line = line?;
        let answer = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["probe", addr] => probe(addr.parse()?).unwrap_or_else(|e| format!("error {e}")),
            _ => bail!("unknown command {line:?}"),
        };
        say(&answer)?;
    }
    Ok(())
}

/// Connects to `addr`, sends `?` and returns the first line of the answer.
pub(crate) fn probe(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    stream.write_all(b"?\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}

/// One line to the test, on stdout.
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
