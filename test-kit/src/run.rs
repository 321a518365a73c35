//! Running a command to completion within a timeout, polling until something holds, and
//! writing a note to stderr: what every helper of the kit below builds on.

use std::{
    io::{Read, Write as _},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};

/// How often [`wait_for`] probes, and how often a command's exit is polled.
pub const POLL: Duration = Duration::from_millis(20);

/// Writes a line straight to stderr, unbuffered and in one piece, so skips and kept-log notes
/// are seen whatever a test harness does with `eprintln!`.
pub fn note(line: &str) {
    // Nothing sensible is left to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Runs `cmd` to completion and returns its output; killed (and an error) after `timeout`.
pub fn output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let stderr = child.stderr.take().context("the child's stderr")?;
    std::thread::scope(|s| {
        let out = s.spawn(|| read_all(stdout));
        let err = s.spawn(|| read_all(stderr));
        let status = wait_with_deadline(&mut child, timeout);
        let output = Output {
            status: status.unwrap_or_else(|| {
                if let Ok(pgid) = i32::try_from(child.id()).map(Pid::from_raw) {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                child.wait().unwrap_or_default()
            }),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        };
        match status {
            Some(_) => Ok(output),
            None => bail!(
                "{what} did not finish within {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    })
}

fn read_all(mut from: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    // A read error only shortens the output, which the caller then reports.
    let _ = from.read_to_end(&mut buf);
    buf
}

/// The exit status, or `None` if the child still runs at the deadline.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => sleep(POLL),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Probes until `probe` returns a value, fails, or `timeout` passes.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(POLL);
    }
}
