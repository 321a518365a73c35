//! `trueip-sidecar`, the binary under test, started with its single-listener command line in
//! a pod's namespace.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;

use crate::topology::Topology;
use trueip_test_kit::{
    netns::Netns,
    prereq::trueip_binary,
    process::{Launch, Proc},
};

/// How long the sidecar gets to start listening (longer in eBPF mode: it asks the agent first).
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The sidecar's log line for a rejected connection carries this field.
pub const REJECT_REASON: &str = "reason=";

/// The command line for one listener: `--listen`, `--upstream`, `--mode`, one `--trusted` per
/// CIDR, logging at debug (one line per accepted connection) without colours. Add more flags
/// with [`Launch::args`].
pub fn launch<'a>(
    name: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    mode: &str,
    trusted: &[&str],
) -> Result<Launch<'a>> {
    let mut args = vec![
        "--listen".to_owned(),
        listen.to_string(),
        "--upstream".to_owned(),
        upstream.to_string(),
        "--mode".to_owned(),
        mode.to_owned(),
    ];
    for cidr in trusted {
        args.extend(["--trusted".to_owned(), (*cidr).to_owned()]);
    }
    Ok(Launch::new(name, trueip_binary("trueip-sidecar")?)
        .args(args)
        .env("RUST_LOG", "debug")
        // Plain text in the log file: tracing colours its output unless told otherwise.
        .env("NO_COLOR", "1"))
}

/// Starts `launch` in `netns` (a pod) and waits until it listens on `listen`.
pub fn start<'a>(
    topo: &Topology,
    netns: &'a Netns,
    launch: Launch<'a>,
    listen: SocketAddr,
) -> Result<Proc> {
    let mut proc = launch.netns(netns).spawn(topo.dir())?;
    proc.wait_listening(netns, listen, START_TIMEOUT)?;
    Ok(proc)
}
