//! The soak: client → HAProxy `send-proxy-v2` → trueip-sidecar (`--mode none`) → echo app, for
//! a fixed time, with faults injected.
//!
//! * **Short connections** at a steady rate through `sidecar-short` to `app-short`: random
//!   payloads, the echo compared byte for byte (checksummed end to end, both directions).
//! * **Long streams** through `sidecar-long` to `app-long`, writing and reading for the whole
//!   run; at the end their byte counts and FNV-1a checksums must match.
//! * **App restart** half-way: `app-short` is killed and started again after a pause.
//!   Connections meanwhile must fail cleanly (closed, what was echoed a prefix of what was
//!   sent, never a hang), and connections after it must succeed again.
//! * **Graceful drain** at the end: `sidecar-long` gets SIGTERM while the long streams are
//!   still sending; they must complete intact, and the sidecar must exit once they have.
//! * **Resources**: the sidecars' descriptor count and RSS are sampled every second. At two
//!   quiet points (short traffic paused, long streams open), after the warm-up and before the
//!   drain, the descriptor count must be equal and RSS may grow at most [`RSS_GROWTH_KIB`].

use std::{
    fmt::Write as _,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    app::{EchoApp, Fnv1a},
    haproxy::{self, Route, SendProxy},
    sidecar,
    stats::{Usage, quantile},
    topology::{Family, Topology},
};
use trueip_test_kit::process::Proc;

/// Largest RSS growth of a sidecar between the two quiet points, in KiB (allocator slack and
/// tokio's per-worker caches; a per-connection leak at the soak's rate exceeds it quickly).
pub const RSS_GROWTH_KIB: u64 = 16 * 1024;

/// Time the app stays down during its restart.
const APP_DOWN: Duration = Duration::from_secs(2);

/// A connection started this long before the kill, or finishing this long after the restart,
/// may still fail (it was in flight).
const FAULT_MARGIN: Duration = Duration::from_secs(2);

/// Read/write timeout of every client socket: longer means hung.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Long streams keep sending this long after the SIGTERM.
const AFTER_SIGTERM: Duration = Duration::from_secs(2);

/// How long, after the quiet pause, the short sidecar's descriptors may take to come back to
/// where they were (connections torn down late on a loaded machine); a leak outlasts it.
const SETTLE: Duration = Duration::from_secs(5);

const APP_SHORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9000);
const APP_LONG: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9001);
const TRUSTED_LB: [&str; 1] = ["192.0.2.1/32"];

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Total duration of the traffic phase.
    pub duration: Duration,
    /// Short connections per second.
    pub rate: u32,
    /// Long streams held open for the whole run.
    pub long_streams: usize,
    /// Bytes per second each long stream sends.
    pub stream_rate: u64,
}

impl Config {
    /// A soak of `duration` at the default load.
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            rate: 40,
            long_streams: 3,
            stream_rate: 256 * 1024,
        }
    }
}

/// One short connection.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    started: Duration,
    ended: Duration,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The whole payload came back.
    Ok,
    /// Closed early; what came back is a prefix of the payload.
    CleanFail,
    /// Bytes came back that were not sent.
    Corrupt,
    /// Nothing happened within [`IO_TIMEOUT`].
    Hung,
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The configuration's duration, seconds.
    pub seconds: u64,
    /// Short connections attempted / echoed intact / failed cleanly during the restart.
    pub short_total: usize,
    /// Echoed intact.
    pub short_ok: usize,
    /// Failed cleanly inside the restart window.
    pub short_failed_in_restart: usize,
    /// Bytes through short connections (each way).
    pub short_bytes: u64,
    /// p50 / p99 short connection time, ms.
    pub short_p50_ms: f64,
    /// p99.
    pub short_p99_ms: f64,
    /// Bytes each long stream sent and got back intact.
    pub long_bytes: Vec<u64>,
    /// Bytes the long streams sent after the SIGTERM (and got back intact).
    pub bytes_after_sigterm: u64,
    /// How long the draining sidecar lived after its last stream closed, ms.
    pub drain_exit_ms: u128,
    /// Descriptors of sidecar-short at the quiet points, and the range over all samples.
    pub short_fds: (usize, usize, usize, usize),
    /// RSS of sidecar-short at the quiet points, and the maximum, KiB.
    pub short_rss: (u64, u64, u64),
    /// Descriptors of sidecar-long at the quiet points.
    pub long_fds: (usize, usize),
    /// RSS of sidecar-long at the quiet points, KiB.
    pub long_rss: (u64, u64),
    /// When the app was killed and when it listened again, seconds into the run.
    pub restart: (f64, f64),
}

