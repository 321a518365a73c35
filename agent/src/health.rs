//! `/healthz` (the process answers) and `/readyz` (programs loaded, socket listening) for the
//! kubelet's probes: a minimal HTTP/1.1 responder, one request per connection.

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

/// Probes are tiny; anything slower or larger is not a probe.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 2048;

/// Serves the probes on `listener` forever.
pub(crate) async fn serve(listener: TcpListener, ready: Arc<AtomicBool>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ready = Arc::clone(&ready);
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &ready).await {
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

async fn answer(mut stream: TcpStream, ready: &AtomicBool) -> std::io::Result<()> {
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
    let (status, body) = route(&buf, ready.load(Ordering::Acquire));
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !buf.starts_with(b"HEAD ") {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Status line and body for a request head.
fn route(head: &[u8], ready: bool) -> (&'static str, &'static str) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    match (method, path) {
        (Some(b"GET" | b"HEAD"), Some(b"/healthz")) => ("200 OK", "ok\n"),
        (Some(b"GET" | b"HEAD"), Some(b"/readyz")) if ready => ("200 OK", "ready\n"),
        (Some(b"GET" | b"HEAD"), Some(b"/readyz")) => ("503 Service Unavailable", "not ready\n"),
        _ => ("404 Not Found", "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n", false).0, "200 OK");
        assert_eq!(
            route(b"GET /readyz HTTP/1.1\r\n\r\n", false).0,
            "503 Service Unavailable"
        );
        assert_eq!(
            route(b"GET /readyz?verbose HTTP/1.1\r\n\r\n", true).0,
            "200 OK"
        );
        assert_eq!(
            route(b"POST /readyz HTTP/1.1\r\n\r\n", true).0,
            "404 Not Found"
        );
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\n\r\n", true).0,
            "404 Not Found"
        );
        assert_eq!(route(b"", true).0, "404 Not Found");
    }

    #[tokio::test]
    async fn answers_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(serve(listener, Arc::clone(&ready)));
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
    }
}
