//! `RESULTS.md`: the summary table (medians and spread), ratios against direct and against
//! HAProxy, the sidecar's targets, every metric in detail, the method and the machine.

use std::fmt::Write as _;

use super::{
    plan::{Layout, Plan},
    results::{Results, Samples, idle_label},
    variant::Variant,
};
use crate::stats::Summary;

/// One measured quantity.
#[derive(Debug, Clone)]
pub struct Metric {
    /// Key in [`Samples::values`].
    pub key: String,
    /// Column or row label.
    pub label: String,
    /// Whether more is better (throughput) or less (latency, memory, CPU).
    pub higher_is_better: bool,
}

impl Metric {
    fn new(key: &str, label: &str, higher_is_better: bool) -> Self {
        Self {
            key: key.to_owned(),
            label: label.to_owned(),
            higher_is_better,
        }
    }
}

/// Every metric of `plan`, in report order.
#[must_use]
pub fn metrics(plan: &Plan) -> Vec<Metric> {
    let n = plan.streams;
    let mut m = vec![
        Metric::new("up1_gbps", "upload ×1, Gbit/s", true),
        Metric::new("upn_gbps", &format!("upload ×{n}, Gbit/s"), true),
        Metric::new("down1_gbps", "download ×1, Gbit/s", true),
        Metric::new("downn_gbps", &format!("download ×{n}, Gbit/s"), true),
        Metric::new("rr_rps", &format!("req/s ({} conns)", plan.rr_conns), true),
        Metric::new("rr_p50_us", "rr p50, µs", false),
        Metric::new("rr_p99_us", "rr p99, µs", false),
        Metric::new("rr_p999_us", "rr p99.9, µs", false),
        Metric::new("conn_cps", "new conns/s", true),
        Metric::new("conn_p99_us", "conn p99, µs", false),
        Metric::new(
            "http_rps",
            &format!("HTTP req/s ({} conns)", plan.rr_conns),
            true,
        ),
        Metric::new("http_p50_us", "HTTP p50, µs", false),
        Metric::new("http_p99_us", "HTTP p99, µs", false),
        Metric::new(
            "udp_dps",
            &format!("UDP datagrams/s ({} flows)", plan.rr_conns),
            true,
        ),
        Metric::new("udp_p50_us", "UDP p50, µs", false),
        Metric::new("udp_p99_us", "UDP p99, µs", false),
        Metric::new("rss_idle_mib", "RSS idle, MiB", false),
        Metric::new("pss_idle_mib", "PSS idle, MiB", false),
    ];
    for &i in &plan.idle {
        let l = idle_label(i);
        m.push(Metric::new(
            &format!("rss_{l}_mib"),
            &format!("RSS @{l} idle, MiB"),
            false,
        ));
        m.push(Metric::new(
            &format!("per_conn_{l}_kib"),
            &format!("RSS KiB/conn @{l}"),
            false,
        ));
        m.push(Metric::new(
            &format!("pss_per_conn_{l}_kib"),
            &format!("PSS KiB/conn @{l}"),
            false,
        ));
    }
    m.extend([
        Metric::new("up1_cpu_per_gb", "CPU s/GB upload ×1", false),
        Metric::new("down1_cpu_per_gb", "CPU s/GB download ×1", false),
        Metric::new("upn_cpu_per_gb", &format!("CPU s/GB upload ×{n}"), false),
        Metric::new(
            "downn_cpu_per_gb",
            &format!("CPU s/GB download ×{n}"),
            false,
        ),
        Metric::new("rr_cpu_per_1m_req", "CPU s/1M req", false),
        Metric::new("conn_cpu_per_10k", "CPU s/10k conns", false),
        Metric::new("http_cpu_per_1m_req", "CPU s/1M HTTP req", false),
    ]);
    m
}

