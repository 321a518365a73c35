//! The sidecar binary, as the chart runs it (JSON logs, metrics served, `mode: http` with its
//! default limits), against a few hundred hostile connections: its resident memory stays far
//! below the chart's 64 MiB container limit. (Before the HTTP limits, 200 connections each
//! sending an unfinished 256 KiB request head grew it from 7 to 65 MiB.)

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_trueip-sidecar");
/// Connections of each kind.
const CONNECTIONS: usize = 200;
/// The chart's memory limit for the sidecar container.
const CHART_LIMIT_MIB: u64 = 64;

/// A process's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The PROXY v2 header of a trusted load balancer for 203.0.113.7.
fn lb_header() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend([203, 0, 113, 7, 198, 51, 100, 1, 0xc8, 0x22, 0x01, 0xbb]);
    h
}

/// A request head that never ends, `pad` bytes long.
fn unfinished_head(pad: usize) -> Vec<u8> {
    let mut head = lb_header();
    head.extend_from_slice(b"GET / HTTP/1.1\r\nHost: shop.example\r\nX-Pad: ");
    head.resize(head.len() + pad, b'p');
    head
}

#[test]
fn a_few_hundred_hostile_connections_stay_far_below_the_charts_memory_limit() {
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - listen: 127.0.0.1:{port}\n    upstream: {}\n    mode: http\n    \
             trusted_sources: [127.0.0.0/8]\nmetrics_listen: 127.0.0.1:0\n",
            app.local_addr().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--config"])
        .arg(&config)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("the sidecar listens");
    std::thread::sleep(Duration::from_millis(100));
    let before = rss_kib(pid);

    // 200 connections that stop just below the head limit and wait.
    let held: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(&unfinished_head(30 * 1024)).unwrap();
            c
        })
        .collect();
    // 200 that each send a 256 KiB head, all at once.
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                // The sidecar stops reading at its limit: the rest of the write may fail.
                let _ = c.write_all(&unfinished_head(256 * 1024));
                let mut answer = Vec::new();
                let _ = c.read_to_end(&mut answer);
                answer.starts_with(b"HTTP/1.1 431")
            })
        })
        .collect();
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(30);
    while senders.iter().any(|s| !s.is_finished()) && Instant::now() < deadline {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    let answered = senders
        .into_iter()
        .map(|s| s.join().unwrap())
        .filter(|&got_431| got_431)
        .count();
    peak = peak.max(rss_kib(pid));
    println!(
        "trueip-sidecar resident memory: {before} KiB at start, {peak} KiB with {CONNECTIONS} \
         held and {CONNECTIONS} oversized heads (+{} KiB)",
        peak - before
    );
    drop(held);
    let _ = child.kill();
    let _ = child.wait();

    assert!(
        peak < CHART_LIMIT_MIB * 1024 * 3 / 4,
        "{peak} KiB is more than 3/4 of the chart's {CHART_LIMIT_MIB} MiB limit"
    );
    assert!(
        peak - before < 24 * 1024,
        "{CONNECTIONS} + {CONNECTIONS} hostile connections cost {} KiB",
        peak - before
    );
    assert!(
        answered >= CONNECTIONS * 9 / 10,
        "only {answered} of {CONNECTIONS} oversized heads were answered 431"
    );
}
