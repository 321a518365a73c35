//! The runner (`trueip-bench`, run by `make bench` as root): builds the namespaces, starts the
//! app, then for every repetition runs every variant in turn (rotating the order), each through
//! the same workloads, and writes `RESULTS.md` and the plot.

pub mod machine;
mod plan;
pub mod plot;
pub mod report;
mod results;
pub mod variant;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use trueip_interop_tests::{Topology, agent::Agent};
use trueip_test_kit::{Cgroup, Launch, Need, Proc, prereq};

use crate::{
    loadgen::{self, BulkResult, ConnResult, IdleResult, RrResult},
    procfs,
    udp::UdpResult,
    wire::AppStats,
};
pub use plan::{Layout, Pins, Plan};
pub use results::{Results, Samples, idle_label};
pub use variant::Variant;
use variant::{APP_PORT, EBPF_APP_PORT, Ebpf, Hop, Programs, STEERED_APP_PORTS};

/// Environment variable that selects the quick mode (`make bench BENCH_QUICK=1`).
pub const QUICK_ENV: &str = "BENCH_QUICK";

/// How long the app gets to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Settling time after a hop starts or connections close, before memory is read.
const SETTLE: Duration = Duration::from_millis(300);

/// Head room over a workload's own duration before its load generator is killed.
const LOADGEN_SLACK: Duration = Duration::from_secs(60);

/// The programs the run needs.
#[derive(Debug)]
struct Bins {
    loadgen: PathBuf,
    app: PathBuf,
}

/// Descriptors per relayed connection of the hungriest hop: `trueip-sidecar` holds two sockets
/// and two splice pipes (four descriptors) per connection.
const HOP_FDS_PER_CONN: u64 = 6;

/// Lowers idle connection counts the open-file limit cannot hold, and says so.
fn cap_idle(plan: &mut Plan) {
    let limit = crate::fds::fd_limit();
    let cap = usize::try_from((limit.saturating_sub(1000) / HOP_FDS_PER_CONN) / 500 * 500)
        .unwrap_or(usize::MAX)
        .max(100);
    let wanted = plan.idle.clone();
    for n in &mut plan.idle {
        *n = (*n).min(cap);
    }
    plan.idle.dedup();
    if plan.idle != wanted {
        plan.caveats.push(format!(
            "Idle counts {wanted:?} lowered to {:?}: the hard open-file limit here is {limit} and \
             cannot be raised (no CAP_SYS_RESOURCE in this sandbox), while a trueip-sidecar \
             connection takes {HOP_FDS_PER_CONN} descriptors (2 sockets + 2 splice pipes; \
             HAProxy and nginx take 2). With `ulimit -Hn` ≥ 61 000 the run uses 10 000.",
            plan.idle
        ));
    }
}

/// Runs `plan` and returns the results. Needs root.
pub fn run(mut plan: Plan) -> Result<Results> {
    let started = Instant::now();
    let load_before = machine::load_average();
    if let Some(reason) = prereq::missing(&[Need::Haproxy, Need::Nginx]) {
        bail!("cannot run the benchmark: {reason}");
    }
    crate::fds::raise_fd_limit_hard();
    cap_idle(&mut plan);
    let bins = Bins {
        loadgen: prereq::trueip_binary("trueip-loadgen")?,
        app: prereq::trueip_binary("trueip-bench-app")?,
    };
    let programs = Programs {
        sidecar: match &plan.sidecar {
            Some(path) if path.is_file() => Ok(path.clone()),
            Some(path) => Err(format!("{} does not exist", path.display())),
            None => prereq::trueip_binary("trueip-sidecar").map_err(|e| format!("{e:#}")),
        },
        image_sidecar: image_sidecar(plan.image_sidecar.as_deref())?,
        pin: plan.pin.hop.clone(),
        sidecar_args: plan.sidecar_args.clone(),
        sidecar_env: plan.sidecar_env.clone(),
    };
    if plan.variants.contains(&Variant::TrueipChart) {
        plan.caveats.push(match &programs.image_sidecar {
            Some(image) => format!(
                "`{}` ran the image's static musl binary `{}`; every other trueip row the \
                 glibc build",
                Variant::TrueipChart.label(),
                image.display()
            ),
            None => format!(
                "`{}` ran the glibc build like the other rows: the image's musl build was not \
                 found (`make bench` builds it)",
                Variant::TrueipChart.label()
            ),
        });
    }
    let topo = Topology::new().context("building the namespaces")?;
    tune(&topo)?;
    let mut app = start_app(&topo, &bins, &plan, None, APP_PORT, "app")?;

    let mut samples = initial_samples(&plan, &programs);
    // The eBPF pieces live for the whole run; without them the rows say why.
    let (ebpf, ebpf_apps) = ebpf_if_wanted(&topo, &bins, &plan, &mut samples);
    let ctx = Ctx {
        topo: &topo,
        bins: &bins,
        programs: &programs,
        ebpf: ebpf.as_ref(),
        plan: &plan,
    };
    ctx.measure_all(&mut samples, &mut app)?;
    // Sanity checks from the app's own counters.
    check_app(&topo, APP_PORT, &mut samples, &plan);
    if ebpf.is_some() {
        check_ebpf(&topo, &mut samples);
    }
    drop(ebpf_apps);
    drop(ebpf);
    drop(app);
    Ok(Results {
        variants: plan
            .variants
            .iter()
            .map(|v| (*v, samples.remove(v).unwrap_or_default()))
            .collect(),
        plan,
        machine: machine_running(&programs),
        wall_secs: started.elapsed().as_secs_f64(),
        load_before,
        load_after: Some(machine::load_average()),
    })
}