/// The columns of the summary table.
fn summary_keys(plan: &Plan) -> Vec<String> {
    let big = plan.idle.last().map(|&n| idle_label(n)).unwrap_or_default();
    [
        "up1_gbps",
        "upn_gbps",
        "down1_gbps",
        "downn_gbps",
        "rr_rps",
        "rr_p99_us",
        "conn_cps",
        "http_rps",
        "udp_dps",
        "udp_p99_us",
        "rss_idle_mib",
        &format!("per_conn_{big}_kib"),
        "down1_cpu_per_gb",
        "conn_cpu_per_10k",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn summary(s: &Samples, key: &str) -> Option<Summary> {
    s.values.get(key).and_then(|v| Summary::of(v))
}

/// A number with about three significant digits.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn cell(s: Option<Summary>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("**{}** ({}–{})", num(s.median), num(s.min), num(s.max)),
        Some(s) => format!("**{}**", num(s.median)),
        None => "–".to_owned(),
    }
}

fn ratio(a: Option<Summary>, b: Option<Summary>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => format!("{:.2}×", a.median / b.median),
        _ => "–".to_owned(),
    }
}

fn find(results: &Results, v: Variant) -> Option<&Samples> {
    results
        .variants
        .iter()
        .find(|(x, s)| *x == v && s.skipped.is_none())
        .map(|(_, s)| s)
}

/// Renders the whole file. `notes` (hand-written profiling notes) is appended verbatim.
#[must_use]
pub fn render(results: &Results, plot_file: &str, notes: Option<&str>) -> String {
    let plan = &results.plan;
    let all = metrics(plan);
    let keys = summary_keys(plan);
    let labels: Vec<String> = keys
        .iter()
        .map(|key| {
            all.iter()
                .find(|m| &m.key == key)
                .map_or_else(|| key.clone(), |m| m.label.clone())
        })
        .collect();
    let mut out = String::new();
    intro(&mut out, results, plot_file);
    summary_table(&mut out, results, &keys, &labels);
    ratios(&mut out, results, &keys, &labels);
    targets(&mut out, results);
    feature_cost(&mut out, results);
    every_metric(&mut out, results, &all);
    run_notes(&mut out, results);
    method(&mut out, results);
    if let Some(notes) = notes {
        let _ = writeln!(out, "\n{}", notes.trim_end());
    }
    out
}

/// The title, the machine and how the run went.
fn intro(out: &mut String, results: &Results, plot_file: &str) {
    let plan = &results.plan;
    let m = &results.machine;
    let _ = writeln!(
        out,
        "# trueip benchmark results ({} layout)\n\n\
         Generated by `trueip-bench` (`make bench`){} on **{}** — {} × {}, {} cores (nproc), {:.0} GiB, kernel {}.\n\
         {} repetition(s) per variant, interleaved, after a warm-up; {} s per throughput, \
         request/response and short-connection workload; wall time {:.0} s; 1-minute load \
         average {:.2} before the run and {} at its end (the run itself loads the machine).\n\n\
         Cells: **median** (min–max) over the repetitions. Higher is better for Gbit/s, req/s \
         and conns/s; lower for latency, memory and CPU. Plot: [`{plot_file}`]({plot_file}).\n",
        plan.layout.name(),
        if plan.quick {
            " (BENCH_QUICK=1: smoke run, not for quoting)"
        } else {
            ""
        },
        m.date,
        m.nproc,
        m.cpu,
        m.nproc,
        m.mem_gib,
        m.kernel,
        plan.reps,
        plan.secs,
        results.wall_secs,
        results.load_before,
        results
            .load_after
            .map_or_else(|| "not recorded".to_owned(), |l| format!("{l:.2}")),
    );
}

/// One row per variant, one column per headline metric.
fn summary_table(out: &mut String, results: &Results, keys: &[String], labels: &[String]) {
    // Summary.
    let _ = writeln!(out, "## Summary\n");
    table_head(out, labels);
    for (v, s) in &results.variants {
        if let Some(why) = &s.skipped {
            let _ = writeln!(
                out,
                "| {} | not run: {} |{}",
                v.label(),
                one_line(why),
                " |".repeat(keys.len().saturating_sub(1))
            );
            continue;
        }
        let cells: Vec<String> = keys.iter().map(|k| cell(summary(s, k))).collect();
        let _ = writeln!(out, "| {} | {} |", v.label(), cells.join(" | "));
    }
}

