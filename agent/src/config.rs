//! Command line (every flag also reads a `TRUEIP_*` environment variable, which is how the Helm
//! chart's DaemonSet configures the agent).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use trueip_redirect_common::{MAX_PODS, POD_MAP_DEFAULT_ENTRIES};

/// trueip node agent: loads trueip's eBPF programs, attaches them to each pod's cgroup and hands
/// every sidecar its own pod's restore map over a Unix socket.
#[derive(Debug, Clone, Parser)]
#[command(name = "trueip-agent", version)]
pub(crate) struct Opt {
    /// Directory on a bpffs where programs, maps and links are pinned. Pins survive agent
    /// restarts: a restarted agent re-finds them and nothing is detached.
    #[arg(long, env = "TRUEIP_BPFFS_DIR", default_value = "/sys/fs/bpf/trueip")]
    pub(crate) bpffs_dir: PathBuf,

    /// Unix socket (SOCK_SEQPACKET) sidecars connect to for their pod's map.
    #[arg(
        long,
        env = "TRUEIP_AGENT_SOCKET",
        default_value = "/run/trueip/agent.sock"
    )]
    pub(crate) socket: PathBuf,

    /// Permissions of the socket, octal. The agent identifies every caller's pod from the kernel
    /// (SO_PEERCRED, a pidfd) and refuses callers that are not pods; the permissions keep
    /// everyone else from even asking: root and --socket-group (the sidecars' group) only.
    #[arg(long, env = "TRUEIP_SOCKET_MODE", default_value = "660", value_parser = parse_mode)]
    pub(crate) socket_mode: u32,

    /// Group (numeric gid) that owns the socket: the injected sidecars' group (the chart's
    /// `sidecar.runAsGroup`). Default: root's group, so only root may connect.
    #[arg(long, env = "TRUEIP_SOCKET_GROUP")]
    pub(crate) socket_group: Option<u32>,

    /// Address of the `/healthz` and `/readyz` HTTP endpoints.
    #[arg(long, env = "TRUEIP_HEALTH_LISTEN", default_value = "127.0.0.1:9901")]
    pub(crate) health_listen: SocketAddr,

    /// The cgroup v2 mount. Default: detected (`/sys/fs/cgroup`, else `/sys/fs/cgroup/unified`).
    #[arg(long, env = "TRUEIP_CGROUP_ROOT")]
    pub(crate) cgroup_root: Option<PathBuf>,

    /// Which cgroup the programs are attached to for a calling sidecar: `own` = the caller's
    /// cgroup, `parent` = its parent (in Kubernetes each container has its own cgroup below the
    /// pod's), `auto` = `parent` for a caller in a Kubernetes pod's cgroup
    /// (`/kubepods…/<pod>/<container>`), and every other caller is refused. `own` and `parent`
    /// serve any cgroup (tests, the demo). The root cgroup is always refused (that would be
    /// node-wide), and so is a caller in the node's network namespace, whatever the mode.
    #[arg(long, env = "TRUEIP_POD_CGROUP", value_enum, default_value_t = PodCgroupMode::Auto)]
    pub(crate) pod_cgroup: PodCgroupMode,

    /// Capacity of each pod's map (live restored connections per pod). Inserting beyond it fails
    /// with a distinct "map full" error in the sidecar. Applies to maps created from now on.
    #[arg(long, env = "TRUEIP_MAP_MAX_ENTRIES", default_value_t = POD_MAP_DEFAULT_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) map_max_entries: u32,

    /// Capacity of the node-wide table of pods (used when the table is first created).
    #[arg(long, env = "TRUEIP_MAX_PODS", default_value_t = MAX_PODS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_pods: u32,

    /// Also attach getsockname4/6, so that the app's getsockname() returns the original
    /// destination named by the PROXY header (off by default: most apps expect their own address).
    #[arg(long, env = "TRUEIP_GETSOCKNAME")]
    pub(crate) getsockname: bool,

    /// Also attach recvmsg4/6 and sendmsg4/6, for sidecar UDP listeners in `ebpf` mode: the
    /// app's recvfrom() returns the client named by the PROXY header, and its replies to that
    /// client go back through the sidecar (off by default: these hooks run on every UDP
    /// recvfrom/sendto in the pods).
    #[arg(long, env = "TRUEIP_UDP")]
    pub(crate) udp: bool,

    /// Steering: what connections to a steered app port get while the pod's sidecar listener is
    /// gone (the sidecar stopped or crashed): `open` lets them reach the app directly, as the
    /// load balancer sent them (its PROXY header in front, which an app that parses PROXY
    /// believes: anyone who can reach the pod could then name any client), `closed` refuses
    /// them (the Helm chart's default). Both are counted and logged every --sweep-interval.
    #[arg(long, env = "TRUEIP_STEER_WHEN_GONE", value_enum, default_value_t = WhenGone::Open)]
    pub(crate) steer_when_gone: WhenGone,

    /// How often pods whose cgroup is gone are cleaned up (map, table entry, links), and
    /// steering counters are reported.
    #[arg(long, env = "TRUEIP_SWEEP_INTERVAL", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub(crate) sweep_interval: Duration,

    /// Log format: `text` or `json` (the level comes from RUST_LOG, default `info`).
    #[arg(long, env = "TRUEIP_LOG_FORMAT", value_name = "FORMAT", default_value = "text",
          value_parser = |s: &str| trueip_telemetry::LogFormat::parse(s).map(|_| s.to_owned()))]
    pub(crate) log_format: String,
}

/// Where a caller's pod cgroup is, relative to the caller's own cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PodCgroupMode {
    /// `parent` for Kubernetes pod cgroups (`/kubepods…/<pod>/<container>`); anything else is
    /// refused.
    Auto,
    /// The caller's own cgroup.
    Own,
    /// The parent of the caller's cgroup.
    Parent,
}

/// What a steered connection gets while the sidecar's listener is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WhenGone {
    /// Fail open: the connection reaches the app.
    Open,
    /// Fail closed: the connection is refused (reset).
    Closed,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "{s:?} is not an octal permission mode like 666 or 660"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Opt::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let opt = Opt::try_parse_from(["trueip-agent"]).unwrap();
        assert_eq!(opt.bpffs_dir, PathBuf::from("/sys/fs/bpf/trueip"));
        assert_eq!(opt.socket, PathBuf::from("/run/trueip/agent.sock"));
        assert_eq!(opt.socket_mode, 0o660);
        assert_eq!(opt.socket_group, None);
        assert_eq!(opt.health_listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(opt.pod_cgroup, PodCgroupMode::Auto);
        assert_eq!(opt.map_max_entries, POD_MAP_DEFAULT_ENTRIES);
        assert!(!opt.getsockname);
        assert_eq!(opt.steer_when_gone, WhenGone::Open);
        assert_eq!(opt.sweep_interval, Duration::from_secs(30));
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("1777").is_err());
        assert!(Opt::try_parse_from(["trueip-agent", "--map-max-entries", "0"]).is_err());
    }
}
