//! The eBPF restore mode end to end: HAProxy `send-proxy-v2` → `trueip-sidecar --mode ebpf` →
//! unmodified apps whose own `accept()` / `getpeername()` return the client, with
//! `trueip-agent` on the host and the sidecar and the app in the pod's cgroup v2.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use trueip_interop_tests::{
    Family, Topology,
    agent::Agent,
    app::{Conn, EchoApp, exchange},
    curl,
    haproxy::{self, Route, SendProxy},
    nginx::{self, Nginx, logged_remote_addr},
    sidecar,
};
use trueip_test_kit::{Cgroup, Need, Netns, Proc, prereq::require};

use crate::{LB_PORT, SIDECAR_PORT, TIMEOUT, lb_addr};

/// The echo app's port, on both loopback addresses.
const APP_PORT: u16 = 9000;

/// Connections per pod and family held open at once in the isolation test.
const ROUNDS: usize = 4;

/// What every test here needs.
const NEEDS: [Need; 3] = [Need::Haproxy, Need::Sidecar, Need::Agent];

/// A pod as the eBPF path sees it: its namespace and cgroup, its address, and the address the
/// load balancer connects from.
#[derive(Clone, Copy)]
struct Pod<'a> {
    netns: &'a Netns,
    cgroup: &'a Cgroup,
    addr: fn(Family) -> IpAddr,
    lb: fn(Family) -> IpAddr,
}

impl<'a> Pod<'a> {
    /// The first pod of `topo`.
    fn first(topo: &'a Topology, cgroup: &'a Cgroup) -> Self {
        Self {
            netns: &topo.pod,
            cgroup,
            addr: Family::pod,
            lb: Family::lb_back,
        }
    }

    /// Both families: an `--mode ebpf` sidecar in the pod and its cgroup, on `<pod>:8080`,
    /// forwarding to the app on `<loopback>:app_port`; and the HAProxy `send-proxy-v2` routes
    /// from `<LB>:lb_port` to them. The sidecars must stay alive.
    fn ebpf_path(
        &self,
        topo: &Topology,
        agent: &Agent,
        app_port: u16,
        lb_port: u16,
    ) -> Result<(Vec<Proc>, Vec<Route>)> {
        let mut sidecars = Vec::new();
        let mut routes = Vec::new();
        for family in Family::BOTH {
            let listen = SocketAddr::new((self.addr)(family), SIDECAR_PORT);
            let upstream = SocketAddr::new(family.loopback(), app_port);
            let len = if family == Family::V4 { 32 } else { 128 };
            let trusted = format!("{}/{len}", (self.lb)(family));
            let name = format!("sidecar-{}-{family}", self.netns.name());
            let launch = sidecar::launch(&name, listen, upstream, "ebpf", &[&trusted])?
                .args(["--agent-socket".as_ref(), agent.socket().as_os_str()])
                .cgroup(self.cgroup);
            sidecars.push(sidecar::start(topo, self.netns, launch, listen)?);
            routes.push(Route {
                bind: SocketAddr::new(family.lb_front(), lb_port),
                server: listen,
                send_proxy: SendProxy::V2,
            });
        }
        Ok((sidecars, routes))
    }
}

/// The first pod's eBPF path and HAProxy in front; returns what must stay alive.
fn ebpf_path(topo: &Topology, cgroup: &Cgroup, agent: &Agent, app_port: u16) -> Result<Vec<Proc>> {
    let (mut procs, routes) = Pod::first(topo, cgroup).ebpf_path(topo, agent, app_port, LB_PORT)?;
    procs.push(haproxy::start(topo, &routes)?);
    Ok(procs)
}

fn app_addrs() -> [SocketAddr; 2] {
    Family::BOTH.map(|family| SocketAddr::new(family.loopback(), APP_PORT))
}

/// The app's `accept()` and `getpeername()` both return the client's address and port —
/// never the load balancer's or the sidecar's — over IPv4 and IPv6.
pub(crate) fn ebpf_mode_accept_and_getpeername_return_the_client() -> Result<()> {
    require(&NEEDS)?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let mut app = EchoApp::start(&topo, &topo.pod, &app_addrs(), Some(&cgroup))?;
    let agent = Agent::start(&topo)?;
    let _path = ebpf_path(&topo, &cgroup, &agent, APP_PORT)?;

    for (i, family) in Family::BOTH.into_iter().enumerate() {
        let reply = exchange(&topo.client, lb_addr(family), b"who am I?")?;
        ensure!(reply.bytes == b"who am I?", "{family}: echo {reply:?}");
        let served = app.wait_served(i + 1, TIMEOUT)?;
        let got = &served[i];
        ensure!(
            got.accept == Some(reply.local) && got.getpeername == Some(reply.local),
            "{family}: the client is {}, the app saw {got:?}\nagent:\n{}",
            reply.local,
            agent.log_tail()
        );
    }
    Ok(())
}

