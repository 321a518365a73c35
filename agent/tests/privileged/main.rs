//! Privileged end-to-end tests of the eBPF restore mode: a real agent, real cgroups and network
//! namespaces, an unmodified TCP server as the app, and a sidecar using `trueip-agent-client`.
//!
//! They need root, bpffs at /sys/fs/bpf and cgroup v2; without them every test is reported as
//! `ignored (SKIPPED: <why>)`, never as passed. This is a `harness = false` test (the test
//! kit's harness): this binary is also the app and the sidecar (see `roles`), and it runs the
//! tests one after the other (they share cgroup and bpffs state), whatever `--test-threads`
//! says. It takes libtest's other arguments (a name filter, `--exact`, `--list`, ...).

mod attacker;
mod hostile;
mod roles;
mod support;
mod traces;

use std::{net::SocketAddr, process::ExitCode, rc::Rc};

use anyhow::{Context as _, bail, ensure};
use trueip_test_kit::{
    Cgroup,
    harness::{self, Test, Threads},
};

use crate::support::{
    Agent, Metrics, Netns, Placement, PodCgroup, RoleChild, Veth, need, wait_for,
};

const TESTS: &[(&str, Test)] = &[
    ("v4_client_on_a_v4_listener", v4_client_on_a_v4_listener),
    ("v6_client_on_a_v6_listener", v6_client_on_a_v6_listener),
    (
        "v4_client_on_a_dual_stack_listener",
        v4_client_on_a_dual_stack_listener,
    ),
    (
        "v6_client_cannot_be_shown_to_a_v4_socket",
        v6_client_cannot_be_shown_to_a_v4_socket,
    ),
    (
        "getsockname_shows_the_original_destination",
        getsockname_shows_the_original_destination,
    ),
    (
        "removed_entry_shows_the_real_peer_again",
        removed_entry_shows_the_real_peer_again,
    ),
    (
        "agent_sigkill_and_restart_keep_restoring",
        agent_sigkill_and_restart_keep_restoring,
    ),
    (
        "two_pods_never_see_each_other",
        two_pods_never_see_each_other,
    ),
    (
        "shared_netns_is_refused_to_a_second_pod",
        shared_netns_is_refused_to_a_second_pod,
    ),
    ("full_map_is_reported_as_full", full_map_is_reported_as_full),
    (
        "unprivileged_sidecar_uses_its_map",
        unprivileged_sidecar_uses_its_map,
    ),
    ("gone_pods_are_swept", gone_pods_are_swept),
    (
        "metrics_show_pods_entries_and_requests",
        metrics_show_pods_entries_and_requests,
    ),
    (
        "steering_hands_outside_connections_to_the_sidecar",
        steering_hands_outside_connections_to_the_sidecar,
    ),
    (
        "steering_fails_closed_when_configured",
        steering_fails_closed_when_configured,
    ),
    (
        "steering_refuses_another_namespaces_socket",
        steering_refuses_another_namespaces_socket,
    ),
    ("startup_errors_are_clear", startup_errors_are_clear),
    (
        "node_processes_and_host_network_pods_are_refused",
        hostile::node_processes_and_host_network_pods_are_refused,
    ),
    (
        "stray_descriptors_are_closed_and_refused",
        hostile::stray_descriptors_are_closed_and_refused,
    ),
    (
        "idle_and_flooding_callers_delay_no_pod",
        hostile::idle_and_flooding_callers_delay_no_pod,
    ),
    (
        "blocking_descriptors_do_not_wedge_the_agent",
        hostile::blocking_descriptors_do_not_wedge_the_agent,
    ),
    (
        "a_caller_that_is_gone_is_refused",
        hostile::a_caller_that_is_gone_is_refused,
    ),
    (
        "requests_are_traced_over_otlp",
        traces::requests_are_traced_over_otlp,
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some(roles::APP) => roles::app(&args[2..]),
        Some(roles::SIDECAR) => roles::sidecar(&args[2..]),
        Some(roles::STEER) => roles::steer(&args[2..]),
        Some(attacker::ATTACK) => attacker::attack(&args[2..]),
        // One after the other: the tests share the machine's cgroups and bpffs.
        _ => harness::run(TESTS, Threads::One),
    }
}

// === helpers ===

