//! nginx (the Debian package) as the unmodified app in the pod, run from the repository's
//! `examples/nginx/nginx.conf` — the file users read is the file the tests run.
//!
//! The example uses paths relative to nginx's prefix, so "rendering" it is choosing the
//! prefix: a directory in the topology's scratch space that receives `nginx.pid`, `logs/` and
//! `tmp/`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::topology::Topology;
use trueip_test_kit::{
    cgroup::Cgroup,
    process::{Launch, Proc},
    run::wait_for,
};

/// `examples/nginx/nginx.conf`, embedded so that the demo binary runs from anywhere.
pub const EXAMPLE_CONF: &str = include_str!("../../examples/nginx/nginx.conf");

/// The example's `proxy_protocol` server (`127.0.0.1:8081`), for the proxy-v1/v2 modes.
pub const PROXY_PROTOCOL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// The example's plain server port (all addresses), for the eBPF mode and for no trueip at all.
pub const PLAIN_PORT: u16 = 8082;

/// The server that believes `X-Forwarded-For` from loopback (realip), behind `--mode http`.
pub const REALIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8083);

/// How long nginx gets to start, and a request to reach its log.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx in the pod namespace.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
    prefix: PathBuf,
}

impl Nginx {
    /// Starts nginx from the example configuration in the pod namespace (inside `cgroup` when
    /// given, so that eBPF programs attached there see its sockets) and waits for its servers.
    pub fn start(topo: &Topology, cgroup: Option<&Cgroup>) -> Result<Self> {
        let prefix = topo.dir().join("nginx");
        for dir in ["logs", "tmp"] {
            std::fs::create_dir_all(prefix.join(dir))
                .with_context(|| format!("creating {}/{dir}", prefix.display()))?;
        }
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, EXAMPLE_CONF)
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut launch = Launch::new("nginx", "nginx")
            .args([
                "-p".to_owned(),
                format!("{}/", prefix.display()),
                "-c".to_owned(),
            ])
            .args([&conf])
            .netns(&topo.pod);
        if let Some(cgroup) = cgroup {
            launch = launch.cgroup(cgroup);
        }
        let mut proc = launch.spawn(topo.dir())?;
        let plain_v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PLAIN_PORT);
        let plain_v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PLAIN_PORT);
        for addr in [PROXY_PROTOCOL, plain_v4, plain_v6, REALIP] {
            proc.wait_listening(&topo.pod, addr, TIMEOUT)?;
        }
        Ok(Self { proc, prefix })
    }

    /// The process, e.g. to check it still runs.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Everything the `proxy_protocol` server (8081) has logged.
    pub fn proxy_protocol_log(&self) -> String {
        self.read_log("proxy_protocol.log")
    }

    /// Everything the plain server (8082) has logged, in the default `combined` format.
    pub fn access_log(&self) -> String {
        self.read_log("access.log")
    }

    /// Waits for the `proxy_protocol` server's log line of the request for `path`.
    pub fn proxy_protocol_line(&self, path: &str) -> Result<String> {
        self.wait_line("proxy_protocol.log", path)
    }

    /// Waits for the plain server's log line of the request for `path`.
    pub fn access_line(&self, path: &str) -> Result<String> {
        self.wait_line("access.log", path)
    }

    /// Waits for the realip server's (8083) log line of the request for `path`.
    pub fn realip_line(&self, path: &str) -> Result<String> {
        self.wait_line("realip.log", path)
    }

    fn read_log(&self, name: &str) -> String {
        std::fs::read(self.prefix.join("logs").join(name))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// nginx writes the line when the response is done, which can be just after curl returns.
    fn wait_line(&self, name: &str, path: &str) -> Result<String> {
        let request = format!("\"GET {path} ");
        wait_for(&format!("nginx to log {path} in {name}"), TIMEOUT, || {
            Ok(self
                .read_log(name)
                .lines()
                .find(|line| line.contains(&request))
                .map(str::to_owned))
        })
        .with_context(|| {
            format!(
                "{name} so far:\n{}\nnginx's output:\n{}",
                self.read_log(name),
                self.proc.log_tail()
            )
        })
    }
}

/// The client a `trueip_proxy_protocol` log line names
/// (`$proxy_protocol_addr:$proxy_protocol_port`).
pub fn logged_client(line: &str) -> Option<SocketAddr> {
    let first = line.split_whitespace().next()?;
    let (ip, port) = first.rsplit_once(':')?;
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

/// The peer a `combined` log line names (`$remote_addr`, the first field).
pub fn logged_remote_addr(line: &str) -> Option<IpAddr> {
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example_log_formats() {
        let v4 = r#"203.0.113.7:40048 via 127.0.0.1 [25/Nov/2026:10:22:08 +0000] "GET / HTTP/1.1" 200 18"#;
        let v6 = r#"2001:db8:c::7:58764 via 127.0.0.1 [25/Nov/2026:10:22:08 +0000] "GET / HTTP/1.1" 200 20"#;
        assert_eq!(
            logged_client(v4),
            Some("203.0.113.7:40048".parse().unwrap())
        );
        assert_eq!(
            logged_client(v6),
            Some("[2001:db8:c::7]:58764".parse().unwrap())
        );
        let combined = r#"2001:db8:b::1 - - [25/Nov/2026:10:22:08 +0000] "GET / HTTP/1.1" 200 20 "-" "curl/7.88.1""#;
        assert_eq!(
            logged_remote_addr(combined),
            Some("2001:db8:b::1".parse().unwrap())
        );
    }

    #[test]
    fn the_example_serves_the_documented_ports() {
        assert!(EXAMPLE_CONF.contains(&format!("listen {PROXY_PROTOCOL} proxy_protocol;")));
        assert!(EXAMPLE_CONF.contains(&format!("listen {PLAIN_PORT};")));
        assert!(EXAMPLE_CONF.contains(&format!("listen [::]:{PLAIN_PORT};")));
    }
}