impl Report {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let r = self;
        // Writing to a String cannot fail.
        let _ = write!(
            md,
            "| figure | value |\n|---|---|\n\
             | duration | {} s |\n\
             | short connections (HAProxy → sidecar → app) | {} attempted, {} echoed intact, {} failed cleanly during the app restart, 0 corrupt, 0 hung |\n\
             | short bytes (each way, checksummed) | {} |\n\
             | short connection time p50 / p99 | {:.2} ms / {:.2} ms |\n\
             | long streams, bytes each (checksummed) | {:?} |\n\
             | app killed / listening again | {:.1} s / {:.1} s |\n\
             | bytes sent by the long streams after SIGTERM (drained intact) | {} |\n\
             | sidecar exit after its last stream closed | {} ms |\n\
             | sidecar-short FDs: quiet start / quiet end / min / max | {} / {} / {} / {} |\n\
             | sidecar-short RSS: quiet start / quiet end / max | {} / {} / {} KiB (bound: +{} KiB) |\n\
             | sidecar-long FDs: quiet start / quiet end | {} / {} |\n\
             | sidecar-long RSS: quiet start / quiet end | {} / {} KiB |\n",
            r.seconds,
            r.short_total,
            r.short_ok,
            r.short_failed_in_restart,
            r.short_bytes,
            r.short_p50_ms,
            r.short_p99_ms,
            r.long_bytes,
            r.restart.0,
            r.restart.1,
            r.bytes_after_sigterm,
            r.drain_exit_ms,
            r.short_fds.0,
            r.short_fds.1,
            r.short_fds.2,
            r.short_fds.3,
            r.short_rss.0,
            r.short_rss.1,
            r.short_rss.2,
            RSS_GROWTH_KIB,
            r.long_fds.0,
            r.long_fds.1,
            r.long_rss.0,
            r.long_rss.1,
        );
        md
    }
}

/// A small xorshift generator: payloads that cannot pass by accident, cheaply.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::from(t.subsec_nanos()) | 1
}

/// The soak's processes: two apps behind two sidecars behind one HAProxy.
struct Rig {
    app_short: EchoApp,
    _app_long: EchoApp,
    side_short: Proc,
    side_long: Proc,
    _haproxy: Proc,
    lb_short: SocketAddr,
    lb_long: SocketAddr,
}

impl Rig {
    /// Starts every process of the soak in `topo`.
    fn start(topo: &Topology) -> Result<Self> {
        let app_short = EchoApp::start_named(topo, "app-short", &topo.pod, &[APP_SHORT], None)?;
        let app_long = EchoApp::start_named(topo, "app-long", &topo.pod, &[APP_LONG], None)?;
        let short_listen = SocketAddr::new(Family::V4.pod(), 8080);
        let long_listen = SocketAddr::new(Family::V4.pod(), 8081);
        let side_short = sidecar::start(
            topo,
            &topo.pod,
            sidecar::launch(
                "sidecar-short",
                short_listen,
                APP_SHORT,
                "none",
                &TRUSTED_LB,
            )?
            .env("RUST_LOG", "warn"),
            short_listen,
        )?;
        let side_long = sidecar::start(
            topo,
            &topo.pod,
            sidecar::launch("sidecar-long", long_listen, APP_LONG, "none", &TRUSTED_LB)?
                .env("RUST_LOG", "info"),
            long_listen,
        )?;
        let lb_short = SocketAddr::new(Family::V4.lb_front(), 80);
        let lb_long = SocketAddr::new(Family::V4.lb_front(), 81);
        let haproxy = haproxy::start(
            topo,
            &[
                Route {
                    bind: lb_short,
                    server: short_listen,
                    send_proxy: SendProxy::V2,
                },
                Route {
                    bind: lb_long,
                    server: long_listen,
                    send_proxy: SendProxy::V2,
                },
            ],
        )?;
        Ok(Self {
            app_short,
            _app_long: app_long,
            side_short,
            side_long,
            _haproxy: haproxy,
            lb_short,
            lb_long,
        })
    }
}

