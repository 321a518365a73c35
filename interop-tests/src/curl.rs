//! curl as the client, run inside a namespace (normally the client's).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result};

use trueip_test_kit::{netns::Netns, run};

/// curl's own limit for a whole request; the process is killed a little later regardless.
const MAX_TIME: Duration = Duration::from_secs(10);

/// What curl reports after one request.
#[derive(Debug, Clone)]
pub struct Response {
    /// curl's exit code (0: success, 52: empty reply, 56: connection reset, ...).
    pub exit_code: Option<i32>,
    /// The HTTP status, 0 when there was no response.
    pub http_code: u16,
    /// curl's own address and port for the connection: who the app should see.
    pub local: Option<SocketAddr>,
    /// The response body.
    pub body: String,
    /// curl's error message, if any.
    pub stderr: String,
}

impl Response {
    /// Whether curl succeeded with HTTP 200.
    pub fn is_ok(&self) -> bool {
        self.exit_code == Some(0) && self.http_code == 200
    }
}

/// `GET http://<target><path>` from inside `ns`; with `haproxy_protocol`, curl first sends a
/// PROXY v1 header naming its own connection (`--haproxy-protocol`).
pub fn get(ns: &Netns, target: SocketAddr, path: &str, haproxy_protocol: bool) -> Result<Response> {
    let flags: &[&str] = if haproxy_protocol {
        &["--haproxy-protocol"]
    } else {
        &[]
    };
    get_url(ns, flags, &format!("http://{target}{path}"))
}

/// `GET url` from inside `ns` with extra curl flags (TLS options, `--resolve`, ...).
pub fn get_url(ns: &Netns, flags: &[&str], url: &str) -> Result<Response> {
    let mut cmd = ns.command("curl");
    cmd.args(["--silent", "--show-error", "--globoff", "--max-time"])
        .arg(MAX_TIME.as_secs().to_string())
        .args(["--write-out", "\n%{http_code} %{local_ip} %{local_port}"])
        .args(flags)
        .arg(url);
    let out = run::output(&mut cmd, MAX_TIME + Duration::from_secs(5))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, summary) = stdout
        .rsplit_once('\n')
        .with_context(|| format!("curl printed no summary line: {stdout:?}"))?;
    let mut fields = summary.split_whitespace();
    let http_code = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let ip = fields.next().and_then(|ip| ip.parse::<IpAddr>().ok());
    let port = fields.next().and_then(|p| p.parse::<u16>().ok());
    Ok(Response {
        exit_code: out.status.code(),
        http_code,
        local: ip.zip(port).map(|(ip, port)| SocketAddr::new(ip, port)),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}
