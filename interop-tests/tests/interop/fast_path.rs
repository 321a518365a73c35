//! The kernel fast path end to end: two `--mode ebpf` sidecars in the pod's cgroup in front of
//! the same app (`trueip-stream-app`), one with `--fast-path sk-msg` (the app's writes leave
//! through the LB-facing socket from inside the app's `sendmsg()`), one with `--fast-path off`
//! (the sidecar relays both directions). The client (the load balancer, with its own PROXY v2
//! header) runs the same scenarios against both, and both must deliver exactly the same bytes:
//! a large download, an upload, echo round trips, FIN ordering both ways, a slow reader
//! (back-pressure), and resets from either side. Afterwards both sidecars have seen every
//! connection end, and the fast-path maps are empty.
//!
//! The app writes with blocking sockets here. An app on an edge-triggered event loop (tokio,
//! nginx) stalls behind the fast path on the kernels measured (README, "Fast path"): the
//! event-loop scenarios run against the sidecar without it only.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use trueip_interop_tests::{
    Family, Topology,
    agent::Agent,
    sidecar,
    stream::{PatternCheck, StreamConn},
};
use trueip_test_kit::{
    Cgroup, Launch, Need, Proc,
    prereq::{own_binary, require},
    run::wait_for,
};

use crate::TIMEOUT;

/// The app's address in the pod.
const APP: &str = "127.0.0.1:9000";

/// The sidecars, as `(label, listen port, metrics port, --fast-path)`.
const SIDECARS: [(&str, u16, u16, &str); 2] = [
    ("fast path on", 15010, 9910, "sk-msg"),
    ("fast path off", 15011, 9911, "off"),
];

/// Connections each sidecar serves (one per scenario), and the event-loop writer's two more
/// on the sidecar without the fast path.
const SCENARIOS: [usize; 2] = [7, 9];

/// Bytes of the bulk downloads.
const BULK: u64 = 48 << 20;

/// Bytes of the slow reader's download, and how many of them it reads slowly.
const SLOW: (u64, u64) = (64 << 20, 4 << 20);