/// The chart-defaults row's binary: `given`, or the image's musl build beside this binary's
/// target directory (`target/x86_64-unknown-linux-musl/release/`) when it was built.
fn image_sidecar(given: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(path) = given {
        anyhow::ensure!(
            path.is_file(),
            "--image-sidecar {} does not exist",
            path.display()
        );
        return Ok(Some(path.to_owned()));
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let built = exe
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("x86_64-unknown-linux-musl/release/trueip-sidecar"));
    Ok(built.filter(|p| p.is_file()))
}

/// An empty sample set per planned variant; the variants whose programs are missing are
/// marked skipped, with why.
fn initial_samples(plan: &Plan, programs: &Programs) -> BTreeMap<Variant, Samples> {
    let mut samples: BTreeMap<Variant, Samples> = plan
        .variants
        .iter()
        .map(|v| (*v, Samples::default()))
        .collect();
    if prereq::find_program("socat").is_none()
        && let Some(s) = samples.get_mut(&Variant::Socat)
    {
        s.skipped = Some("`socat` not found (run scripts/setup.sh)".into());
    }
    if plan.layout == Layout::Loopback {
        for v in [Variant::TrueipEbpfSteering, Variant::TrueipEbpfSkMsg] {
            if let Some(s) = samples.get_mut(&v) {
                s.skipped = Some(
                    "steering hands over connections from outside the pod only; in the loopback \
                     layout the load generator is inside it"
                        .into(),
                );
            }
        }
    }
    if let Err(e) = &programs.sidecar {
        for v in [
            Variant::TrueipNone,
            Variant::TrueipProxyV1,
            Variant::TrueipEbpf,
            Variant::TrueipMetrics,
            Variant::TrueipTraces,
            Variant::TrueipChart,
            Variant::TrueipTransparent,
            Variant::TrueipHttp,
            Variant::TrueipEbpfSteering,
            Variant::TrueipEbpfSkMsg,
        ] {
            if let Some(s) = samples.get_mut(&v) {
                s.skipped = Some(e.clone());
            }
        }
    }
    samples
}

/// The agent and the eBPF apps, when an eBPF variant is to run; if they cannot start, every
/// eBPF variant is marked skipped with why.
fn ebpf_if_wanted(
    topo: &Topology,
    bins: &Bins,
    plan: &Plan,
    samples: &mut BTreeMap<Variant, Samples>,
) -> (Option<Ebpf>, Vec<Proc>) {
    if !samples
        .iter()
        .any(|(v, s)| v.is_ebpf() && s.skipped.is_none())
    {
        return (None, Vec::new());
    }
    match start_ebpf(topo, bins, plan) {
        Ok((e, apps)) => (Some(e), apps),
        Err(e) => {
            for (_, s) in samples.iter_mut().filter(|(v, _)| v.is_ebpf()) {
                s.skipped = Some(format!("{e:#}"));
            }
            (None, Vec::new())
        }
    }
}