/// Runs the soak; fails with the first broken promise (see the module docs).
pub fn run(cfg: Config) -> Result<Report> {
    let topo = Topology::new()?;
    let Rig {
        mut app_short,
        _app_long,
        side_short,
        mut side_long,
        _haproxy,
        lb_short,
        lb_long,
    } = Rig::start(&topo)?;
    let t0 = Instant::now();
    let stop_short = AtomicBool::new(false);
    let pause_short = AtomicBool::new(false);
    let stop_long = AtomicBool::new(false);
    let attempts = Mutex::new(Vec::<Attempt>::new());
    let short_bytes = AtomicU64::new(0);
    let mut report = Report {
        seconds: cfg.duration.as_secs(),
        ..Report::default()
    };
    let samples = Mutex::new(Vec::<Usage>::new());
    let sampling = AtomicBool::new(true);
    let short_pid = side_short.pid();
    let long_pid = side_long.pid();

    let outcome: Result<()> = thread::scope(|s| {
        // Client threads are created inside the client namespace; threads they spawn inherit it.
        let short = s.spawn(|| {
            topo.client.run(|| {
                short_traffic(
                    &cfg,
                    t0,
                    lb_short,
                    &stop_short,
                    &pause_short,
                    &attempts,
                    &short_bytes,
                );
            })
        });
        let streams: Vec<_> = (0..cfg.long_streams)
            .map(|i| {
                let stop = &stop_long;
                let topo = &topo;
                s.spawn(move || -> Result<(u64, u64)> {
                    let stream = topo
                        .client
                        .run(|| TcpStream::connect_timeout(&lb_long, IO_TIMEOUT))??;
                    long_stream(stream, cfg.stream_rate, stop, i)
                })
            })
            .collect();
        let sampler = s.spawn(|| {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(u) = Usage::of(short_pid) {
                    samples.lock().expect("no panics while locked").push(u);
                }
                thread::sleep(Duration::from_secs(1));
            }
        });

        let warmup = (cfg.duration / 10).max(Duration::from_secs(2));
        thread::sleep(warmup);
        let (short_start, long_start) = quiet(&pause_short, short_pid, long_pid, |_| true)?;

        // The fault: the app dies half-way and comes back.
        thread::sleep((cfg.duration / 2).saturating_sub(t0.elapsed()));
        report.restart = restart(&topo, &mut app_short, t0)?;

        thread::sleep(
            cfg.duration
                .saturating_sub(t0.elapsed() + Duration::from_secs(2)),
        );
        let (short_end, long_end) = quiet(&pause_short, short_pid, long_pid, |u| {
            u.fds <= short_start.fds
        })?;
        stop_short.store(true, Ordering::SeqCst);
        short
            .join()
            .map_err(|_| anyhow::anyhow!("the short traffic panicked"))??;

        // The drain: SIGTERM while the long streams still send.
        drain(&mut side_long, streams, &stop_long, &mut report)?;

        sampling.store(false, Ordering::Relaxed);
        sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
        let samples = samples.lock().expect("no panics while locked");
        report.record_usage((short_start, short_end), (long_start, long_end), &samples);
        Ok(())
    });
    outcome?;

    let attempts = attempts.into_inner().expect("no panics while locked");
    report.judge(&attempts, short_bytes.load(Ordering::Relaxed))?;
    drop(app_short);
    Ok(report)
}

/// The two sidecars' usage at a quiet point: short traffic paused until in-flight
/// connections have finished (the short sidecar read once its usage has `settled`, or after
/// [`SETTLE`]), long streams still open.
fn quiet(
    pause: &AtomicBool,
    short_pid: u32,
    long_pid: u32,
    settled: impl Fn(&Usage) -> bool,
) -> Result<(Usage, Usage)> {
    pause.store(true, Ordering::SeqCst);
    // In-flight short connections finish well within this.
    thread::sleep(Duration::from_millis(1500));
    // On a loaded machine the last ones may take longer to be torn down: the short sidecar's
    // usage is read again until it has `settled`, for a while. A leak stays past that.
    let deadline = Instant::now() + SETTLE;
    let mut short = Usage::of(short_pid)?;
    while !settled(&short) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        short = Usage::of(short_pid)?;
    }
    let usage = (short, Usage::of(long_pid)?);
    pause.store(false, Ordering::SeqCst);
    Ok(usage)
}

/// Kills the short app and starts it again after [`APP_DOWN`]: when it died and when it was
/// back, in seconds since `t0`.
fn restart(topo: &Topology, app: &mut EchoApp, t0: Instant) -> Result<(f64, f64)> {
    let killed = t0.elapsed();
    app.kill();
    thread::sleep(APP_DOWN);
    *app = EchoApp::start_named(topo, "app-short", &topo.pod, &[APP_SHORT], None)?;
    Ok((killed.as_secs_f64(), t0.elapsed().as_secs_f64()))
}

