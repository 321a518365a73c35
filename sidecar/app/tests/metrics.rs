//! `/metrics` is valid Prometheus text and its counters match the connections a client made.

mod support;

use std::time::Duration;

use support::{App, Behaviour, util, v1_header, v2_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trueip_proxy_header::Tlvs;
use trueip_sidecar_app::{Config, Sidecar, config::ListenerConfig, metrics::RestoreOutcome};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut c = util::connect(addr).await;
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

/// One listener, `web`, in front of `app`, trusting loopback, with the admin endpoint on.
fn with_admin(app: std::net::SocketAddr) -> Config {
    let mut listener = ListenerConfig::new("127.0.0.1:0".parse().unwrap(), app);
    listener.name = Some("web".into());
    listener.trusted_sources = vec!["127.0.0.0/8".parse().unwrap()];
    let mut config = Config::single(listener);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

#[tokio::test]
async fn metrics_endpoint_counts_what_clients_did() {
    let mut app = App::start(Behaviour::Sink).await;
    let config = with_admin(app.addr());
    let sidecar = Sidecar::bind(&config).unwrap();
    let addr = sidecar.local_addrs()[0].1;
    let admin = sidecar.metrics_addr().unwrap();
    let listener_metrics = sidecar.metrics()[0].1.clone();
    tokio::spawn(sidecar.run(std::future::pending()));

    for hdr in [v1_header(), v2_header(Tlvs::default(), true)] {
        let mut c = util::connect(addr).await;
        c.write_all(&[hdr.as_slice(), b"12345"].concat())
            .await
            .unwrap();
        c.shutdown().await.unwrap();
        app.conn().await;
    }
    let mut bad = util::connect(addr).await;
    bad.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(util::closed_without_data(&mut bad, Duration::from_secs(5)).await);
    for _ in 0..200 {
        let s = listener_metrics.snapshot();
        if s.accepted == 3 && s.active == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let response = get(admin, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)));
        match found.map(|s| &s.value) {
            Some(
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v),
            ) => *v,
            other => panic!("{name} {labels:?}: {other:?}\n{body}"),
        }
    };
    let web = [("listener", "web")];
    assert_eq!(value("trueip_connections_accepted_total", &web), 3.0);
    assert_eq!(value("trueip_connections_active", &web), 0.0);
    assert_eq!(
        value(
            "trueip_connections_rejected_total",
            &[("listener", "web"), ("reason", "missing_header")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "trueip_restore_total",
            &[("listener", "web"), ("outcome", "restored")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "trueip_transferred_bytes_total",
            &[("listener", "web"), ("direction", "to_app")]
        ),
        10.0
    );
    assert!(
        body.contains("trueip_header_parse_duration_seconds_count{listener=\"web\"} 2"),
        "two headers decided, in the histogram:\n{body}"
    );
    assert!(get(admin, "/healthz").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn the_admin_endpoint_bounds_idle_and_excess_connections() {
    let app = App::start(Behaviour::Sink).await;
    let mut config = with_admin(app.addr());
    config.admin.header_timeout = Duration::from_millis(300);
    config.admin.max_connections = 2.try_into().unwrap();
    let sidecar = Sidecar::bind(&config).unwrap();
    let admin = sidecar.metrics_addr().unwrap();
    tokio::spawn(sidecar.run(std::future::pending()));

    // Two connections that never send a request hold both slots; a third is closed at once.
    let mut idle = [util::connect(admin).await, util::connect(admin).await];
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut third = util::connect(admin).await;
    assert!(util::closed_without_data(&mut third, Duration::from_secs(5)).await);
    // The idle ones are closed once the header timeout passes, and the slots are free again.
    for c in &mut idle {
        assert!(util::closed_without_data(c, Duration::from_secs(5)).await);
    }
    let response = get(admin, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for line in [
        "trueip_admin_connections_refused_total{reason=\"max_connections\"} 1",
        "trueip_admin_connections_refused_total{reason=\"header_timeout\"} 2",
    ] {
        assert!(response.contains(line), "{line} not in {response}");
    }
}

#[tokio::test]
async fn readyz_lists_the_listeners_and_fails_while_draining() {
    let mut app = App::start(Behaviour::Sink).await;
    let mut config = with_admin(app.addr());
    config.drain_timeout = Duration::from_secs(10);
    let sidecar = Sidecar::bind(&config).unwrap();
    let addr = sidecar.local_addrs()[0].1;
    let admin = sidecar.metrics_addr().unwrap();
    let listener_metrics = sidecar.metrics()[0].1.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(sidecar.run(async {
        let _ = stopped.await;
    }));

    let ready = get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.ends_with("ready\nweb: tcp none\n"), "{ready}");
    // An open connection keeps the drain going after SIGTERM; meanwhile the pod is not ready.
    let mut open = util::connect(addr).await;
    open.write_all(&v2_header(Tlvs::default(), false))
        .await
        .unwrap();
    for _ in 0..100 {
        if listener_metrics
            .snapshot()
            .restored(RestoreOutcome::Restored)
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    let mut draining = String::new();
    for _ in 0..100 {
        draining = get(admin, "/readyz").await;
        if draining.starts_with("HTTP/1.1 503") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(draining.starts_with("HTTP/1.1 503"), "{draining}");
    assert!(draining.contains("draining"), "{draining}");
    assert!(get(admin, "/healthz").await.starts_with("HTTP/1.1 200"));
    drop(open);
    assert_eq!(run.await.unwrap(), 0, "nothing cut");
    app.conn().await;
}