/// The machine, with the version of the sidecar that ran.
fn machine_running(programs: &Programs) -> machine::Machine {
    let mut machine = machine::Machine::read();
    if let Ok(path) = &programs.sidecar {
        let version = Command::new(path)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        machine
            .versions
            .push(format!("{version} (`{}`)", path.display()));
    }
    machine
}

/// Progress on stderr.
fn log(line: &str) {
    trueip_test_kit::run::note(&format!("[bench] {line}"));
}

/// Sysctls of the namespaces we own: the client reuses TIME_WAIT ports (tens of thousands of
/// short connections) and all namespaces get a wide ephemeral port range.
fn tune(topo: &Topology) -> Result<()> {
    for (ns, key, value) in [
        (&topo.client, "ipv4/tcp_tw_reuse", "1"),
        (&topo.client, "ipv4/ip_local_port_range", "10000 65000"),
        (&topo.pod, "ipv4/tcp_tw_reuse", "1"),
        (&topo.pod, "ipv4/ip_local_port_range", "10000 65000"),
        (&topo.pod, "core/somaxconn", "8192"),
    ] {
        let path = format!("/proc/sys/net/{key}");
        ns.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("setting {path} = {value} in {}", ns.name()))?;
    }
    Ok(())
}

/// A launch behind `taskset -c cpus` when given.
fn pinned<'a>(name: &str, program: &Path, cpus: Option<&String>) -> Launch<'a> {
    match cpus {
        Some(cpus) => Launch::new(name, "taskset")
            .args(["-c", cpus])
            .args([program]),
        None => Launch::new(name, program),
    }
}

/// Starts an app instance in the pod namespace: on `0.0.0.0:port` outside any cgroup, or on
/// `127.0.0.1:port` inside `cgroup`.
fn start_app(
    topo: &Topology,
    bins: &Bins,
    plan: &Plan,
    cgroup: Option<&Cgroup>,
    port: u16,
    name: &str,
) -> Result<Proc> {
    let ip = if cgroup.is_some() {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    start_app_at(
        topo,
        bins,
        plan,
        cgroup,
        SocketAddr::new(IpAddr::V4(ip), port),
        name,
    )
}

/// Starts an app instance listening on `addr` (in `cgroup`, if given).
fn start_app_at(
    topo: &Topology,
    bins: &Bins,
    plan: &Plan,
    cgroup: Option<&Cgroup>,
    addr: SocketAddr,
    name: &str,
) -> Result<Proc> {
    let mut launch = pinned(name, &bins.app, plan.pin.app.as_ref())
        .args(["--listen".to_owned(), addr.to_string()])
        .netns(&topo.pod);
    if cgroup.is_none() {
        launch = launch.args(["--otlp-sink", variant::OTLP_SINK]);
    }
    if let Some(cg) = cgroup {
        launch = launch.cgroup(cg);
    }
    let mut proc = launch.spawn(topo.dir())?;
    proc.wait_listening(&topo.pod, addr, START_TIMEOUT)?;
    Ok(proc)
}

/// The agent, the cgroup and the apps inside it (the eBPF variant's on loopback, the steering
/// variants' on their own ports), or why the eBPF variants cannot run.
fn start_ebpf(topo: &Topology, bins: &Bins, plan: &Plan) -> Result<(Ebpf, Vec<Proc>)> {
    if let Some(reason) = prereq::missing(&[Need::Agent]) {
        bail!("not run: {reason}");
    }
    let cgroup = Cgroup::create().context("not run: creating a cgroup v2")?;
    let mut apps = vec![start_app(
        topo,
        bins,
        plan,
        Some(&cgroup),
        EBPF_APP_PORT,
        "app-ebpf",
    )?];
    for port in STEERED_APP_PORTS {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        apps.push(start_app_at(
            topo,
            bins,
            plan,
            Some(&cgroup),
            addr,
            &format!("app-steered-{port}"),
        )?);
    }
    let agent = Agent::start(topo).context("not run: trueip-agent did not start")?;
    Ok((Ebpf { agent, cgroup }, apps))
}

/// Asks an app instance for its counters from inside the pod namespace.
fn app_stats(topo: &Topology, port: u16) -> Result<AppStats> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    topo.pod
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(loadgen::app_stats(addr))
        })?
        .with_context(|| format!("asking the app on port {port} for its counters"))
}