/// The headline metrics as ratios to direct and to HAProxy.
fn ratios(out: &mut String, results: &Results, keys: &[String], labels: &[String]) {
    let direct = find(results, Variant::Direct);
    let haproxy = find(results, Variant::Haproxy);
    // Ratios.
    let _ = writeln!(
        out,
        "\n## Ratios\n\nMedian of the variant ÷ median of direct / ÷ median of HAProxy, same column \
         as above (for latency, memory and CPU below 1× is better).\n"
    );
    table_head(out, labels);
    for (v, s) in &results.variants {
        if s.skipped.is_some() {
            continue;
        }
        let cells: Vec<String> = keys
            .iter()
            .map(|k| {
                let me = summary(s, k);
                format!(
                    "{} / {}",
                    ratio(me, direct.and_then(|d| summary(d, k))),
                    ratio(me, haproxy.and_then(|h| summary(h, k)))
                )
            })
            .collect();
        let _ = writeln!(out, "| {} | {} |", v.label(), cells.join(" | "));
    }
}

/// Every metric of every variant, with its spread and both ratios.
fn every_metric(out: &mut String, results: &Results, all: &[Metric]) {
    let direct = find(results, Variant::Direct);
    let haproxy = find(results, Variant::Haproxy);
    // Everything.
    let _ = writeln!(
        out,
        "\n## Every metric\n\n| metric | variant | median | min–max | n | ×direct | ×HAProxy |\n|---|---|---|---|---|---|---|"
    );
    for metric in all {
        for (v, s) in &results.variants {
            let Some(me) = summary(s, &metric.key) else {
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}–{} | {} | {} | {} |",
                metric.label,
                v.label(),
                num(me.median),
                num(me.min),
                num(me.max),
                me.n,
                ratio(Some(me), direct.and_then(|d| summary(d, &metric.key))),
                ratio(Some(me), haproxy.and_then(|h| summary(h, &metric.key))),
            );
        }
    }
}

/// Per-variant notes: failures, skips, checks.
fn run_notes(out: &mut String, results: &Results) {
    // Per-variant notes: failures, skips, checks.
    let noted: Vec<_> = results
        .variants
        .iter()
        .filter(|(_, s)| !s.notes.is_empty() || s.skipped.is_some())
        .collect();
    if !noted.is_empty() {
        let _ = writeln!(out, "\n## Run notes\n");
        for (v, s) in noted {
            if let Some(why) = &s.skipped {
                let _ = writeln!(out, "* **{}**: not run — {}", v.label(), one_line(why));
            }
            for n in &s.notes {
                let _ = writeln!(out, "* **{}**: {}", v.label(), one_line(n));
            }
        }
    }
}

/// The head of a table with a variant column and one column per metric label.
fn table_head(out: &mut String, labels: &[String]) {
    let _ = writeln!(out, "| variant | {} |", labels.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(labels.len()));
}

/// Markdown-safe single line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ⏎ ")
        .replace('|', "\\|")
}