/// A pod: its cgroups and its network namespace (its own, or shared with another test pod).
/// The agent serves no caller in the node's namespace, so every pod has one.
struct Pod {
    // Dropped after the processes that use them (callers declare processes later).
    cgroup: PodCgroup,
    netns: Rc<Netns>,
}

/// An app process and the address it listens on.
struct App {
    _proc: RoleChild,
    addr: SocketAddr,
}

impl Pod {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            cgroup: PodCgroup::create()?,
            netns: Rc::new(Netns::standalone("agent")?),
        })
    }

    /// A pod in `other`'s network namespace (as two hostNetwork pods would share the node's).
    fn beside(other: &Self) -> anyhow::Result<Self> {
        Ok(Self {
            cgroup: PodCgroup::create()?,
            netns: Rc::clone(&other.netns),
        })
    }

    /// Starts an app listening on `listen` in the pod's app cgroup.
    fn app(&self, listen: &str) -> anyhow::Result<App> {
        let place = Placement {
            cgroup: Some(self.cgroup.app()),
            netns: Some(&self.netns),
            uid: None,
        };
        let mut proc = RoleChild::spawn(roles::APP, &[listen], &place)?;
        let line = proc.line()?;
        let addr = line
            .strip_prefix("LISTENING ")
            .with_context(|| format!("app said {line:?}"))?
            .parse()?;
        Ok(App { _proc: proc, addr })
    }

    /// Starts a sidecar in the pod's sidecar cgroup; returns it with its first line.
    fn sidecar(&self, agent: &Agent, uid: Option<u32>) -> anyhow::Result<(RoleChild, String)> {
        let place = Placement {
            cgroup: Some(self.cgroup.sidecar()),
            netns: Some(&self.netns),
            uid,
        };
        let socket = agent.socket.to_str().context("socket path")?;
        let mut proc = RoleChild::spawn(roles::SIDECAR, &[socket], &place)?;
        let first = proc.line()?;
        Ok((proc, first))
    }

    /// Starts a steering sidecar for the app's `port` (see `roles::steer`); returns it with its
    /// first line.
    fn steer(
        &self,
        agent: &Agent,
        port: u16,
        foreign: Option<&Netns>,
    ) -> anyhow::Result<(RoleChild, String)> {
        let place = Placement {
            cgroup: Some(self.cgroup.sidecar()),
            netns: Some(&self.netns),
            uid: None,
        };
        let socket = agent.socket.to_str().context("socket path")?;
        let port = port.to_string();
        let mut args = vec![socket, &port];
        let foreign = foreign.map(Netns::path);
        if let Some(path) = &foreign {
            args.push(path.to_str().context("netns path")?);
        }
        let mut proc = RoleChild::spawn(roles::STEER, &args, &place)?;
        let first = proc.line()?;
        Ok((proc, first))
    }

    /// Starts a sidecar that must obtain its map.
    fn ready_sidecar(&self, agent: &Agent) -> anyhow::Result<RoleChild> {
        let (proc, first) = self.sidecar(agent, None)?;
        ensure!(
            first.starts_with("ready "),
            "sidecar: {first}\nagent log:\n{}",
            agent.log()
        );
        Ok(proc)
    }
}

/// What the app saw for one connection.
#[derive(Debug)]
struct Seen {
    accept: String,
    peer: String,
    local: String,
}

fn parse_seen(line: &str) -> anyhow::Result<Seen> {
    let mut accept = None;
    let mut peer = None;
    let mut local = None;
    for word in line.split_whitespace() {
        match word.split_once('=') {
            Some(("accept", v)) => accept = Some(v.to_owned()),
            Some(("peer", v)) => peer = Some(v.to_owned()),
            Some(("local", v)) => local = Some(v.to_owned()),
            _ => bail!("unexpected answer from the app: {line:?}"),
        }
    }
    match (accept, peer, local) {
        (Some(accept), Some(peer), Some(local)) => Ok(Seen {
            accept,
            peer,
            local,
        }),
        _ => bail!("incomplete answer from the app: {line:?}"),
    }
}

