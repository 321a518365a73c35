//! The hostile caller: `__trueip_attack <agent socket>`, driven by commands on stdin (one answer
//! line each), speaking the agent protocol by hand to do what a sidecar never would.
//!
//! * `steer <port>` — listens on `0.0.0.0:0` and asks the agent to steer `<port>` to it →
//!   `answer <agent's line>` or `error <why>`
//! * `get-map <n>` — asks for the map with `<n>` stray descriptors (`/dev/null`) attached →
//!   `answer <agent's line> fds=<descriptors received>`
//! * `flood <n>` — `<n>` GET-MAP requests in a row, each on its own connection →
//!   `ok=<n> busy=<n> other=<n>`
//! * `idle <n>` — opens `<n>` connections and sends nothing on them → `holding <n> failed=<n>`
//! * `closed` — how many held connections the agent has closed (within 3 s) → `closed <n> of <n>`
//! * `linger` — attaches a TCP socket whose close would block for 30 s (`SO_LINGER` with unsent
//!   data, its peer never reading) to a GET-MAP, then closes its own copy → `answer <line>`
//! * `orphan` — a child process connects and exits; this process sends GET-MAP on the child's
//!   connection, so the agent's pinned caller is gone (a recycled pid would look alike) →
//!   `answer <line>`

use std::{
    fs::File,
    io::{self, Write as _},
    net::{TcpListener, TcpStream},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket},
};
use trueip_agent_client::{protocol::MAX_MESSAGE_LEN, wire};

/// Argument that selects the attacker role.
pub(crate) const ATTACK: &str = "__trueip_attack";

/// The attacker (see the module docs).
pub(crate) fn attack(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attacker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let socket = Path::new(args.first().context("agent socket")?).to_owned();
    say("attacker ready")?;
    let mut held: Vec<OwnedFd> = Vec::new();
    // Kept open so that the lingering socket's peer never resets it.
    let mut kept: Vec<TcpListener> = Vec::new();
    for line in io::stdin().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["steer", port] => {
                let listener = TcpListener::bind("0.0.0.0:0")?;
                let msg = format!("TRUEIP/1 STEER port={port}\n");
                ask(&socket, &msg, &[listener.as_fd()]).map(|(a, _)| format!("answer {a}"))
            }
            ["get-map", n] => {
                let files: Vec<File> = (0..n.parse::<usize>()?)
                    .map(|_| File::open("/dev/null"))
                    .collect::<io::Result<_>>()?;
                let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
                ask(&socket, "TRUEIP/1 GET-MAP\n", &fds)
                    .map(|(a, got)| format!("answer {a} fds={got}"))
            }
            ["flood", n] => Ok(flood(&socket, n.parse()?)),
            ["idle", n] => {
                let mut failed = 0;
                for _ in 0..n.parse::<usize>()? {
                    match connected(&socket) {
                        Ok(conn) => held.push(conn),
                        Err(_) => failed += 1,
                    }
                }
                Ok(format!("holding {} failed={failed}", held.len()))
            }
            ["closed"] => Ok(format!("closed {} of {}", closed(&held)?, held.len())),
            ["linger"] => linger(&socket, &mut kept).map(|a| format!("answer {a}")),
            ["orphan"] => orphan(&socket).map(|a| format!("answer {a}")),
            _ => bail!("unknown command {line:?}"),
        };
        say(&answer.unwrap_or_else(|e| format!("error {e:#}")))?;
    }
    Ok(())
}

/// A connection to the agent socket.
fn connected(socket: &Path) -> anyhow::Result<OwnedFd> {
    let conn = socket_fd()?;
    connect(conn.as_raw_fd(), &UnixAddr::new(socket)?)?;
    Ok(conn)
}

