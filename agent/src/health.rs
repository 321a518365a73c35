//! `/healthz` (the process answers) and `/readyz` (programs loaded, socket listening) for the
//! kubelet's probes, and `/metrics` for Prometheus: a minimal HTTP/1.1 responder, one request per
//! connection.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::metrics::{AgentMetrics, OPENMETRICS};

/// Probes are tiny; anything slower or larger is not a probe.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 2048;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Healthz,
    Readyz,
    Metrics,
    NotFound,
}

/// Serves the probes and the metrics on `listener` forever.
pub(crate) async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    metrics: Arc<AgentMetrics>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ready = Arc::clone(&ready);
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &ready, metrics).await {
                        tracing::debug!(error = %e, "health probe connection failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a health probe failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(
    mut stream: TcpStream,
    ready: &AtomicBool,
    metrics: Arc<AgentMetrics>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 512];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        std::io::Result::Ok(())
    })
    .await;
    if !matches!(head, Ok(Ok(()))) {
        return Ok(());
    }
    let ready = ready.load(Ordering::Acquire);
    let (status, content_type, body) = match route(&buf) {
        Page::Healthz => ("200 OK", TEXT, "ok\n".to_owned()),
        Page::Readyz if ready => ("200 OK", TEXT, "ready\n".to_owned()),
        Page::Readyz => ("503 Service Unavailable", TEXT, "not ready\n".to_owned()),
        // Reading the maps takes syscalls and the registry's lock: off the runtime's thread.
        Page::Metrics => match tokio::task::spawn_blocking(move || metrics.scrape(ready)).await {
            Ok(body) => ("200 OK", OPENMETRICS, body),
            Err(e) => {
                tracing::error!(error = %e, "reading the metrics failed");
                (
                    "500 Internal Server Error",
                    TEXT,
                    "metrics unavailable\n".to_owned(),
                )
            }
        },
        Page::NotFound => ("404 Not Found", TEXT, "not found\n".to_owned()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !buf.starts_with(b"HEAD ") {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The content type of the probes' answers.
const TEXT: &str = "text/plain";

/// The page a request head asks for.
fn route(head: &[u8]) -> Page {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET" | b"HEAD"), Some(b"/healthz")) => Page::Healthz,
        (Some(b"GET" | b"HEAD"), Some(b"/readyz")) => Page::Readyz,
        (Some(b"GET" | b"HEAD"), Some(b"/metrics")) => Page::Metrics,
        _ => Page::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n"), Page::Healthz);
        assert_eq!(route(b"GET /readyz HTTP/1.1\r\n\r\n"), Page::Readyz);
        assert_eq!(route(b"GET /readyz?verbose HTTP/1.1\r\n\r\n"), Page::Readyz);
        assert_eq!(route(b"POST /readyz HTTP/1.1\r\n\r\n"), Page::NotFound);
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Page::Metrics);
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Page::Metrics);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Page::NotFound);
        assert_eq!(route(b""), Page::NotFound);
    }

    #[tokio::test]
    async fn answers_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(AgentMetrics::default());
        tokio::spawn(serve(listener, Arc::clone(&ready), metrics));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Release);
        let out = get("/readyz").await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nready\n"));
        let out = get("/metrics").await;
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("Content-Type: {OPENMETRICS}\r\n")),
            "{head}"
        );
        assert!(body.contains("trueip_agent_ready 1\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