/// Opens connection `id` from the sidecar to `app` (entry for `client`/`dst` unless `-`), and
/// returns the sidecar's address, the insert status and what the app saw.
fn open(
    sidecar: &mut RoleChild,
    id: &str,
    app: SocketAddr,
    client: &str,
    dst: &str,
    bind: Option<&str>,
) -> anyhow::Result<(String, String, Seen)> {
    let line = sidecar.cmd(&format!(
        "open {id} {app} {client} {dst} {}",
        bind.unwrap_or("")
    ))?;
    let mut words = line.split_whitespace();
    let (Some("ok"), Some(addr), Some(status)) = (words.next(), words.next(), words.next()) else {
        bail!("open {id}: sidecar said {line:?}");
    };
    let seen = ask(sidecar, id)?;
    Ok((addr.to_owned(), status.to_owned(), seen))
}

fn ask(sidecar: &mut RoleChild, id: &str) -> anyhow::Result<Seen> {
    parse_seen(&sidecar.cmd(&format!("ask {id}"))?)
}

/// The app's address as the sidecar connects to it (a wildcard listener via loopback).
fn via(addr: SocketAddr, ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), addr.port())
}

fn expect_seen(seen: &Seen, peer: &str, local: &str) -> anyhow::Result<()> {
    ensure!(
        seen.accept == peer,
        "accept() returned {}, expected {peer} ({seen:?})",
        seen.accept
    );
    ensure!(
        seen.peer == peer,
        "getpeername() returned {}, expected {peer} ({seen:?})",
        seen.peer
    );
    ensure!(
        seen.local == local,
        "getsockname() returned {}, expected {local} ({seen:?})",
        seen.local
    );
    Ok(())
}

// === tests ===

fn v4_client_on_a_v4_listener() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&[])?;
    let pod = Pod::new()?;
    let app = pod.app("127.0.0.1:0")?;
    let mut sidecar = pod.ready_sidecar(&agent)?;

    let (_, status, seen) = open(
        &mut sidecar,
        "1",
        app.addr,
        "203.0.113.7:51234",
        "198.51.100.1:443",
        None,
    )?;
    ensure!(status == "restored", "insert: {status}");
    // getsockname is not attached by default: the app keeps its own address.
    expect_seen(&seen, "203.0.113.7:51234", &app.addr.to_string())?;

    // Without an entry the app sees the real loopback peer.
    let (sidecar_addr, status, seen) = open(&mut sidecar, "2", app.addr, "-", "-", None)?;
    ensure!(status == "none");
    expect_seen(&seen, &sidecar_addr, &app.addr.to_string())
}

fn v6_client_on_a_v6_listener() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&[])?;
    let pod = Pod::new()?;
    let app = pod.app("[::1]:0")?;
    let mut sidecar = pod.ready_sidecar(&agent)?;

    let (_, _, seen) = open(
        &mut sidecar,
        "1",
        app.addr,
        "[2001:db8::7]:40000",
        "[2001:db8::1]:443",
        None,
    )?;
    expect_seen(&seen, "[2001:db8::7]:40000", &app.addr.to_string())?;
    // A v4 client over a v6 loopback connection is shown v4-mapped.
    let (_, _, seen) = open(&mut sidecar, "2", app.addr, "203.0.113.9:1000", "-", None)?;
    expect_seen(&seen, "[::ffff:203.0.113.9]:1000", &app.addr.to_string())?;
    let (sidecar_addr, _, seen) = open(&mut sidecar, "3", app.addr, "-", "-", None)?;
    expect_seen(&seen, &sidecar_addr, &app.addr.to_string())
}

fn v4_client_on_a_dual_stack_listener() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&[])?;
    let pod = Pod::new()?;
    let app = pod.app("[::]:0")?;
    let mut sidecar = pod.ready_sidecar(&agent)?;
    let to = via(app.addr, "127.0.0.1");
    let local = format!("[::ffff:127.0.0.1]:{}", app.addr.port());

    // The accepted socket is AF_INET6 with v4-mapped addresses: getpeername6 runs, and the single
    // entry the sidecar wrote for 127.0.0.1 matches.
    let (_, _, seen) = open(&mut sidecar, "1", to, "203.0.113.7:51234", "-", None)?;
    expect_seen(&seen, "[::ffff:203.0.113.7]:51234", &local)?;
    let (_, _, seen) = open(&mut sidecar, "2", to, "[2001:db8::7]:5", "-", None)?;
    expect_seen(&seen, "[2001:db8::7]:5", &local)?;
    let (sidecar_addr, _, seen) = open(&mut sidecar, "3", to, "-", "-", None)?;
    let real: SocketAddr = sidecar_addr.parse()?;
    expect_seen(
        &seen,
        &format!("[::ffff:{}]:{}", real.ip(), real.port()),
        &local,
    )
}