/// How long a scenario may take at most.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs every scenario against the sidecar with the fast path on and the one with it off.
pub(crate) fn fast_path_on_and_off_deliver_the_same_bytes() -> Result<()> {
    require(&[Need::Sidecar, Need::Agent])?;
    let topo = Topology::new()?;
    let cgroup = Cgroup::create()?;
    let agent = Agent::start(&topo)?;
    let app_addr: SocketAddr = APP.parse()?;
    let mut app = Launch::new("stream-app", own_binary("trueip-stream-app")?)
        .args([APP])
        .netns(&topo.pod)
        .cgroup(&cgroup)
        .spawn(topo.dir())?;
    app.wait_listening(&topo.pod, app_addr, TIMEOUT)?;
    let trusted = format!("{}/32", Family::V4.client());
    let mut sidecars = Vec::new();
    for (label, port, metrics, fast) in SIDECARS {
        let listen = SocketAddr::new(Family::V4.pod(), port);
        let launch = sidecar::launch(
            &format!("sidecar-{fast}"),
            listen,
            app_addr,
            "ebpf",
            &[&trusted],
        )?
        .args(["--fast-path", fast])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .args(["--agent-socket".as_ref(), agent.socket().as_os_str()])
        .cgroup(&cgroup);
        let proc = sidecar::start(&topo, &topo.pod, launch, listen)?;
        sidecars.push((label, listen, metrics, proc));
    }

    for (label, to, _, sidecar) in &sidecars {
        let run = |name: &str, scenario: &dyn Fn() -> Result<()>| -> Result<()> {
            let started = Instant::now();
            scenario().with_context(|| {
                format!(
                    "{label}: {name}\nsidecar:\n{}\napp:\n{}\nagent:\n{}",
                    sidecar.log_tail(),
                    app.log_tail(),
                    agent.log_tail()
                )
            })?;
            ensure!(
                started.elapsed() < SCENARIO_TIMEOUT,
                "{label}: {name} took {:?}",
                started.elapsed()
            );
            Ok(())
        };
        run("download", &|| download(&topo, *to, BULK, false))?;
        run("upload", &|| upload(&topo, *to))?;
        run("echo", &|| echo(&topo, *to))?;
        run("the app's FIN first", &|| {
            app_closes_first(&topo, *to, &app)
        })?;
        run("slow reader", &|| slow_reader(&topo, *to, &app, false))?;
        run("the app resets", &|| app_resets(&topo, *to))?;
        run("the client resets", &|| client_resets(&topo, *to, &app))?;
        if *label == SIDECARS[1].0 {
            run("download, event-loop writer", &|| {
                download(&topo, *to, BULK, true)
            })?;
            run("slow reader, event-loop writer", &|| {
                slow_reader(&topo, *to, &app, true)
            })?;
        }
    }

    // Every connection ended in both sidecars (logs and metrics), and no fast-path entry is
    // left behind.
    for ((label, _, metrics, sidecar), scenarios) in sidecars.iter().zip(SCENARIOS) {
        let ended = wait_for(
            &format!("{label}: every connection to end"),
            TIMEOUT,
            || {
                let log = sidecar.log();
                let ended = log.matches("connection closed").count()
                    + log.matches("connection broken").count();
                let active = scrape(&topo, *metrics, "trueip_connections_active")?;
                Ok((ended >= scenarios && active == Some(0)).then_some(ended))
            },
        )?;
        ensure!(
            ended == scenarios,
            "{label}: {ended} connection ends logged for {scenarios} connections"
        );
    }
    wait_for("the fast-path maps to be empty", TIMEOUT, || {
        Ok((agent.fast_path_entries()? == (0, 0)).then_some(()))
    })?;

    // The fast path really carried the app's bytes on one sidecar and was not used on the
    // other.
    let (_, _, on_metrics, on) = &sidecars[0];
    let redirected: u64 = on
        .log()
        .lines()
        .filter_map(|l| {
            l.split("fast_path_bytes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    ensure!(
        redirected >= BULK + SLOW.0,
        "the fast path redirected only {redirected} bytes:\n{}",
        on.log_tail()
    );
    let wired = scrape_labelled(
        &topo,
        *on_metrics,
        "trueip_fast_path_connections_total",
        "wired",
    )?;
    let failed = scrape_labelled(
        &topo,
        *on_metrics,
        "trueip_fast_path_connections_total",
        "failed",
    )?;
    ensure!(
        wired >= 5 && failed == 0,
        "fast path on: wired {wired}, failed {failed}"
    );
    let (_, _, off_metrics, off) = &sidecars[1];
    let off_wired = scrape_labelled(
        &topo,
        *off_metrics,
        "trueip_fast_path_connections_total",
        "wired",
    )?;
    ensure!(
        off_wired == 0 && !off.log().contains("fast_path_bytes="),
        "fast path off: wired {off_wired}"
    );
    Ok(())
}

/// The app writes `len` bytes and its FIN; the client gets exactly the pattern and EOF.
fn download(topo: &Topology, to: SocketAddr, len: u64, event_loop: bool) -> Result<()> {
    let mode = if event_loop { " nb" } else { "" };
    let mut conn = StreamConn::open(&topo.client, to, &format!("download {len}{mode}"))?;
    // The FIN after the download: a connection the client has already half-closed when the
    // sidecar wires it takes the sidecar's path (the kernel only maps established sockets).
    let read = conn.read_pattern()?;
    conn.finish_writing()?;
    read.expect_intact(len, "download")
}

/// The client sends 16 MiB and its FIN; the app checks them and answers after the FIN.
fn upload(topo: &Topology, to: SocketAddr) -> Result<()> {
    let len = 16u64 << 20;
    let mut conn = StreamConn::open(&topo.client, to, "upload")?;
    conn.write_pattern(len)?;
    conn.finish_writing()?;
    let answer = String::from_utf8(conn.read_to_end()?)?;
    ensure!(
        answer == format!("upload bytes={len} bad=-\n"),
        "the app answered {answer:?}"
    );
    Ok(())
}

/// Request/response round trips of growing size, then FINs both ways.
fn echo(topo: &Topology, to: SocketAddr) -> Result<()> {
    let mut conn = StreamConn::open(&topo.client, to, "echo")?;
    for i in 0..40usize {
        let message: Vec<u8> = (0..1 + i * 997).map(|j| (i + j) as u8).collect();
        conn.stream.write_all(&message)?;
        let mut back = vec![0; message.len()];
        conn.stream
            .read_exact(&mut back)
            .with_context(|| format!("round trip {i}"))?;
        ensure!(back == message, "round trip {i}: other bytes came back");
    }
    conn.finish_writing()?;
    let rest = conn.read_to_end()?;
    ensure!(
        rest.is_empty(),
        "{} bytes after the last round trip",
        rest.len()
    );
    Ok(())
}

/// The app writes 4 MiB and its FIN before reading: the client sees all of it and EOF, and can
/// still send 2 MiB, which the app reads in full.
fn app_closes_first(topo: &Topology, to: SocketAddr, app: &Proc) -> Result<()> {
    let (len, back) = (4u64 << 20, 2u64 << 20);
    let before = app
        .log()
        .matches(&format!("first read={back} bad=-"))
        .count();
    let mut conn = StreamConn::open(&topo.client, to, &format!("first {len}"))?;
    conn.read_pattern()?
        .expect_intact(len, "the app's bytes before its FIN")?;
    conn.write_pattern(back)?;
    conn.finish_writing()?;
    wait_for(
        "the app to read the client's bytes after its own FIN",
        TIMEOUT,
        || {
            Ok((app
                .log()
                .matches(&format!("first read={back} bad=-"))
                .count()
                > before)
                .then_some(()))
        },
    )
}

/// The client reads the first 4 MiB of a 64 MiB download slowly: the app must be held back
/// (it has not written everything while the client lags), and then all bytes arrive intact.
fn slow_reader(topo: &Topology, to: SocketAddr, app: &Proc, event_loop: bool) -> Result<()> {
    let (len, slow) = SLOW;
    let done = format!("done download wrote={len}");
    let before = app.log().matches(&done).count();
    let mode = if event_loop { " nb" } else { "" };
    let mut conn = StreamConn::open(&topo.client, to, &format!("download {len}{mode}"))?;
    // Read the slow part by hand, then check that the app is still writing.
    let mut check = PatternCheck::default();
    let mut buf = vec![0; 64 * 1024];
    while check.len < slow {
        let n = conn.stream.read(&mut buf)?;
        ensure!(n > 0, "EOF after {} bytes", check.len);
        check.update(&buf[..n]);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        app.log().matches(&done).count() == before,
        "the app wrote all {len} bytes while the client had read {}: no back-pressure",
        check.len
    );
    let read = conn.read_pattern_from(check)?;
    conn.finish_writing()?;
    read.expect_intact(len, "the slow reader's download")
}

/// The app writes 1 MiB and resets: the client sees a reset, and only pattern bytes before it.
fn app_resets(topo: &Topology, to: SocketAddr) -> Result<()> {
    let mut conn = StreamConn::open(&topo.client, to, "reset 1048576")?;
    let read = conn.read_pattern()?;
    ensure!(
        read.check.bad.is_none(),
        "bad byte at {}",
        read.check.bad_label()
    );
    ensure!(
        read.reset,
        "the app's reset arrived as a clean EOF after {} bytes",
        read.check.len
    );
    Ok(())
}

/// The client resets while the app floods it: the app's writes fail.
fn client_resets(topo: &Topology, to: SocketAddr, app: &Proc) -> Result<()> {
    let before = app.log().matches("flood wrote=").count();
    let mut conn = StreamConn::open(&topo.client, to, "flood")?;
    let mut buf = vec![0; 1 << 20];
    conn.stream.read_exact(&mut buf)?;
    conn.reset()?;
    wait_for(
        "the app's write to fail after the client's reset",
        TIMEOUT,
        || Ok((app.log().matches("flood wrote=").count() > before).then_some(())),
    )
}

/// The value of an unlabelled-by-outcome series `name` on the sidecar's `/metrics`.
fn scrape(topo: &Topology, port: u16, name: &str) -> Result<Option<u64>> {
    let text = metrics_text(topo, port)?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok()))
}

/// The value of `name{...outcome="<outcome>"...}` on the sidecar's `/metrics`.
fn scrape_labelled(topo: &Topology, port: u16, name: &str, outcome: &str) -> Result<u64> {
    let text = metrics_text(topo, port)?;
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("outcome=\"{outcome}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .with_context(|| format!("no {name} outcome={outcome} in:\n{text}"))
}

fn metrics_text(topo: &Topology, port: u16) -> Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = topo
        .pod
        .run(|| TcpStream::connect(addr))?
        .context("connecting to the sidecar's /metrics")?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}