/// The performance goals for the sidecar (issues 6 and 19), each checked against the peers of
/// the same run: one verdict line per goal, variant and metric.
fn targets(out: &mut String, results: &Results) {
    let med = |v: Variant, key: &str| {
        find(results, v)
            .and_then(|s| summary(s, key))
            .map(|s| s.median)
    };
    let best_peer = |key: &str| {
        [Variant::Haproxy, Variant::Nginx, Variant::Socat]
            .iter()
            .filter_map(|&v| med(v, key).map(|m| (m, v)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };
    let big = results
        .plan
        .idle
        .last()
        .map(|&n| idle_label(n))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\n## Goals (issues 6 and 19)\n\n\
         Each goal against the peers' medians of this run. `trueip none, chart defaults` is the \
         JSON-log row (JSON logs and `/metrics` served); the other modes run with text logs.\n\n\
         | goal | variant | measured | goal | verdict |\n|---|---|---|---|---|"
    );
    let (mut met, mut checked) = (0, 0);
    let mut row = |target: &str,
                   v: Variant,
                   measured: Option<f64>,
                   goal: Option<(f64, String)>,
                   higher: bool| {
        let verdict = match (measured, &goal) {
            (Some(m), Some((g, _))) if (higher && m >= *g) || (!higher && m <= *g) => {
                (met, checked) = (met + 1, checked + 1);
                "met"
            }
            (Some(_), Some(_)) => {
                checked += 1;
                "**missed**"
            }
            _ => "n/a",
        };
        let _ = writeln!(
            out,
            "| {target} | {} | {} | {} | {verdict} |",
            v.label(),
            measured.map_or_else(|| "–".to_owned(), num),
            goal.map_or_else(|| "–".to_owned(), |(g, how)| format!("{} {how}", num(g)))
        );
    };
    let haproxy = |key: &str, times: f64, how: &str| {
        med(Variant::Haproxy, key).map(|h| (times * h, how.to_owned()))
    };
    for v in [
        Variant::TrueipNone,
        Variant::TrueipChart,
        Variant::TrueipProxyV1,
        Variant::TrueipEbpf,
        Variant::TrueipTransparent,
        Variant::TrueipEbpfSteering,
        Variant::TrueipEbpfSkMsg,
    ] {
        if find(results, v).is_none() {
            continue;
        }
        if matches!(v, Variant::TrueipNone | Variant::TrueipEbpf) {
            for (key, what) in [("up1_gbps", "upload ×1"), ("down1_gbps", "download ×1")] {
                let goal =
                    best_peer(key).map(|(m, p)| (1.5 * m, format!("(≥ 1.5× {})", p.label())));
                row(&format!("bulk {what}, Gbit/s"), v, med(v, key), goal, true);
            }
        }
        let goal = haproxy("conn_cps", 1.2, "(≥ 1.2× HAProxy)");
        row("new conns/s", v, med(v, "conn_cps"), goal, true);
        let goal = haproxy("conn_cpu_per_10k", 1.0, "(≤ HAProxy)");
        row(
            "CPU s/10k conns",
            v,
            med(v, "conn_cpu_per_10k"),
            goal,
            false,
        );
        let goal = med(Variant::Nginx, "rr_rps").map(|n| (1.1 * n, "(≥ 1.1× nginx)".to_owned()));
        let rr = format!("req/s, {} conns", results.plan.rr_conns);
        row(&rr, v, med(v, "rr_rps"), goal, true);
        let goal = haproxy("rr_p99_us", 1.0, "(≤ HAProxy)");
        row("rr p99, µs", v, med(v, "rr_p99_us"), goal, false);
        let goal = Some((4.0, "(≤ 4 MiB)".to_owned()));
        row("RSS idle, MiB", v, med(v, "rss_idle_mib"), goal, false);
        let goal = Some((4.0, "(≤ 4 KiB)".to_owned()));
        let per_conn = med(v, &format!("per_conn_{big}_kib"));
        row(
            &format!("RSS per idle conn @{big}, KiB"),
            v,
            per_conn,
            goal,
            false,
        );
    }
    if find(results, Variant::TrueipHttp).is_some() {
        let goal = med(Variant::NginxHttp, "http_rps")
            .map(|n| (1.1 * n, "(≥ 1.1× nginx http)".to_owned()));
        let rps = med(Variant::TrueipHttp, "http_rps");
        row(
            "HTTP keep-alive req/s",
            Variant::TrueipHttp,
            rps,
            goal,
            true,
        );
    }
    let _ = writeln!(
        out,
        "\n**{met} of {checked} goals met** in this run. The header parse target (≤ 100 ns per v2 \
         header with TLVs) is the criterion benchmark `cargo bench -p trueip-proxy-header`, not \
         part of this run; what each feature costs against `none` is the next table."
    );
}

/// What each feature costs (issues 9 and 19): the `none` mode with metrics served, with every
/// connection traced and with the chart's defaults, and `ebpf` (the map claim), against plain
/// `none`; steering against `ebpf`; all from the same run. The goal is for "metrics only":
/// within 3 % on throughput and connections/s.
fn feature_cost(out: &mut String, results: &Results) {
    let med = |v: Variant, key: &str| {
        find(results, v)
            .and_then(|s| summary(s, key))
            .map(|s| s.median)
    };
    if find(results, Variant::TrueipNone).is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## What each feature costs (issues 9 and 19)\n\n\
         Median of the variant ÷ median of `trueip none` (same run; 1.00× is free); steering ÷ \
         `trueip ebpf`. Goal for metrics only: within 3 % (0.97× or better) on throughput and \
         connections/s. The chart's defaults are JSON logs and metrics served; `ebpf` adds the \
         agent's map claim per connection, steering the sk_lookup hand-over.\n\n\
         | metric | trueip none | + metrics | ratio | verdict | + traces (100 %) | ratio | chart defaults | ratio | ebpf (map claim) | ratio | ebpf + steering | ratio |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (key, what) in [
        ("up1_gbps", "upload ×1, Gbit/s"),
        ("down1_gbps", "download ×1, Gbit/s"),
        ("rr_rps", "req/s"),
        ("conn_cps", "new conns/s"),
    ] {
        let base = med(Variant::TrueipNone, key);
        let cost = |v: Variant| match (med(v, key), base) {
            (Some(m), Some(b)) if b > 0.0 => (num(m), Some(m / b)),
            (Some(m), _) => (num(m), None),
            _ => ("not run".to_owned(), None),
        };
        let (metrics, metrics_ratio) = cost(Variant::TrueipMetrics);
        let (traces, traces_ratio) = cost(Variant::TrueipTraces);
        let (chart, chart_ratio) = cost(Variant::TrueipChart);
        let (ebpf, ebpf_ratio) = cost(Variant::TrueipEbpf);
        let steering = med(Variant::TrueipEbpfSteering, key);
        let steering_ratio = steering
            .zip(med(Variant::TrueipEbpf, key))
            .and_then(|(s, e)| (e > 0.0).then_some(s / e));
        let steering = steering.map_or_else(|| "not run".to_owned(), num);
        let show = |r: Option<f64>| r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"));
        let verdict = match metrics_ratio {
            Some(r) if r >= 0.97 => "met",
            Some(_) => "**missed**",
            None => "n/a",
        };
        let _ = writeln!(
            out,
            "| {what} | {} | {metrics} | {} | {verdict} | {traces} | {} | {chart} | {} | {ebpf} | {} \
             | {steering} | {} |",
            base.map_or_else(|| "–".to_owned(), num),
            show(metrics_ratio),
            show(traces_ratio),
            show(chart_ratio),
            show(ebpf_ratio),
            show(steering_ratio)
        );
    }
}

fn method(out: &mut String, results: &Results) {
    let plan = &results.plan;
    let m = &results.machine;
    let pin = |p: &Option<String>| {
        p.as_ref()
            .map_or_else(|| "not pinned".to_owned(), |c| format!("`taskset -c {c}`"))
    };
    let _ = writeln!(
        out,
        "\n## Method\n\n\
         * **Topology** (network namespaces and veth pairs, TEST-NET addresses only): {layout}; \
         the middle hop listens in the pod namespace (192.0.2.10) \
         and forwards to the app on 127.0.0.1:9000 (the eBPF variant: a second app instance on \
         127.0.0.1:9001 inside the sidecar's cgroup v2). *direct* connects to the app's \
         192.0.2.10:9000 itself. Namespaces come from `trueip-interop-tests`' `Topology`.\n\
         * **Load generator** `trueip-loadgen` (Rust, tokio, this crate): opens each connection \
         with a PROXY v2 header (`Header::to_v2`, 28 bytes, the connection's own endpoints) glued \
         to the first bytes like LoxiLB does — except to *direct* and *socat*, which get no header. \
         **App** `trueip-bench-app` (tokio, 256 KiB buffers): sink / source / echo, the same \
         binary behind every variant; it skips a PROXY v1 line (proxy-v1 variant) and does no more.\n\
         * **Workloads** per repetition, in this order on a freshly started hop: RSS idle; {idle} \
         idle connections (each echoes one 8-byte ping end to end, so the hop has connected to the \
         app; held, memory read, closed; per-connection cost = (RSS with them − RSS just before) ÷ \
         count); bulk upload and download with 1 and {streams} parallel streams, {secs} s of \
         sending each (upload: until the app confirms the byte count; download: the client \
         half-closes after {secs} s and counts to EOF); request/response, {rr} keep-alive \
         connections, {size}-byte messages, one in flight per connection, latency in an \
         hdrhistogram per connection, merged; short connections, {cc} concurrent loops of connect \
         + header + {size}-byte request + echo + close; UDP (direct and trueip none only: the \
         others have no PROXY-over-UDP listener), {rr} client flows, {size}-byte datagrams, one \
         in flight per flow, each behind a PROXY v2 UDP header to a second sidecar process \
         (`--protocol udp --mode none`, bare replies), straight to the app's UDP echo for direct; \
         an echo missing after 1 s is counted lost and noted. Every byte count and echo is \
         checked; a mismatch fails the workload and is listed under run notes.\n\
         * **Repetitions**: a warm-up pass per variant (1 × bulk each way and rr, {warm} s, not \
         recorded), then {reps} repetition(s); each repetition runs every variant once, starting \
         and stopping its hop, the order rotated by one each time.\n\
         * **CPU**: utime + stime (+ reaped children's, for socat's per-connection processes) of \
         every process in the hop's process group, from `/proc/<pid>/stat`, before and after each \
         workload; CPU s/GB divides by the bytes moved, CPU s/10k conns by the connections made. \
         Only the hop's own process time: kernel work done in softirq context on its behalf is \
         not attributed to it. **Memory**: sum of `VmRSS` (and of `Pss` from `smaps_rollup`) over \
         the same processes; kernel socket buffers are not in either.\n\
         * **Pinning**: load generator {pc}; app {pa}; hop {ph}. All three share the {n} cores, as \
         they would in a pod on a small node; no userspace hop gets near *direct* this way. Pinning was tried (see the notes): it narrows the spread but halves *direct* and reorders the hops.\n\
         * **Limits** set by the runner (root): `RLIMIT_NOFILE` {nofile} (it raises it to \
         `fs.nr_open` where allowed), `somaxconn` 8192 in the pod namespace, `tcp_tw_reuse=1` and ports 10000–65000 in the \
         client and pod namespaces (short-connection workload).\n",
        layout = match plan.layout {
            Layout::Routed => {
                "**routed**: load generator in a client namespace (203.0.113.7) → a router \
                 namespace (plain IP forwarding, the same for every variant) → the pod namespace"
            }
            Layout::Loopback => {
                "**loopback**: the load generator runs in the pod namespace itself and connects to \
                 192.0.2.10, so every byte stays on loopback (no veth, no router) and the hop's own \
                 cost is not diluted; the steering rows cannot run (steering hands over \
                 connections from outside the pod only)"
            }
        },
        idle = plan
            .idle
            .iter()
            .map(|&n| idle_label(n))
            .collect::<Vec<_>>()
            .join(" and "),
        streams = plan.streams,
        secs = plan.secs,
        rr = plan.rr_conns,
        size = plan.msg_size,
        cc = plan.conn_concurrency,
        warm = plan.warmup_secs,
        reps = plan.reps,
        pc = pin(&plan.pin.client),
        pa = pin(&plan.pin.app),
        ph = pin(&plan.pin.hop),
        n = m.nproc,
        nofile = m.nofile,
    );
    if !plan.sidecar_args.is_empty() {
        let _ = writeln!(
            out,
            "* **Sidecar arguments added for this run**: `{}`",
            plan.sidecar_args.join(" ")
        );
    }
    if !plan.sidecar_env.is_empty() {
        let _ = writeln!(
            out,
            "* **Sidecar environment added for this run**: `{}`",
            plan.sidecar_env.join(" ")
        );
    }
    for c in &plan.caveats {
        let _ = writeln!(out, "* **Caveat**: {c}");
    }
    let _ = writeln!(out, "\n### Variants\n");
    for v in &plan.variants {
        let _ = writeln!(out, "* **{}**: {}", v.label(), v.describe());
    }
    if !m.versions.is_empty() {
        let _ = writeln!(out, "\nPeers: {}.", m.versions.join("; "));
    }
    let _ = writeln!(
        out,
        "\nReproduce: `make bench` (as root; `BENCH_QUICK=1` for a smoke run). \
         Options: `target/release/trueip-bench --help`."
    );
}