fn v6_client_cannot_be_shown_to_a_v4_socket() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&[])?;
    let pod = Pod::new()?;
    let app = pod.app("127.0.0.1:0")?;
    let mut sidecar = pod.ready_sidecar(&agent)?;
    // An AF_INET socket cannot hold an IPv6 address: the app sees the real peer, nothing bogus.
    let (sidecar_addr, status, seen) =
        open(&mut sidecar, "1", app.addr, "[2001:db8::7]:1", "-", None)?;
    ensure!(status == "restored");
    expect_seen(&seen, &sidecar_addr, &app.addr.to_string())
}

fn getsockname_shows_the_original_destination() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&["--getsockname"])?;
    let pod = Pod::new()?;
    let v4 = pod.app("127.0.0.1:0")?;
    let dual = pod.app("[::]:0")?;
    let mut sidecar = pod.ready_sidecar(&agent)?;

    let (_, _, seen) = open(
        &mut sidecar,
        "1",
        v4.addr,
        "203.0.113.7:51234",
        "198.51.100.1:443",
        None,
    )?;
    expect_seen(&seen, "203.0.113.7:51234", "198.51.100.1:443")?;
    let to = via(dual.addr, "127.0.0.1");
    let (_, _, seen) = open(
        &mut sidecar,
        "2",
        to,
        "203.0.113.7:51235",
        "198.51.100.1:443",
        None,
    )?;
    expect_seen(
        &seen,
        "[::ffff:203.0.113.7]:51235",
        "[::ffff:198.51.100.1]:443",
    )?;
    // No destination in the entry: the app keeps its own address.
    let (_, _, seen) = open(&mut sidecar, "3", v4.addr, "203.0.113.7:51236", "-", None)?;
    expect_seen(&seen, "203.0.113.7:51236", &v4.addr.to_string())
}

fn removed_entry_shows_the_real_peer_again() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&[])?;
    let pod = Pod::new()?;
    let app = pod.app("127.0.0.1:0")?;
    let mut sidecar = pod.ready_sidecar(&agent)?;
    let (sidecar_addr, _, seen) = open(&mut sidecar, "1", app.addr, "203.0.113.7:1", "-", None)?;
    expect_seen(&seen, "203.0.113.7:1", &app.addr.to_string())?;
    ensure!(sidecar.cmd("forget 1")? == "ok");
    // getpeername() is asked afresh on the same connection (accept's answer is history).
    let seen = ask(&mut sidecar, "1")?;
    ensure!(seen.peer == sidecar_addr, "after remove: {seen:?}");
    ensure!(
        sidecar.cmd("close 1")? == "ok",
        "removing twice is not an error"
    );
    Ok(())
}

fn agent_sigkill_and_restart_keep_restoring() -> anyhow::Result<()> {
    need()?;
    let mut agent = Agent::start(&[])?;
    let pod = Pod::new()?;
    let app = pod.app("127.0.0.1:0")?;
    let mut sidecar = pod.ready_sidecar(&agent)?;
    let local = app.addr.to_string();
    let (_, _, seen) = open(&mut sidecar, "1", app.addr, "203.0.113.7:51234", "-", None)?;
    expect_seen(&seen, "203.0.113.7:51234", &local)?;

    agent.kill();
    // Nothing was detached: the open connection still shows the client, and the sidecar (which
    // holds its map's fd) restores new connections while no agent runs.
    ensure!(
        ask(&mut sidecar, "1")?.peer == "203.0.113.7:51234",
        "after SIGKILL"
    );
    let (_, _, seen) = open(&mut sidecar, "2", app.addr, "203.0.113.8:2", "-", None)?;
    expect_seen(&seen, "203.0.113.8:2", &local)?;

    agent.restart()?;
    ensure!(
        agent.log().contains("re-found pod")
            && agent.log().contains("moved to this agent's program"),
        "the restarted agent did not re-find the pod and take its hooks over:\n{}",
        agent.log()
    );
    ensure!(
        ask(&mut sidecar, "1")?.peer == "203.0.113.7:51234",
        "after restart"
    );
    let (_, _, seen) = open(&mut sidecar, "3", app.addr, "203.0.113.9:3", "-", None)?;
    expect_seen(&seen, "203.0.113.9:3", &local)?;
    // A sidecar started after the restart gets the same pod's map: its entries work, and the
    // connections of the first sidecar are still restored.
    let mut second = pod.ready_sidecar(&agent)?;
    let (_, _, seen) = open(&mut second, "1", app.addr, "203.0.113.10:4", "-", None)?;
    expect_seen(&seen, "203.0.113.10:4", &local)?;
    ensure!(
        ask(&mut sidecar, "2")?.peer == "203.0.113.8:2",
        "first sidecar after a second one"
    );
    Ok(())
}

