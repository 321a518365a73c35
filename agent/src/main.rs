//! trueip-agent: loads, pins and attaches trueip's eBPF programs and serves per-pod maps to sidecars.
//!
//! Startup: check privileges, bpffs and cgroup v2; load the programs and re-find the pins of a
//! previous run (pods whose cgroup still exists carry on, untouched); listen on the Unix socket;
//! report ready. Then: hand each sidecar its pod's map, steer its pod's connections to its
//! listener when asked, and sweep pods whose cgroup is gone.
//! Exiting (or crashing) detaches nothing: programs stay attached through pinned links.

mod cgroup;
mod config;
mod fast_path;
mod health;
mod identify;
mod metrics;
mod pods;
mod programs;
mod server;
mod steer;

use std::{
    path::Path,
    process::ExitCode,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
use tokio::signal::unix::{SignalKind, signal};
use trueip_telemetry::otlp;

use crate::{
    config::Opt,
    metrics::AgentMetrics,
    pods::Registry,
    programs::{Hook, Programs},
    server::Server,
};

fn main() -> ExitCode {
    let opt = Opt::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trueip-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP clients live on the runtime, so it is entered before they are built.
    let _entered = runtime.enter();
    let (telemetry, traces_error) =
        otlp::Telemetry::start("trueip-agent", &opt.log_format, true, None);
    let result = match traces_error {
        Some(e) => Err(anyhow::Error::from(e)),
        None => run(&opt, &runtime),
    };
    telemetry.shutdown();
    trueip_telemetry::exit_code(result)
}

fn run(opt: &Opt, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "trueip-agent must run as root: it loads eBPF programs (CAP_BPF), attaches them to \
             cgroups (CAP_NET_ADMIN) and enters pods' network namespaces (CAP_SYS_ADMIN)"
        );
    }
    let cgroup_root = cgroup::detect_root(opt.cgroup_root.as_deref())?;
    check_bpffs(&opt.bpffs_dir)?;
    tracing::info!(cgroup_root = %cgroup_root.display(), bpffs = %opt.bpffs_dir.display(), "starting");

    runtime.block_on(serve(opt, cgroup_root))
}

async fn serve(opt: &Opt, cgroup_root: std::path::PathBuf) -> anyhow::Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(AgentMetrics::default());
    let health = tokio::net::TcpListener::bind(opt.health_listen)
        .await
        .with_context(|| format!("listening for health probes on {}", opt.health_listen))?;
    tokio::spawn(health::serve(
        health,
        Arc::clone(&ready),
        Arc::clone(&metrics),
    ));

    let mut hooks = vec![Hook::Getpeername4, Hook::Getpeername6];
    if opt.getsockname {
        hooks.extend([Hook::Getsockname4, Hook::Getsockname6]);
    }
    if opt.udp {
        hooks.extend(Hook::UDP);
    }
    let programs = Programs::load(&opt.bpffs_dir, opt.max_pods, &hooks)
        .context("loading the eBPF programs")?;
    tracing::info!(
        hooks = ?hooks.iter().map(|h| h.name()).collect::<Vec<_>>(),
        "loaded and pinned the eBPF programs"
    );
    let registry = Registry::recover(
        programs,
        &opt.bpffs_dir,
        &cgroup_root,
        hooks,
        opt.map_max_entries,
    )
    .context("re-finding the pins of a previous run")?;
    tracing::info!(pods = registry.len(), "pods carried over");
    let registry = Arc::new(Mutex::new(registry));
    metrics.observe(Arc::clone(&registry));

    let node = identify::NodeNamespaces::detect()
        .context("reading the node's network namespace (/proc/self/ns/net)")?;
    let reaper = server::Reaper::start().context("starting the descriptor-closing thread")?;
    let listener = server::bind_socket(&opt.socket, opt.socket_mode, opt.socket_group)?;
    let server = Server {
        node,
        reaper,
        registry: Arc::clone(&registry),
        cgroup_root,
        pod_cgroup: opt.pod_cgroup,
        steer_when_gone: opt.steer_when_gone,
        metrics: Arc::clone(&metrics),
    };
    std::thread::Builder::new()
        .name("agent-socket".into())
        .spawn(move || server.run(&listener))
        .context("starting the socket thread")?;
    ready.store(true, Ordering::Release);
    tracing::info!(socket = %opt.socket.display(), health = %opt.health_listen, "ready");

    let sweep_registry = Arc::clone(&registry);
    let interval = opt.sweep_interval;
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let registry = Arc::clone(&sweep_registry);
            let swept = tokio::task::spawn_blocking(move || {
                let mut registry = registry.lock().unwrap_or_else(PoisonError::into_inner);
                let swept = registry.sweep();
                registry.report_steering();
                swept
            })
            .await;
            if let Ok(n) = swept {
                metrics.swept(n);
            }
            match swept {
                Ok(0) => {}
                Ok(n) => tracing::info!(pods = n, "swept pods whose cgroup is gone"),
                Err(e) => tracing::error!(error = %e, "the sweep failed"),
            }
        }
    });

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    ready.store(false, Ordering::Release);
    if let Err(e) = std::fs::remove_file(&opt.socket) {
        tracing::warn!(error = %e, "could not remove the socket");
    }
    tracing::info!("exiting; the programs stay attached through their pinned links");
    Ok(())
}

/// Fails clearly unless `dir` is (or can be created) on a bpffs.
fn check_bpffs(dir: &Path) -> anyhow::Result<()> {
    let hint = "mount it with `mount -t bpf bpf /sys/fs/bpf`, or set --bpffs-dir";
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .context("no ancestor of the bpffs directory exists")?;
    let fs = statfs(existing).with_context(|| format!("statfs {}", existing.display()))?;
    if fs.filesystem_type() != BPF_FS_MAGIC {
        bail!(
            "{} is not on a BPF filesystem (bpffs not mounted?): {hint}",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