/// SIGTERM to `side_long` while its streams still send, then the streams stopped and joined:
/// their bytes, what they sent after the signal, and how long the sidecar took to exit.
fn drain(
    side_long: &mut Proc,
    streams: Vec<thread::ScopedJoinHandle<'_, Result<(u64, u64)>>>,
    stop_long: &AtomicBool,
    report: &mut Report,
) -> Result<()> {
    side_long.terminate();
    let sigterm = Instant::now();
    thread::sleep(AFTER_SIGTERM);
    stop_long.store(true, Ordering::SeqCst);
    let mut after = 0;
    for stream in streams {
        let (bytes, sent_after) = stream
            .join()
            .map_err(|_| anyhow::anyhow!("a long stream panicked"))??;
        report.long_bytes.push(bytes);
        after += sent_after;
    }
    let closed = Instant::now();
    let status = side_long
        .wait_exit(Duration::from_secs(10))
        .context("sidecar-long still runs 10 s after its streams closed")?;
    report.drain_exit_ms = closed.elapsed().as_millis();
    ensure!(sigterm.elapsed() >= AFTER_SIGTERM, "timing");
    ensure!(
        status.success() || status.code().is_some(),
        "sidecar-long: {status}"
    );
    report.bytes_after_sigterm = after;
    Ok(())
}

// === impl Report ===

impl Report {
    /// The descriptors and RSS of the two sidecars at the quiet points (`short`, `long`: start
    /// and end), and the short sidecar's extremes over `samples`.
    fn record_usage(&mut self, short: (Usage, Usage), long: (Usage, Usage), samples: &[Usage]) {
        let ((short_start, short_end), (long_start, long_end)) = (short, long);
        let fds = samples.iter().map(|u| u.fds);
        self.short_fds = (
            short_start.fds,
            short_end.fds,
            fds.clone().min().unwrap_or(0),
            fds.max().unwrap_or(0),
        );
        self.short_rss = (
            short_start.rss_kib,
            short_end.rss_kib,
            samples.iter().map(|u| u.rss_kib).max().unwrap_or(0),
        );
        self.long_fds = (long_start.fds, long_end.fds);
        self.long_rss = (long_start.rss_kib, long_end.rss_kib);
    }

    /// Sorts the short connections into delivered, failed during the restart and broken, and
    /// checks the promises on them and on the sidecars' descriptors, RSS and drain.
    fn judge(&mut self, attempts: &[Attempt], short_bytes: u64) -> Result<()> {
        let (killed, back) = (
            Duration::from_secs_f64(self.restart.0),
            Duration::from_secs_f64(self.restart.1),
        );
        let window_start = killed.saturating_sub(FAULT_MARGIN);
        let window_end = back + FAULT_MARGIN;
        let mut times: Vec<f64> = Vec::new();
        for a in attempts {
            match a.outcome {
                Outcome::Ok => times.push((a.ended - a.started).as_secs_f64() * 1000.0),
                Outcome::CleanFail if a.ended >= window_start && a.started <= window_end => {
                    self.short_failed_in_restart += 1;
                }
                other => bail!(
                    "a short connection started at {:.2} s ended {other:?} at {:.2} s, outside the \
                     app restart ({:.2} s – {:.2} s)",
                    a.started.as_secs_f64(),
                    a.ended.as_secs_f64(),
                    killed.as_secs_f64(),
                    back.as_secs_f64()
                ),
            }
        }
        times.sort_by(f64::total_cmp);
        self.short_total = attempts.len();
        self.short_ok = times.len();
        self.short_bytes = short_bytes;
        self.short_p50_ms = quantile(&times, 0.5).unwrap_or(0.0);
        self.short_p99_ms = quantile(&times, 0.99).unwrap_or(0.0);
        ensure!(
            self.short_failed_in_restart > 0,
            "no connection failed while the app was down: the restart was not exercised"
        );
        ensure!(
            attempts
                .iter()
                .any(|a| a.started > window_end && a.outcome == Outcome::Ok),
            "no connection succeeded after the app restart"
        );
        ensure!(
            self.short_fds.0 == self.short_fds.1,
            "sidecar-short descriptors grew: {} at the start, {} at the end",
            self.short_fds.0,
            self.short_fds.1
        );
        ensure!(
            self.long_fds.0 == self.long_fds.1,
            "sidecar-long descriptors changed with the same streams open: {:?}",
            self.long_fds
        );
        ensure!(
            self.short_rss.1 <= self.short_rss.0 + RSS_GROWTH_KIB,
            "sidecar-short RSS grew from {} to {} KiB (bound +{RSS_GROWTH_KIB})",
            self.short_rss.0,
            self.short_rss.1
        );
        ensure!(
            self.bytes_after_sigterm > 0,
            "the long streams sent nothing after the SIGTERM"
        );
        Ok(())
    }
}