/// nginx's stock `combined` log (`$remote_addr`) shows the client, IPv4 and IPv6.
pub(crate) fn ebpf_mode_nginx_default_log_shows_the_client() -> Result<()> {
    require(&[NEEDS.as_slice(), &[Need::Nginx, Need::Curl]].concat())?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let nginx = Nginx::start(&topo, Some(&cgroup))?;
    let agent = Agent::start(&topo)?;
    let _path = ebpf_path(&topo, &cgroup, &agent, nginx::PLAIN_PORT)?;

    for family in Family::BOTH {
        let path = format!("/ebpf-{family}");
        let response = curl::get(&topo.client, lb_addr(family), &path, false)?;
        ensure!(response.is_ok(), "{family}: {response:?}");
        let line = nginx.access_line(&path)?;
        ensure!(
            logged_remote_addr(&line) == Some(family.client()),
            "{family}: expected nginx to log the client {}: {line}",
            family.client()
        );
    }
    Ok(())
}

/// A sidecar killed (SIGKILL, OOM) with a connection open leaves that connection's entry in the
/// pod's map; the sidecar that replaces it removes such entries before it listens, so a new
/// loopback connection that reuses the 4-tuple can never show the app a previous client.
pub(crate) fn ebpf_mode_a_restarted_sidecar_clears_what_a_killed_one_left() -> Result<()> {
    require(&NEEDS)?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let mut app = EchoApp::start(&topo, &topo.pod, &app_addrs(), Some(&cgroup))?;
    let agent = Agent::start(&topo)?;
    let pod = Pod::first(&topo, &cgroup);
    let (mut sidecars, routes) = pod.ebpf_path(&topo, &agent, APP_PORT, LB_PORT)?;
    let _lb = haproxy::start(&topo, &routes)?;

    let open = Conn::open(&topo.client, lb_addr(Family::V4))?;
    app.wait_accepted(1, TIMEOUT)?;
    ensure!(
        agent.restore_entries()? == 1,
        "one open restored connection"
    );
    for sidecar in &mut sidecars {
        sidecar.kill();
    }
    drop(open);
    ensure!(
        agent.restore_entries()? == 1,
        "a killed sidecar's entry stays behind (nothing ran its clean-up)"
    );

    let (replacements, _) = pod.ebpf_path(&topo, &agent, APP_PORT, LB_PORT)?;
    ensure!(
        agent.restore_entries()? == 0,
        "the new sidecar left its predecessor's entry in the map\nsidecar:\n{}",
        replacements[0].log_tail()
    );
    ensure!(
        replacements[0]
            .log()
            .contains("removed entries a previous sidecar of this pod left"),
        "the new sidecar did not say what it removed:\n{}",
        replacements[0].log_tail()
    );
    let reply = exchange(&topo.client, lb_addr(Family::V4), b"after the restart")?;
    ensure!(reply.bytes == b"after the restart");
    Ok(())
}

/// The agent is killed and restarted while a connection is open: that connection keeps its
/// restored address to the end, and a new one is restored too.
pub(crate) fn ebpf_mode_keeps_restoring_across_an_agent_restart() -> Result<()> {
    require(&NEEDS)?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let mut app = EchoApp::start(&topo, &topo.pod, &app_addrs(), Some(&cgroup))?;
    let mut agent = Agent::start(&topo)?;
    let _path = ebpf_path(&topo, &cgroup, &agent, APP_PORT)?;

    let open = Conn::open(&topo.client, lb_addr(Family::V4))?;
    let accepted = app.wait_accepted(1, TIMEOUT)?;
    agent.restart(&topo).context("restarting the agent")?;

    let fresh = exchange(&topo.client, lb_addr(Family::V4), b"after the restart")?;
    let old = open.finish(b"before the restart")?;
    let served = app.wait_served(2, TIMEOUT)?;
    let find = |local| {
        served
            .iter()
            .find(|s| s.bytes > 0 && s.getpeername == Some(local))
    };
    ensure!(
        accepted[0].accept == Some(old.local),
        "before the restart the app saw {:?}, the client is {}",
        accepted[0],
        old.local
    );
    ensure!(
        find(old.local).is_some(),
        "the open connection lost its client {} across the restart: {served:?}",
        old.local
    );
    ensure!(
        find(fresh.local).is_some(),
        "the connection after the restart was not restored to {}: {served:?}",
        fresh.local
    );
    Ok(())
}

/// The pod's ephemeral port range for the churn test: 128 ports instead of Linux's 28 232.
const SMALL_PORT_RANGE: (u16, u16) = (40000, 40127);

/// Connections in the churn test: three times the small range.
const CHURN: usize = 384;

/// The pace of the churn test. A TIME_WAIT 4-tuple may be reused for a new connection once it
/// is a second old (`net.ipv4.tcp_tw_reuse_delay`), so 128 ports last 1.28 s at this pace: the
/// rate of a pod with the default range taking 22 000 connections per second.
const CHURN_PACE: Duration = Duration::from_millis(10);