/// The main app: the proxy-v1 variant's lines arrived, and nothing failed.
fn check_app(topo: &Topology, port: u16, samples: &mut BTreeMap<Variant, Samples>, plan: &Plan) {
    match app_stats(topo, port) {
        Ok(stats) => {
            log(&format!("app counters: {stats:?}"));
            if let Some(s) = samples.get_mut(&Variant::TrueipProxyV1)
                && s.skipped.is_none()
                && plan.variants.contains(&Variant::TrueipProxyV1)
            {
                s.note(format!(
                    "the app skipped {} PROXY v1 lines re-emitted by the sidecar",
                    stats.v1_headers
                ));
            }
            if stats.http_forwarded > 0
                && let Some(s) = samples.get_mut(&Variant::TrueipHttp)
                && s.skipped.is_none()
            {
                s.note(format!(
                    "the app saw the client's address in X-Forwarded-For on {} of {} HTTP requests (trueip http and nginx http write it)",
                    stats.http_forwarded, stats.http_requests
                ));
            }
            if stats.errors > 0
                && let Some(s) = samples.get_mut(&Variant::Direct)
            {
                s.note(format!(
                    "app: {} connections (all variants but eBPF) ended with an error",
                    stats.errors
                ));
            }
        }
        Err(e) => log(&format!("{e:#}")),
    }
}

/// Each eBPF app's `accept()` returned the client on every connection.
fn check_ebpf(topo: &Topology, samples: &mut BTreeMap<Variant, Samples>) {
    for (variant, port) in [
        (Variant::TrueipEbpf, EBPF_APP_PORT),
        (Variant::TrueipEbpfSteering, STEERED_APP_PORTS[0]),
        (Variant::TrueipEbpfSkMsg, STEERED_APP_PORTS[1]),
    ] {
        if let Some(s) = samples.get_mut(&variant) {
            check_ebpf_app(topo, port, s);
        }
    }
}

/// One eBPF app's `accept()` returned the client on every connection.
fn check_ebpf_app(topo: &Topology, port: u16, s: &mut Samples) {
    match app_stats(topo, port) {
        Ok(st) if st.connections > 0 && st.loopback_peers == 0 => s.note(format!(
            "restoration checked: all {} connections the app accepted had the client's address as peer",
            st.connections
        )),
        Ok(st) => s.note(format!(
            "restoration NOT complete: {} of {} connections showed a loopback peer",
            st.loopback_peers, st.connections
        )),
        Err(e) => s.note(format!("could not check restoration: {e:#}")),
    }
}

/// The run's fixed pieces.
struct Ctx<'a> {
    topo: &'a Topology,
    bins: &'a Bins,
    programs: &'a Programs,
    ebpf: Option<&'a Ebpf>,
    plan: &'a Plan,
}

