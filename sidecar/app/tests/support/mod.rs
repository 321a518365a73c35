//! Shared set-up for the sidecar's integration tests: a sidecar on loopback in front of a
//! recording app, with its logs captured so tests can assert the reason a connection was closed.

#![allow(dead_code, unreachable_pub, unused_imports)] // each test file uses a different part of this module

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{io::AsyncReadExt, net::TcpStream, sync::oneshot, task::JoinHandle};
use trueip_proxy_header::{Addresses, Command, Header, Tlvs, Transport, Version};
use trueip_sidecar_app::{
    Config, ListenerMetrics, Sidecar, config::ListenerConfig, metrics::Snapshot,
};
pub use trueip_sidecar_test_util::{self as util, App, Behaviour};

/// The client the load balancer reports in test headers.
pub const CLIENT: &str = "203.0.113.7:51234";
/// The destination the client connected to, as the load balancer reports it.
pub const DESTINATION: &str = "198.51.100.1:443";

/// Log lines written while a test runs.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until a log line contains every one of `needles`; panics after a while.
    pub async fn wait_for(&self, needles: &[&str]) -> String {
        for _ in 0..200 {
            if let Some(line) = self
                .text()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no log line with {needles:?} in:\n{}", self.text());
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running sidecar with one listener.
pub struct Harness {
    pub addr: SocketAddr,
    pub metrics: Arc<ListenerMetrics>,
    pub logs: Logs,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<usize>>,
    _log_guard: tracing::subscriber::DefaultGuard,
}

impl Harness {
    /// Starts a sidecar in front of `upstream`, trusting loopback, with `tune` applied.
    pub async fn start(upstream: SocketAddr, tune: impl FnOnce(&mut ListenerConfig)) -> Self {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);

        let mut listener = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), upstream);
        listener.trusted_sources = vec!["127.0.0.0/8".parse().unwrap()];
        tune(&mut listener);
        let mut config = Config::single(listener);
        config.drain_timeout = Duration::from_secs(5);
        config.validate().expect("test config is valid");
        let sidecar = Sidecar::bind(&config).expect("sidecar binds");
        let addr = sidecar.local_addrs()[0].1;
        let metrics = sidecar.metrics()[0].1.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sidecar.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics,
            logs,
            stop: Some(stop),
            task: Some(task),
            _log_guard: guard,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.metrics.snapshot()
    }

    /// Waits until `accepted` connections have closed, so counters are final.
    pub async fn settled(&self, accepted: u64) -> Snapshot {
        for _ in 0..400 {
            let s = self.snapshot();
            if s.accepted >= accepted && s.active == 0 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("connections did not settle: {:?}", self.snapshot());
    }

    /// Stops accepting and drains; returns the number of connections cut at the deadline.
    pub async fn shutdown(&mut self) -> usize {
        let _ = self.stop.take().expect("running").send(());
        self.task
            .take()
            .expect("running")
            .await
            .expect("sidecar task")
    }
}

/// A v2 PROXY header for [`CLIENT`] → [`DESTINATION`] with `tlvs`.
pub fn v2_header(tlvs: Tlvs, crc32c: bool) -> Vec<u8> {
    proxy_header(Version::V2, tlvs).to_v2(crc32c).unwrap()
}

/// A v1 PROXY header for [`CLIENT`] → [`DESTINATION`].
pub fn v1_header() -> Vec<u8> {
    proxy_header(Version::V1, Tlvs::default()).to_v1()
}

pub fn proxy_header(version: Version, tlvs: Tlvs) -> Header {
    Header {
        version,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: CLIENT.parse().unwrap(),
            destination: DESTINATION.parse().unwrap(),
        },
        tlvs,
    }
}

/// Reads until `until` appears or the peer closes; panics after 10 s without either.
pub async fn read_until(c: &mut TcpStream, until: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains(until) {
        match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read failed: {e}"),
            Err(_) => panic!(
                "no {until:?} within 10 s; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}