fn two_pods_never_see_each_other() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&[])?;
    let a = Pod::new()?;
    let b = Pod::new()?;
    // Same app address in both pods, and the sidecars bind the same ports: identical 4-tuples
    // in two namespaces.
    let app_a = a.app("127.0.0.1:8080")?;
    let app_b = b.app("127.0.0.1:8080")?;
    let mut sidecar_a = a.ready_sidecar(&agent)?;
    let mut sidecar_b = b.ready_sidecar(&agent)?;
    let local = "127.0.0.1:8080";

    let (_, _, seen) = open(
        &mut sidecar_a,
        "1",
        app_a.addr,
        "203.0.113.1:1111",
        "-",
        Some("127.0.0.1:40001"),
    )?;
    expect_seen(&seen, "203.0.113.1:1111", local)?;
    let (_, _, seen) = open(
        &mut sidecar_b,
        "1",
        app_b.addr,
        "-",
        "-",
        Some("127.0.0.1:40001"),
    )?;
    expect_seen(&seen, "127.0.0.1:40001", local)?;

    let (_, _, seen) = open(
        &mut sidecar_b,
        "2",
        app_b.addr,
        "203.0.113.2:2222",
        "-",
        Some("127.0.0.1:40002"),
    )?;
    expect_seen(&seen, "203.0.113.2:2222", local)?;
    let (_, _, seen) = open(
        &mut sidecar_a,
        "2",
        app_a.addr,
        "-",
        "-",
        Some("127.0.0.1:40002"),
    )?;
    expect_seen(&seen, "127.0.0.1:40002", local)?;
    // And the first connections still show their own pod's client.
    ensure!(ask(&mut sidecar_a, "1")?.peer == "203.0.113.1:1111");
    ensure!(ask(&mut sidecar_b, "2")?.peer == "203.0.113.2:2222");
    Ok(())
}

fn shared_netns_is_refused_to_a_second_pod() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&[])?;
    let a = Pod::new()?;
    let b = Pod::beside(&a)?;
    let _first = a.ready_sidecar(&agent)?;
    // Pod b shares the network namespace (like host-network pods): handing it a map would let
    // pod a's hooks read pod b's entries, or the other way round.
    let (_second, answer) = b.sidecar(&agent, None)?;
    ensure!(
        answer.starts_with("error ") && answer.contains("refused (conflict)"),
        "second pod in the same netns: {answer}"
    );
    Ok(())
}

fn full_map_is_reported_as_full() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&["--map-max-entries", "2"])?;
    let pod = Pod::new()?;
    let app = pod.app("127.0.0.1:0")?;
    let (mut sidecar, first) = pod.sidecar(&agent, None)?;
    ensure!(first == "ready 2", "sidecar: {first}");
    for (id, client) in [("1", "203.0.113.1:1"), ("2", "203.0.113.2:2")] {
        let (_, status, _) = open(&mut sidecar, id, app.addr, client, "-", None)?;
        ensure!(status == "restored", "{id}: {status}");
    }
    // The third insert fails as Full; the connection is delivered unrestored.
    let (sidecar_addr, status, seen) =
        open(&mut sidecar, "3", app.addr, "203.0.113.3:3", "-", None)?;
    ensure!(status == "full", "third insert: {status}");
    ensure!(seen.peer == sidecar_addr);
    // Room again once a connection is gone.
    ensure!(sidecar.cmd("close 1")? == "ok");
    let (_, status, _) = open(&mut sidecar, "4", app.addr, "203.0.113.4:4", "-", None)?;
    ensure!(status == "restored", "after a removal: {status}");
    Ok(())
}

