//! `trueip-bench`: runs every variant through every workload, interleaved, and writes
//! `RESULTS.md` and the plot. Needs root (network namespaces, cgroups, eBPF); `make bench`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Parser;
use trueip_bench::runner::{self, Layout, Pins, Plan, Variant, plot, report};

/// Benchmarks trueip's sidecar against direct, HAProxy, nginx stream and socat.
#[derive(Debug, Parser)]
#[command(name = "trueip-bench", version, about)]
struct Opt {
    /// Where the Markdown table goes.
    #[arg(long, default_value = "bench/RESULTS.md")]
    out: PathBuf,

    /// Where the plot goes (PNG).
    #[arg(long, default_value = "bench/results.png")]
    plot: PathBuf,

    /// Hand-written notes appended to the results (profiling findings), if the file exists.
    #[arg(long, default_value = "bench/NOTES.md")]
    notes: PathBuf,

    /// Raw results as JSON (written by every run; with --render, read instead of running).
    #[arg(long, default_value = "bench/results.json")]
    json: PathBuf,

    /// Do not run: render RESULTS.md and the plot again from --json (e.g. after editing the notes).
    #[arg(long)]
    render: bool,

    /// Smoke run: one repetition, short workloads, 100 and 1 000 idle connections.
    #[arg(long, env = runner::QUICK_ENV, value_parser = clap::builder::FalseyValueParser::new())]
    quick: bool,

    /// Repetitions per variant [default: 5, quick: 1].
    #[arg(long)]
    reps: Option<usize>,

    /// Seconds per throughput / request / connection workload [default: 3, quick: 0.5].
    #[arg(long)]
    secs: Option<f64>,

    /// Idle connection counts, comma-separated [default: 1000,10000; quick: 100,1000].
    #[arg(long, value_delimiter = ',')]
    idle: Option<Vec<usize>>,

    /// Only these variants, comma-separated (direct, none, proxy-v1, none-metrics, none-traces,
    /// none-chart, ebpf, ebpf-steering, ebpf-sk-msg, transparent, http, nginx-http, haproxy,
    /// nginx, socat).
    #[arg(long, value_delimiter = ',', value_parser = parse_variant)]
    variants: Option<Vec<Variant>>,

    /// The `trueip-sidecar` binary to measure [default: next to this one, like the interop tests].
    #[arg(long, value_name = "PATH")]
    sidecar: Option<PathBuf>,

    /// The binary of the chart-defaults row (`none-chart`): the image's static musl build
    /// [default: `x86_64-unknown-linux-musl/release/trueip-sidecar` beside this binary's
    /// directory when it exists, else the one of --sidecar].
    #[arg(long, value_name = "PATH")]
    image_sidecar: Option<PathBuf>,

    /// An extra argument for every trueip-sidecar, e.g. --sidecar-arg=--pipe-size=1048576
    /// (repeat for several).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    sidecar_arg: Vec<String>,

    /// Extra KEY=VALUE environment for every trueip-sidecar, e.g. TOKIO_WORKER_THREADS=1.
    #[arg(long, value_name = "KEY=VALUE")]
    sidecar_env: Vec<String>,

    /// Only these workload groups, comma-separated (idle, bulk, rr, conn, http, udp) [default: all].
    #[arg(long, value_delimiter = ',', value_parser = ["idle", "bulk", "rr", "conn", "http", "udp"])]
    workloads: Option<Vec<String>>,

    /// Where the load generator runs: `routed` (a client namespace behind a router namespace)
    /// or `loopback` (the pod's namespace: every byte on loopback, the hop's own cost alone).
    #[arg(long, default_value = "routed", value_parser = parse_layout)]
    layout: Layout,

    /// Pin the load generator with `taskset -c CPUS`.
    #[arg(long, value_name = "CPUS")]
    pin_client: Option<String>,

    /// Pin the app with `taskset -c CPUS`.
    #[arg(long, value_name = "CPUS")]
    pin_app: Option<String>,

    /// Pin the middle hop with `taskset -c CPUS`.
    #[arg(long, value_name = "CPUS")]
    pin_hop: Option<String>,
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    Variant::ALL
        .into_iter()
        .find(|v| v.slug() == s)
        .ok_or_else(|| format!("unknown variant {s:?}"))
}

fn parse_layout(s: &str) -> Result<Layout, String> {
    [Layout::Routed, Layout::Loopback]
        .into_iter()
        .find(|l| l.name() == s)
        .ok_or_else(|| format!("unknown layout {s:?}: routed or loopback"))
}

fn main() -> ExitCode {
    let opt = Opt::parse();
    match run(opt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trueip-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opt: Opt) -> Result<()> {
    let mut plan = if opt.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(r) = opt.reps {
        plan.reps = r.max(1);
    }
    if let Some(s) = opt.secs {
        plan.secs = s;
    }
    if let Some(i) = opt.idle {
        plan.idle = i;
    }
    if let Some(v) = opt.variants {
        plan.variants = Variant::ALL.into_iter().filter(|x| v.contains(x)).collect();
    }
    plan.sidecar = opt.sidecar;
    plan.image_sidecar = opt.image_sidecar;
    plan.sidecar_args = opt.sidecar_arg;
    plan.sidecar_env = opt.sidecar_env;
    if let Some(w) = opt.workloads {
        plan.workloads = w;
    }
    plan.layout = opt.layout;
    plan.pin = Pins {
        client: opt.pin_client,
        app: opt.pin_app,
        hop: opt.pin_hop,
    };
    let results = if opt.render {
        let text = std::fs::read_to_string(&opt.json)
            .with_context(|| format!("reading {}", opt.json.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", opt.json.display()))?
    } else {
        runner::run(plan)?
    };
    for path in [&opt.out, &opt.plot, &opt.json] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    if !opt.render {
        let json = serde_json::to_string_pretty(&results)?;
        std::fs::write(&opt.json, json)
            .with_context(|| format!("writing {}", opt.json.display()))?;
    }
    let notes = std::fs::read_to_string(&opt.notes).ok();
    let plot_name = opt.plot.file_name().map_or_else(
        || "results.png".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let plot_result = plot::draw(&results, &opt.plot);
    let mut text = report::render(&results, &plot_name, notes.as_deref());
    if let Err(e) = &plot_result {
        text.push_str(&format!("\n> The plot could not be drawn: {e:#}\n"));
    }
    std::fs::write(&opt.out, text).with_context(|| format!("writing {}", opt.out.display()))?;
    eprintln!("[bench] wrote {}", opt.out.display());
    plot_result.with_context(|| format!("drawing {}", opt.plot.display()))?;
    eprintln!("[bench] wrote {}", opt.plot.display());
    Ok(())
}