/// Short connections go on being restored after the pod's whole ephemeral port range has gone
/// through TIME_WAIT. The sidecar passes the client's FIN on to the app first, so its loopback
/// sockets are the ones left in TIME_WAIT (for 60 s); a sidecar binding port 0 before connect
/// finds no free port once they fill the range, and drops connections.
pub(crate) fn ebpf_mode_survives_a_port_range_full_of_time_wait() -> Result<()> {
    require(&NEEDS)?;
    let topo = Topology::new()?;
    let (low, high) = SMALL_PORT_RANGE;
    let status = topo
        .pod
        .command("sysctl")
        .args(["-qw", &format!("net.ipv4.ip_local_port_range={low} {high}")])
        .status()
        .context("running sysctl in the pod")?;
    ensure!(status.success(), "sysctl ip_local_port_range: {status}");
    let cgroup = Cgroup::create()?;
    let mut app = EchoApp::start(&topo, &topo.pod, &app_addrs(), Some(&cgroup))?;
    let agent = Agent::start(&topo)?;
    let _path = ebpf_path(&topo, &cgroup, &agent, APP_PORT)?;

    let start = Instant::now();
    let mut clients = HashSet::new();
    for (i, due) in (0..CHURN).zip((0u32..).map(|n| start + CHURN_PACE * n)) {
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let reply = exchange(&topo.client, lb_addr(Family::V4), b"churn")
            .with_context(|| format!("connection {i} of {CHURN}\nagent:\n{}", agent.log_tail()))?;
        ensure!(
            reply.bytes == b"churn" && !reply.reset,
            "connection {i} of {CHURN}: {reply:?}"
        );
        clients.insert(reply.local);
    }
    let served = app.wait_served(CHURN, TIMEOUT)?;
    let unrestored: Vec<_> = served
        .iter()
        .filter(|s| !s.getpeername.is_some_and(|p| clients.contains(&p)))
        .collect();
    ensure!(
        unrestored.is_empty(),
        "{} of {CHURN} connections were not restored to their client: {:?}",
        unrestored.len(),
        unrestored.first()
    );
    let ss = topo
        .pod
        .command("ss")
        .args(["-Htan", "state", "time-wait"])
        .output()
        .context("running ss in the pod")?;
    let time_wait = String::from_utf8_lossy(&ss.stdout).lines().count();
    ensure!(
        time_wait > usize::from(high - low),
        "only {time_wait} sockets in TIME_WAIT: the range was never full, so this proves nothing"
    );
    Ok(())
}

/// Two pods — each with its own namespace, cgroup, sidecar and app — served by one agent take
/// interleaved connections, all open at once: each app's `accept()` and `getpeername()` return
/// exactly its own clients, never the other pod's.
pub(crate) fn ebpf_mode_two_pods_never_see_each_others_clients() -> Result<()> {
    require(&NEEDS)?;
    let topo = Topology::with_two_pods()?;
    let cgroups = [Cgroup::create()?, Cgroup::create()?];
    let pods = [
        Pod::first(&topo, &cgroups[0]),
        Pod {
            netns: topo.pod2()?,
            cgroup: &cgroups[1],
            addr: Family::pod2,
            lb: Family::lb_back2,
        },
    ];
    let mut apps = pods
        .iter()
        .map(|pod| EchoApp::start(&topo, pod.netns, &app_addrs(), Some(pod.cgroup)))
        .collect::<Result<Vec<_>>>()?;
    let agent = Agent::start(&topo)?;
    let mut procs = Vec::new();
    let mut routes = Vec::new();
    for (pod, lb_port) in pods.iter().zip(LB_PORT..) {
        let (sidecars, pod_routes) = pod.ebpf_path(&topo, &agent, APP_PORT, lb_port)?;
        procs.extend(sidecars);
        routes.extend(pod_routes);
    }
    procs.push(haproxy::start(&topo, &routes)?);

    let mut open: [Vec<Conn>; 2] = Default::default();
    for _ in 0..ROUNDS {
        for family in Family::BOTH {
            for (conns, lb_port) in open.iter_mut().zip(LB_PORT..) {
                let lb = SocketAddr::new(family.lb_front(), lb_port);
                conns.push(Conn::open(&topo.client, lb)?);
            }
        }
    }
    for (i, (conns, app)) in open.into_iter().zip(&mut apps).enumerate() {
        let mut clients = conns
            .into_iter()
            .map(|conn| conn.finish(b"isolated").map(|reply| reply.local))
            .collect::<Result<Vec<_>>>()?;
        let served = app.wait_served(clients.len(), TIMEOUT)?;
        let mut accepted: Vec<_> = served.iter().filter_map(|s| s.accept).collect();
        let mut peers: Vec<_> = served.iter().filter_map(|s| s.getpeername).collect();
        clients.sort_unstable();
        accepted.sort_unstable();
        peers.sort_unstable();
        ensure!(
            accepted == clients && peers == clients,
            "pod {i}: its clients were {clients:?}, accept() returned {accepted:?}, \
             getpeername() {peers:?}"
        );
    }
    Ok(())
}