fn unprivileged_sidecar_uses_its_map() -> anyhow::Result<()> {
    need()?;
    // The socket is root's and the sidecars' group's (0660): nobody's group here.
    let agent = Agent::start(&["--socket-group", "65534"])?;
    let pod = Pod::new()?;
    let app = pod.app("127.0.0.1:0")?;
    // nobody: no CAP_BPF, no capabilities at all; only the fd the agent passed.
    let (mut sidecar, first) = pod.sidecar(&agent, Some(65534))?;
    ensure!(
        first.starts_with("ready "),
        "unprivileged sidecar: {first}\n{}",
        agent.log()
    );
    let (_, status, seen) = open(&mut sidecar, "1", app.addr, "203.0.113.7:51234", "-", None)?;
    ensure!(status == "restored", "unprivileged insert: {status}");
    expect_seen(&seen, "203.0.113.7:51234", &app.addr.to_string())?;
    ensure!(sidecar.cmd("close 1")? == "ok");
    Ok(())
}

fn gone_pods_are_swept() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&["--sweep-interval", "1s"])?;
    let pod = Pod::new()?;
    let pins = {
        let sidecar = pod.ready_sidecar(&agent)?;
        let pods_dir = agent.bpffs_dir.join("pods");
        let pins: Vec<_> = std::fs::read_dir(&pods_dir)?
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(pins.len() == 1, "pins after serving one pod: {pins:?}");
        drop(sidecar);
        pins
    };
    pod.cgroup.remove()?;
    wait_for("the sweep to remove the gone pod's pins", || {
        (!pins[0].exists()).then_some(())
    })
    .with_context(|| agent.log())?;
    ensure!(agent.log().contains("removing pod"), "{}", agent.log());
    Ok(())
}

fn metrics_show_pods_entries_and_requests() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&["--sweep-interval", "1s"])?;
    let before = agent.metrics()?;
    ensure!(before.value("trueip_agent_ready", &[])? == 1.0);
    ensure!(before.value("trueip_agent_pods_served", &[])? == 0.0);

    let pod = Pod::new()?;
    let app = pod.app("127.0.0.1:0")?;
    let mut sidecar = pod.ready_sidecar(&agent)?;
    for (id, client) in [("1", "203.0.113.1:1"), ("2", "203.0.113.2:2")] {
        let (_, status, _) = open(&mut sidecar, id, app.addr, client, "-", None)?;
        ensure!(status == "restored", "insert {id}: {status}");
    }
    let label = format!(
        "/{}",
        pod.cgroup
            .pod()
            .strip_prefix(Cgroup::mount_point()?)?
            .display()
    );
    let pod_label = [("pod", label.as_str())];
    let m = agent.metrics()?;
    ensure!(
        m.value("trueip_agent_pods_served", &[])? == 1.0,
        "{}",
        m.text
    );
    ensure!(
        m.value("trueip_agent_pod_map_entries", &pod_label)? == 2.0,
        "{}",
        m.text
    );
    ensure!(m.value("trueip_agent_pod_map_capacity", &pod_label)? == 16384.0);
    let requests = "trueip_agent_sidecar_requests_total";
    ensure!(
        m.value(requests, &[("request", "get-map"), ("result", "ok")])? == 1.0,
        "{}",
        m.text
    );
    ensure!(m.value(requests, &[("request", "steer"), ("result", "ok")])? == 0.0);
    for program in ["getpeername4", "getpeername6"] {
        ensure!(m.value("trueip_agent_programs_loaded", &[("program", program)])? == 1.0);
    }
    ensure!(m.value("trueip_agent_programs_loaded", &[("program", "sk_lookup")])? == 0.0);
    ensure!(
        m.value(
            "trueip_agent_steered_connections_total",
            &[("outcome", "steered")]
        )? == 0.0
    );

    // Entries are read at scrape time; a gone pod is swept and counted.
    ensure!(sidecar.cmd("close 1")? == "ok");
    let m = agent.metrics()?;
    ensure!(m.value("trueip_agent_pod_map_entries", &pod_label)? == 1.0);
    drop(sidecar);
    drop(app);
    pod.cgroup.remove()?;
    let m = wait_for("the gone pod to be swept", || {
        agent
            .metrics()
            .ok()
            .filter(|m| m.value("trueip_agent_pods_swept_total", &[]).ok() == Some(1.0))
    })
    .with_context(|| agent.log())?;
    ensure!(m.value("trueip_agent_pods_served", &[])? == 0.0);
    ensure!(m.value("trueip_agent_sweeps_total", &[])? >= 1.0);
    ensure!(
        !m.text.contains("trueip_agent_pod_map_entries{"),
        "a swept pod's series stays:\n{}",
        m.text
    );
    Ok(())
}

