//! The log line of a dropped datagram: one per reason per second, however many are dropped.
//! Its own test binary: tracing caches which callsites a subscriber wants process-wide, so a
//! thread-local subscriber only sees every event when no other test runs beside it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::net::UdpSocket;
use trueip_proxy_header::{Addresses, Command, Header, Tlvs, Transport, Version};
use trueip_sidecar_app::{
    Config, Sidecar,
    config::{ListenerConfig, Protocol},
};

/// Log lines written while a test runs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_flood_of_bad_datagrams_logs_one_line_per_second_and_counts_them_all() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut listener =
        ListenerConfig::new("127.0.0.1:0".parse().unwrap(), app.local_addr().unwrap());
    listener.protocol = Protocol::Udp;
    listener.trusted_sources = vec!["127.0.0.0/8".parse().unwrap()];
    let sidecar = Sidecar::bind(&Config::single(listener)).unwrap();
    let addr: SocketAddr = sidecar.local_addrs()[0].1;
    let metrics = sidecar.udp_metrics()[0].1.clone();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sidecar.run(async {
        let _ = stopped.await;
    }));
    let lb = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let truncated = truncated_header();
    for _ in 0..50 {
        lb.send_to(&truncated, addr).await.unwrap();
    }
    for _ in 0..500 {
        if metrics.snapshot().dropped("truncated") == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.snapshot().dropped("truncated"), 50);
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("datagram dropped"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].contains("reason=\"truncated\"") || lines[0].contains("reason=truncated"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("ends inside its PROXY header"),
        "{}",
        lines[0]
    );
}

fn truncated_header() -> Vec<u8> {
    let header = Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Datagram,
        addresses: Addresses::Inet {
            source: "203.0.113.7:1".parse().unwrap(),
            destination: "198.51.100.1:53".parse().unwrap(),
        },
        tlvs: Tlvs::default(),
    };
    header.to_v2(true).unwrap()[..20].to_vec()
}