fn socket_fd() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// Sends `msg` with `fds` on a new connection; returns the answer line and how many
/// descriptors came back.
fn ask(socket: &Path, msg: &str, fds: &[BorrowedFd<'_>]) -> anyhow::Result<(String, usize)> {
    let conn = connected(socket)?;
    exchange(conn.as_fd(), msg, fds)
}

fn exchange(
    conn: BorrowedFd<'_>,
    msg: &str,
    fds: &[BorrowedFd<'_>],
) -> anyhow::Result<(String, usize)> {
    // An agent that refuses a caller on sight answers and closes before the request is sent:
    // the send then fails, and the answer is still there to read.
    let sent = wire::send(conn, msg.as_bytes(), fds, false);
    let mut fd_poll = [PollFd::new(conn, PollFlags::POLLIN)];
    if poll(&mut fd_poll, PollTimeout::from(5000u16))? == 0 {
        bail!("no answer within 5 s");
    }
    let mut buf = [0u8; MAX_MESSAGE_LEN];
    let got = wire::receive(conn, &mut buf, true)?;
    if got.len == 0 {
        sent?;
        bail!("the agent closed the connection without answering");
    }
    let text = String::from_utf8_lossy(&buf[..got.len.min(buf.len())]);
    Ok((text.trim_end().to_owned(), got.fds.len()))
}

fn flood(socket: &Path, n: usize) -> String {
    let (mut ok, mut busy, mut other) = (0, 0, Vec::new());
    for _ in 0..n {
        match ask(socket, "TRUEIP/1 GET-MAP\n", &[]) {
            Ok((a, _)) if a.starts_with("TRUEIP/1 OK") => ok += 1,
            Ok((a, _)) if a.starts_with("TRUEIP/1 ERR busy") => busy += 1,
            Ok((a, _)) => other.push(a),
            Err(e) => other.push(format!("{e:#}")),
        }
    }
    format!("ok={ok} busy={busy} other={} {other:?}", other.len())
}

/// How many of `held` the agent has closed, waiting up to 3 s for them.
fn closed(held: &[OwnedFd]) -> anyhow::Result<usize> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let mut fds: Vec<PollFd<'_>> = held
            .iter()
            .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN))
            .collect();
        poll(&mut fds, PollTimeout::ZERO)?;
        let n = fds
            .iter()
            .filter(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)))
            .count();
        if n == held.len() || std::time::Instant::now() >= deadline {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// See the module docs: a socket whose last close() blocks.
fn linger(socket: &Path, kept: &mut Vec<TcpListener>) -> anyhow::Result<String> {
    let peer = TcpListener::bind("127.0.0.1:0")?;
    let stream = TcpStream::connect(peer.local_addr()?)?;
    let sock = socket2::SockRef::from(&stream);
    sock.set_send_buffer_size(4096)?;
    stream.set_nonblocking(true)?;
    let chunk = [0u8; 65536];
    let mut stream_ref = &stream;
    loop {
        match stream_ref.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    sock.set_linger(Some(Duration::from_secs(30)))?;
    let (answer, _) = ask(socket, "TRUEIP/1 GET-MAP\n", &[stream.as_fd()])?;
    drop(stream);
    kept.push(peer);
    Ok(answer)
}

/// See the module docs: the caller that connected is gone when the request arrives.
fn orphan(socket: &Path) -> anyhow::Result<String> {
    let (ours, theirs) = UnixStream::pair()?;
    // SAFETY: this role is single-threaded (the stdin loop), so the child may do anything;
    // it only connects, passes the connection on and exits without unwinding.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error().into());
    }
    if pid == 0 {
        let code = match connected(socket) {
            Ok(conn) => {
                i32::from(wire::send(theirs.as_fd(), b"x", &[conn.as_fd()], false).is_err())
            }
            Err(_) => 1,
        };
        // SAFETY: ends the forked child at once, as fork's child must.
        unsafe { libc::_exit(code) };
    }
    drop(theirs);
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)?;
    let mut buf = [0u8; 1];
    let mut got = wire::receive(ours.as_fd(), &mut buf, false)?;
    let conn = got.fds.pop().context("the child passed no connection")?;
    exchange(conn.as_fd(), "TRUEIP/1 GET-MAP\n", &[]).map(|(a, _)| a)
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