/// Steering: with the app itself on `0.0.0.0:<port>`, connections from outside the pod reach the
/// sidecar, loopback ones the app; the steering survives an agent restart; a stopped sidecar lets
/// connections through to the app (fail-open, counted and logged); a gone pod's steering is
/// detached.
fn steering_hands_outside_connections_to_the_sidecar() -> anyhow::Result<()> {
    need()?;
    let mut agent = Agent::start(&["--sweep-interval", "1s"])?;
    let pod = Pod::new()?;
    let veth = Veth::create(&pod.netns)?;
    let app = pod.app("0.0.0.0:0")?;
    let port = app.addr.port();
    let outside = SocketAddr::new(veth.pod_ip, port);
    ensure!(
        roles::probe(outside)?.starts_with("accept="),
        "before steering the app answers"
    );
    let (mut sidecar, first) = pod.steer(&agent, port, None)?;
    ensure!(
        first.starts_with("steering "),
        "steer: {first}\nagent log:\n{}",
        agent.log()
    );
    let answer = roles::probe(outside)?;
    ensure!(
        answer.starts_with(&format!(
            "sidecar local=[::ffff:{}]:{port} peer=[::ffff:{}]:",
            veth.pod_ip, veth.host_ip
        )),
        "from outside the pod the sidecar answers: {answer}\nagent log:\n{}",
        agent.log()
    );
    for inside in [
        SocketAddr::new(veth.pod_ip, port),
        via(app.addr, "127.0.0.1"),
    ] {
        let answer = sidecar.cmd(&format!("probe {inside}"))?;
        ensure!(
            answer.starts_with("accept="),
            "from inside the pod ({inside}) the app answers: {answer}"
        );
    }

    // The counters live in the pinned maps: what was steered before the restart still counts
    // after it. Compared before any new connection, because the program counts lookups: a
    // segment of a closed connection arriving late is looked up (and counted) again.
    let before = steered(&agent.metrics()?, "steered")?;
    ensure!(before >= 1.0, "steered before the restart: {before}");
    agent.kill();
    agent.restart()?;
    wait_for(
        "the restarted agent to report the steered count from before",
        || {
            let m = agent.metrics().ok()?;
            (steered(&m, "steered").ok()? == before).then_some(())
        },
    )
    .with_context(|| format!("steered before the restart: {before}\n{}", agent.log()))?;
    let answer = roles::probe(outside)?;
    ensure!(
        answer.starts_with("sidecar "),
        "after an agent restart: {answer}"
    );

    drop(sidecar);
    let answer = roles::probe(outside)?;
    ensure!(
        answer.starts_with(&format!("accept={}:", veth.host_ip)),
        "with the sidecar gone the app answers (fail-open): {answer}"
    );
    wait_for("the agent to report the fall-through", || {
        agent
            .log()
            .contains("found no sidecar listener")
            .then_some(())
    })
    .with_context(|| agent.log())?;
    let m = agent.metrics()?;
    ensure!(
        steered(&m, "steered")? > before && steered(&m, "fell_through")? >= 1.0,
        "steering counters:\n{}",
        m.text
    );
    ensure!(m.value("trueip_agent_programs_loaded", &[("program", "sk_lookup")])? == 1.0);

    let pod_dirs: Vec<_> = std::fs::read_dir(agent.bpffs_dir.join("pods"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    ensure!(
        pod_dirs.len() == 1
            && std::fs::read_dir(&pod_dirs[0])?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("steer-")),
        "steering pins: {pod_dirs:?}"
    );
    let (sidecar, first) = pod.steer(&agent, port, None)?;
    ensure!(first.starts_with("steering "), "steer again: {first}");
    ensure!(
        roles::probe(outside)?.starts_with("sidecar "),
        "a new sidecar is steered to"
    );
    let counted = agent.metrics()?;
    let counted = [
        steered(&counted, "steered")?,
        steered(&counted, "fell_through")?,
    ];
    ensure!(
        counted[0] >= 3.0 && counted[1] >= 1.0,
        "three connections steered, one fell through: {counted:?}"
    );
    drop(sidecar);
    drop(app);
    pod.cgroup.remove()?;
    wait_for("the sweep to remove the gone pod's pins", || {
        (!pod_dirs[0].exists()).then_some(())
    })
    .with_context(|| agent.log())?;
    // A swept pod's connections stay counted: the counters never go down.
    let m = agent.metrics()?;
    ensure!(
        steered(&m, "steered")? >= counted[0] && steered(&m, "fell_through")? >= counted[1],
        "steering counters after the sweep, {counted:?} before it:\n{}",
        m.text
    );
    ensure!(m.value("trueip_agent_programs_loaded", &[("program", "sk_lookup")])? == 0.0);
    Ok(())
}

/// `trueip_agent_steered_connections_total` for one outcome.
fn steered(m: &Metrics, outcome: &str) -> anyhow::Result<f64> {
    m.value(
        "trueip_agent_steered_connections_total",
        &[("outcome", outcome)],
    )
}

/// With `--steer-when-gone closed`, a steered port whose sidecar is gone refuses connections
/// instead of letting them reach the app without the sidecar.
fn steering_fails_closed_when_configured() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&["--steer-when-gone", "closed"])?;
    let pod = Pod::new()?;
    let veth = Veth::create(&pod.netns)?;
    let app = pod.app("0.0.0.0:0")?;
    let outside = SocketAddr::new(veth.pod_ip, app.addr.port());
    let (mut sidecar, first) = pod.steer(&agent, app.addr.port(), None)?;
    ensure!(
        first.starts_with("steering "),
        "steer: {first}\n{}",
        agent.log()
    );
    ensure!(roles::probe(outside)?.starts_with("sidecar "));
    let inside = sidecar.cmd(&format!("probe {}", via(app.addr, "127.0.0.1")))?;
    ensure!(
        inside.starts_with("accept="),
        "loopback still reaches the app: {inside}"
    );
    drop(sidecar);
    let refused = roles::probe(outside);
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("refused")),
        "with the sidecar gone and fail-closed: {refused:?}"
    );
    Ok(())
}