/// Short connections at `cfg.rate` per second until `stop`, skipping while `pause`.
fn short_traffic(
    cfg: &Config,
    t0: Instant,
    to: SocketAddr,
    stop: &AtomicBool,
    pause: &AtomicBool,
    attempts: &Mutex<Vec<Attempt>>,
    bytes: &AtomicU64,
) {
    let interval = Duration::from_secs(1) / cfg.rate.max(1);
    let workers = 4;
    thread::scope(|s| {
        for w in 0..workers {
            s.spawn(move || {
                let mut rng = Rng(seed() ^ (w + 1));
                let mut next = Instant::now() + interval * u32::try_from(w).unwrap_or(0);
                while !stop.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now < next {
                        thread::sleep(next - now);
                    }
                    next += interval * workers_u32(workers);
                    if pause.load(Ordering::SeqCst) {
                        continue;
                    }
                    let len = usize::try_from(rng.next() % (32 * 1024)).unwrap_or(0) + 1;
                    let mut payload = vec![0; len];
                    rng.fill(&mut payload);
                    let started = t0.elapsed();
                    let outcome = one_exchange(to, &payload);
                    if outcome == Outcome::Ok {
                        bytes.fetch_add(len as u64, Ordering::Relaxed);
                    }
                    attempts
                        .lock()
                        .expect("no panics while locked")
                        .push(Attempt {
                            started,
                            ended: t0.elapsed(),
                            outcome,
                        });
                }
            });
        }
    });
}

fn workers_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(1)
}

/// Sends `payload`, half-closes, reads the echo; classifies what happened.
fn one_exchange(to: SocketAddr, payload: &[u8]) -> Outcome {
    let Ok(stream) = TcpStream::connect_timeout(&to, IO_TIMEOUT) else {
        return Outcome::CleanFail;
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return Outcome::CleanFail;
    };
    let mut reader = stream;
    thread::scope(|s| {
        s.spawn(move || {
            // A write error means the other side closed first; the reader sees how.
            let _ = writer
                .write_all(payload)
                .and_then(|()| writer.shutdown(Shutdown::Write));
        });
        let mut got = Vec::with_capacity(payload.len());
        let result = reader.read_to_end(&mut got);
        if !payload.starts_with(&got) {
            return Outcome::Corrupt;
        }
        match result {
            Ok(_) if got.len() == payload.len() => Outcome::Ok,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Outcome::Hung
            }
            _ => Outcome::CleanFail,
        }
    })
}

/// Streams random bytes at `rate` until `stop`, then half-closes and checks the echo.
/// Returns (bytes, bytes sent after `stop` was first seen... no: after the SIGTERM window).
fn long_stream(stream: TcpStream, rate: u64, stop: &AtomicBool, i: usize) -> Result<(u64, u64)> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = stream;
    let chunk = 16 * 1024;
    let per_chunk = Duration::from_secs_f64(chunk as f64 / rate.max(1) as f64);
    thread::scope(|s| {
        let w = s.spawn(move || -> io::Result<(u64, u64, Vec<u64>)> {
            let mut rng = Rng(seed() ^ (i as u64 + 100));
            let mut hash = Fnv1a::new();
            let mut sent = 0u64;
            let mut buf = vec![0; chunk];
            let mut log = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                rng.fill(&mut buf);
                writer.write_all(&buf)?;
                hash.update(&buf);
                sent += chunk as u64;
                log.push(sent);
                thread::sleep(per_chunk);
            }
            writer.shutdown(Shutdown::Write)?;
            Ok((sent, hash.finish(), log))
        });
        let mut hash = Fnv1a::new();
        let mut got = 0u64;
        let mut buf = vec![0; 64 * 1024];
        let read_result = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    hash.update(&buf[..n]);
                    got += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let (sent, sent_hash, log) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a stream writer panicked"))?
            .with_context(|| format!("long stream {i}: writing"))?;
        read_result.with_context(|| format!("long stream {i}: reading after {got} bytes"))?;
        ensure!(
            got == sent && hash.finish() == sent_hash,
            "long stream {i}: sent {sent} bytes ({sent_hash:016x}), got back {got} ({:016x})",
            hash.finish()
        );
        // Bytes written during the SIGTERM window: the last AFTER_SIGTERM worth of chunks.
        let window = (AFTER_SIGTERM.as_secs_f64() / per_chunk.as_secs_f64()) as usize;
        let after = log.len().min(window) as u64 * chunk as u64;
        Ok((sent, after))
    })
}