impl Ctx<'_> {
    /// Every variant that is not skipped: once as a warm-up, then [`Plan::reps`] times in a
    /// rotating order, checking between variants that the shared app still runs.
    fn measure_all(&self, samples: &mut BTreeMap<Variant, Samples>, app: &mut Proc) -> Result<()> {
        let plan = self.plan;
        let runnable: Vec<Variant> = plan
            .variants
            .iter()
            .copied()
            .filter(|v| samples.get(v).is_some_and(|s| s.skipped.is_none()))
            .collect();
        log(&format!(
            "variants: {}",
            runnable
                .iter()
                .map(|v| v.slug())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        // Warm-up: every variant once, short, nothing recorded (page cache, allocators, ARP).
        for v in &runnable {
            log(&format!("warm-up {}", v.slug()));
            if let Err(e) = self.warm_up(*v) {
                log(&format!("warm-up of {} failed: {e:#}", v.slug()));
            }
        }
        for rep in 0..plan.reps {
            // Rotate the order, so no variant always runs first or right after the same one.
            let mut order = runnable.clone();
            let len = order.len().max(1);
            order.rotate_left(rep % len);
            for v in order {
                log(&format!("rep {}/{} {}", rep + 1, plan.reps, v.slug()));
                let s = samples.get_mut(&v).context("a sample set per variant")?;
                if let Err(e) = self.measure(v, s) {
                    log(&format!("{}: {e:#}", v.slug()));
                    s.note(format!("rep {}: {e:#}", rep + 1));
                }
                app.ensure_running()?;
            }
        }
        Ok(())
    }

    fn loadgen(&self, variant: Variant) -> Command {
        self.loadgen_to(variant, variant.target())
    }

    /// The load generator aimed at `target` with `variant`'s header.
    fn loadgen_to(&self, variant: Variant, target: SocketAddr) -> Command {
        let netns = match self.plan.layout {
            Layout::Routed => &self.topo.client,
            Layout::Loopback => &self.topo.pod,
        };
        let mut cmd = netns.command("taskset");
        match &self.plan.pin.client {
            Some(cpus) => cmd.args(["-c", cpus]),
            // All CPUs: the same command line either way.
            None => cmd.args(["-c", &format!("0-{}", machine::nproc().saturating_sub(1))]),
        };
        cmd.arg(&self.bins.loadgen)
            .arg("--target")
            .arg(target.to_string())
            .arg("--header")
            .arg(match variant.header() {
                loadgen::HeaderKind::None => "none",
                loadgen::HeaderKind::V2 => "v2",
            });
        cmd
    }

    /// Runs one load generator workload and parses its result line.
    fn workload<T: DeserializeOwned>(&self, variant: Variant, args: &[String]) -> Result<T> {
        self.workload_to(self.loadgen(variant), args)
    }

    /// Runs `cmd` (a load generator) with `args` and parses its result line.
    fn workload_to<T: DeserializeOwned>(&self, mut cmd: Command, args: &[String]) -> Result<T> {
        cmd.args(args);
        let limit = Duration::from_secs_f64(self.plan.secs) * 2 + LOADGEN_SLACK;
        let out = trueip_test_kit::run::output(&mut cmd, limit)?;
        if !out.status.success() {
            bail!(
                "trueip-loadgen {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("parsing loadgen output {line:?}"))
    }

    fn warm_up(&self, variant: Variant) -> Result<()> {
        let hop = variant::start(variant, self.topo, self.programs, self.ebpf)?;
        let secs = format!("{}", self.plan.warmup_secs);
        if variant.http_only() {
            let _: RrResult = self.workload(variant, &strings(&["http", "--secs", &secs]))?;
            drop(hop);
            return Ok(());
        }
        for dir in ["upload", "download"] {
            let _: BulkResult = self.workload(
                variant,
                &strings(&[
                    "bulk",
                    "--direction",
                    dir,
                    "--streams",
                    "1",
                    "--secs",
                    &secs,
                ]),
            )?;
        }
        let _: RrResult = self.workload(variant, &strings(&["rr", "--secs", &secs]))?;
        drop(hop);
        Ok(())
    }

    /// One repetition of every workload for `variant`, appended to `s`. A failing workload is
    /// noted and the others still run.
    fn measure(&self, variant: Variant, s: &mut Samples) -> Result<()> {
        let hop = variant::start(variant, self.topo, self.programs, self.ebpf)?;
        sleep(SETTLE);
        if let Some(pgid) = hop.pgid() {
            let u = procfs::group_usage(pgid)?;
            s.push("rss_idle_mib", u.rss_kib as f64 / 1024.0);
            s.push("pss_idle_mib", u.pss_kib as f64 / 1024.0);
        }
        let secs = format!("{}", self.plan.secs);
        let http = strings(&[
            "http",
            "--conns",
            &self.plan.rr_conns.to_string(),
            "--size",
            &self.plan.msg_size.to_string(),
            "--secs",
            &secs,
        ]);
        if variant.http_only() {
            // The bench's own protocol is not HTTP: only the HTTP workload goes through.
            self.http(variant, &hop, &http, s);
            if let Some(mut proc) = hop.proc {
                proc.ensure_running()?;
            }
            return Ok(());
        }
        // Memory first, on the fresh process, as a new pod would see its first connections.
        let idle: &[usize] = if self.plan.runs("idle") {
            &self.plan.idle
        } else {
            &[]
        };
        for &n in idle {
            if let Err(e) = self.idle(variant, &hop, n, s) {
                s.note(format!("idle {n}: {e:#}"));
            }
        }
        self.bulk(variant, &hop, &secs, s);
        self.rr(variant, &hop, &secs, s);
        self.conn(variant, &hop, &secs, s);
        self.udp_into(variant, &secs, s);
        self.http(variant, &hop, &http, s);
        if let Some(mut proc) = hop.proc {
            proc.ensure_running()?;
        }
        Ok(())
    }

    /// Bulk transfers each way, over one stream and over [`Plan::streams`]: Gbit/s and CPU per GB.
    fn bulk(&self, variant: Variant, hop: &Hop, secs: &str, s: &mut Samples) {
        let streams = self.plan.streams.to_string();
        let dirs: &[(&str, &str)] = if self.plan.runs("bulk") {
            &[("upload", "up"), ("download", "down")]
        } else {
            &[]
        };
        for &(dir, key) in dirs {
            for (n, tag) in [("1", "1"), (streams.as_str(), "n")] {
                let args = strings(&["bulk", "--direction", dir, "--streams", n, "--secs", secs]);
                let key = format!("{key}{tag}");
                match self.timed_cpu::<BulkResult>(variant, hop, &args) {
                    Ok((r, cpu)) => {
                        s.push(&format!("{key}_gbps"), r.gbps);
                        if let Some(cpu) = cpu {
                            s.push(&format!("{key}_cpu_per_gb"), cpu / (r.bytes as f64 / 1e9));
                        }
                    }
                    Err(e) => s.note(format!("{key}: {e:#}")),
                }
            }
        }
    }

    /// Small requests over keep-alive connections: rate, latency quantiles, CPU per request.
    fn rr(&self, variant: Variant, hop: &Hop, secs: &str, s: &mut Samples) {
        let rr = strings(&[
            "rr",
            "--conns",
            &self.plan.rr_conns.to_string(),
            "--size",
            &self.plan.msg_size.to_string(),
            "--secs",
            secs,
        ]);
        match self.run_if("rr", || self.timed_cpu::<RrResult>(variant, hop, &rr)) {
            None => {}
            Some(Ok((r, cpu))) => {
                s.push("rr_rps", r.rps);
                s.push("rr_p50_us", r.p50_us);
                s.push("rr_p99_us", r.p99_us);
                s.push("rr_p999_us", r.p999_us);
                if let Some(cpu) = cpu {
                    s.push("rr_cpu_per_1m_req", cpu / (r.requests as f64 / 1e6));
                }
            }
            Some(Err(e)) => s.note(format!("rr: {e:#}")),
        }
    }

    /// Short connections, one request each: rate, p99 and CPU per connection.
    fn conn(&self, variant: Variant, hop: &Hop, secs: &str, s: &mut Samples) {
        let conn = strings(&[
            "conn",
            "--concurrency",
            &self.plan.conn_concurrency.to_string(),
            "--size",
            &self.plan.msg_size.to_string(),
            "--secs",
            secs,
        ]);
        match self.run_if("conn", || self.timed_cpu::<ConnResult>(variant, hop, &conn)) {
            None => {}
            Some(Ok((r, cpu))) => {
                s.push("conn_cps", r.cps);
                s.push("conn_p99_us", r.p99_us);
                if let Some(cpu) = cpu {
                    s.push("conn_cpu_per_10k", cpu / (r.conns as f64 / 1e4));
                }
            }
            Some(Err(e)) => s.note(format!("conn: {e:#}")),
        }
    }

    /// Datagrams through the UDP listener: rate, latency and losses.
    fn udp_into(&self, variant: Variant, secs: &str, s: &mut Samples) {
        match self.run_if("udp", || self.udp(variant, secs)) {
            None | Some(Ok(None)) => {}
            Some(Ok(Some(r))) => {
                s.push("udp_dps", r.dps);
                s.push("udp_p50_us", r.p50_us);
                s.push("udp_p99_us", r.p99_us);
                if r.lost > 0 {
                    s.note(format!(
                        "udp: {} of {} datagrams lost (not in the latency figures)",
                        r.lost,
                        r.lost + r.datagrams
                    ));
                }
            }
            Some(Err(e)) => s.note(format!("udp: {e:#}")),
        }
    }

    /// HTTP/1.1 GETs over keep-alive connections, the PROXY header once per connection.
    fn http(&self, variant: Variant, hop: &Hop, args: &[String], s: &mut Samples) {
        match self.run_if("http", || self.timed_cpu::<RrResult>(variant, hop, args)) {
            None => {}
            Some(Ok((r, cpu))) => {
                s.push("http_rps", r.rps);
                s.push("http_p50_us", r.p50_us);
                s.push("http_p99_us", r.p99_us);
                if let Some(cpu) = cpu {
                    s.push("http_cpu_per_1m_req", cpu / (r.requests as f64 / 1e6));
                }
            }
            Some(Err(e)) => s.note(format!("http: {e:#}")),
        }
    }

    /// The `udp` workload against `variant`'s UDP listener (its own hop process), or `None`
    /// when the variant has none.
    fn udp(&self, variant: Variant, secs: &str) -> Result<Option<UdpResult>> {
        let Some(target) = variant::udp_target(variant) else {
            return Ok(None);
        };
        let hop = variant::start_udp(variant, self.topo, self.programs)?;
        let args = strings(&[
            "udp",
            "--flows",
            &self.plan.rr_conns.to_string(),
            "--size",
            &self.plan.msg_size.to_string(),
            "--secs",
            secs,
        ]);
        let result = self.workload_to(self.loadgen_to(variant, target), &args)?;
        if let Some(mut proc) = hop.proc {
            proc.ensure_running()?;
        }
        Ok(Some(result))
    }

    /// `f()` when `workload` is in the plan.
    fn run_if<T>(&self, workload: &str, f: impl FnOnce() -> T) -> Option<T> {
        self.plan.runs(workload).then(f)
    }

    /// A workload and the hop's CPU seconds during it.
    fn timed_cpu<T: DeserializeOwned>(
        &self,
        variant: Variant,
        hop: &Hop,
        args: &[String],
    ) -> Result<(T, Option<f64>)> {
        let before = hop.pgid().map(procfs::group_usage).transpose()?;
        let r = self.workload(variant, args)?;
        let after = hop.pgid().map(procfs::group_usage).transpose()?;
        let cpu = before.zip(after).map(|(b, a)| a.cpu_secs - b.cpu_secs);
        Ok((r, cpu))
    }

    /// Opens `n` idle connections through the hop and records its memory with them open.
    fn idle(&self, variant: Variant, hop: &Hop, n: usize, s: &mut Samples) -> Result<()> {
        let Some(pgid) = hop.pgid() else {
            return Ok(());
        };
        if variant == Variant::Socat && n > 1_000 {
            s.note(format!(
                "idle {n}: not run for socat (one process per connection)"
            ));
            return Ok(());
        }
        sleep(SETTLE);
        let base = procfs::group_usage(pgid)?;
        let mut cmd = self.loadgen(variant);
        cmd.args(strings(&[
            "idle",
            "--conns",
            &n.to_string(),
            "--hold-secs",
            "120",
        ]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting trueip-loadgen idle")?;
        let stdout = child.stdout.take().context("loadgen stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(120));
        let result = (|| {
            let line = line.context("no answer from trueip-loadgen idle within 120 s")?;
            let r: IdleResult = serde_json::from_str(line.trim())
                .with_context(|| format!("trueip-loadgen idle answered {line:?}"))?;
            if r.open != n {
                bail!("only {} of {n} connections opened", r.open);
            }
            sleep(SETTLE);
            let with = procfs::group_usage(pgid)?;
            let label = idle_label(n);
            s.push(&format!("rss_{label}_mib"), with.rss_kib as f64 / 1024.0);
            s.push(
                &format!("per_conn_{label}_kib"),
                (with.rss_kib as f64 - base.rss_kib as f64) / n as f64,
            );
            s.push(
                &format!("pss_per_conn_{label}_kib"),
                (with.pss_kib as f64 - base.pss_kib as f64) / n as f64,
            );
            Ok(())
        })();
        // Release the connections: a line on stdin, then wait (bounded) for the exit.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(b"done\n");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            sleep(Duration::from_millis(20));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
        sleep(SETTLE);
        result.map_err(|e| {
            // The load generator's own words, when it failed (one line; it has exited).
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
            }
            match stderr.trim() {
                "" => e,
                said => e.context(said.to_owned()),
            }
        })
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}