/// A caller can only steer with a socket of its own network namespace: a listener from another
/// namespace (here: the host's) is refused, and nothing is attached.
fn steering_refuses_another_namespaces_socket() -> anyhow::Result<()> {
    need()?;
    let agent = Agent::start(&[])?;
    let pod = Pod::new()?;
    let other = Netns::standalone("agent")?;
    let (_sidecar, first) = pod.steer(&agent, 8080, Some(&other))?;
    ensure!(
        first.starts_with("error ") && first.contains("another network namespace"),
        "steer with a foreign socket: {first}\nagent log:\n{}",
        agent.log()
    );
    Ok(())
}

fn startup_errors_are_clear() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        // Without root the agent must say so, before anything else.
        let out = std::process::Command::new(support::AGENT_BIN).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("must run as root"),
            "{stderr}"
        );
        return Ok(());
    }
    need()?;
    let tmp = tempfile::tempdir()?;
    let not_bpffs = tmp.path().join("pins");
    let out = std::process::Command::new(support::AGENT_BIN)
        .arg("--bpffs-dir")
        .arg(&not_bpffs)
        .arg("--socket")
        .arg(tmp.path().join("agent.sock"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "the agent started on a non-bpffs directory"
    );
    ensure!(
        stderr.contains("not on a BPF filesystem") && stderr.contains("mount -t bpf"),
        "{stderr}"
    );
    ensure!(!stderr.contains("panicked"), "{stderr}");

    let out = std::process::Command::new(support::AGENT_BIN)
        .args(["--cgroup-root"])
        .arg(tmp.path())
        .arg("--bpffs-dir")
        .arg(tmp.path().join("never-created"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success());
    ensure!(stderr.contains("no cgroup v2 filesystem"), "{stderr}");
    Ok(())
}
