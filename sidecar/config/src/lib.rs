//! The sidecar's configuration: one YAML file with any number of listeners, or the single
//! listener the command line describes.
//!
//! Everything a value can get wrong is caught while deserialising, so the error carries the key
//! and the line (`listeners[0].mode: unknown variant ... at line 4 column 11`); what needs two
//! fields at once is checked by [`Config::validate`], which names the listener and the key.
//!
//! The schema is split by what it describes, each module below the ones that use it: `config`
//! (the file and its shared keys), `listener`, `policies` (the per-listener choices), `tlv`,
//! `udp`, `http` and `limits`; `load` reads, `validate` checks and `write` writes a file (keys
//! at their defaults left out). Serde only: the injector writes each pod's sidecar file with
//! it, and parses it back.

mod config;
mod duration;
mod error;
mod http;
mod limits;
mod listener;
mod load;
mod policies;
mod tlv;
mod udp;
mod validate;
mod write;

pub use self::{
    config::{Config, DEFAULT_AGENT_SOCKET, OtlpConfig, OtlpProtocol, TransparentConfig},
    duration::deserialize as deserialize_duration,
    error::{ConfigError, FileError},
    http::{ClientHeaders, HeaderSlot, HttpConfig, PROXY_HEADERS, TlsConfig, TlvHeaders},
    limits::{AdminConfig, HttpLimits},
    listener::{ListenerConfig, canonical},
    policies::{FastPathMode, HeaderPolicy, MapFullPolicy, Mode, PortInUsePolicy, UntrustedPolicy},
    tlv::TlvKind,
    udp::{DatagramHeader, Protocol},
};

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trueip_proxy_header::kind;

    use super::*;

    const GOOD: &str = "
listeners:
  - name: web
    listen: 0.0.0.0:8080
    upstream: 127.0.0.1:80
    mode: proxy-v2
    trusted_sources: [10.0.0.0/8, 'fd00::/8']
    header_timeout: 2s
    tlv_allow: [authority, 0xEA, 5]
  - listen: '[::]:8443'
    upstream: '[::1]:443'
    header: optional
    trusted_sources: [0.0.0.0/0]
drain_timeout: 10s
";

    #[test]
    fn parses_a_full_file() {
        let c = Config::from_yaml(GOOD).unwrap();
        assert_eq!(c.listeners.len(), 2);
        let web = &c.listeners[0];
        assert_eq!(web.name(), "web");
        assert_eq!(web.mode, Mode::ProxyV2);
        assert_eq!(web.header_timeout, Duration::from_secs(2));
        assert_eq!(
            web.tlv_allow,
            vec![TlvKind(kind::AUTHORITY), TlvKind(0xEA), TlvKind(5)]
        );
        assert!(web.is_trusted("10.1.2.3".parse().unwrap()));
        assert!(web.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!web.is_trusted("192.0.2.1".parse().unwrap()));
        assert_eq!(c.listeners[1].name(), "[::]:8443");
        assert_eq!(c.listeners[1].header, HeaderPolicy::Optional);
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
    }

    #[test]
    fn transparent_mode_and_its_routing() {
        let yaml = "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    \
                    trusted_sources: [0.0.0.0/0]\n    mode: transparent\n    \
                    on_port_in_use: refuse\n";
        let c = Config::from_yaml(yaml).unwrap();
        assert_eq!(c.listeners[0].mode, Mode::Transparent);
        assert_eq!(c.listeners[0].on_port_in_use, PortInUsePolicy::Refuse);
        assert_eq!(c.transparent, TransparentConfig::default());
        let c =
            Config::from_yaml(&format!("{yaml}transparent:\n  table: 7\n  priority: 9\n")).unwrap();
        assert_eq!((c.transparent.table, c.transparent.priority), (7, 9));
        for (extra, key) in [
            ("transparent:\n  table: 254\n", "table"),
            ("transparent:\n  priority: 32766\n", "priority"),
            ("transparent:\n  fwmark: 1\n", "unknown field `fwmark`"),
        ] {
            let e = parse_err(&format!("{yaml}{extra}"));
            assert!(e.contains(key), "{extra} => {e}");
        }
        let e = parse_err(&yaml.replace("127.0.0.1:2", "10.0.0.1:2"));
        assert!(e.contains("upstream") && e.contains("transparent"), "{e}");
        let e = parse_err(
            &yaml
                .replace("transparent", "ebpf")
                .replace("on_port_in_use: refuse", "fallback: transparent"),
        );
        assert!(e.contains("fallback"), "{e}");
    }

    fn parse_err(yaml: &str) -> String {
        trueip_telemetry::error_chain(&Config::from_yaml(yaml).unwrap_err())
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse_err(
            "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    trusted: [10.0.0.0/8]\n",
        );
        assert!(e.contains("unknown field `trusted`"), "{e}");
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        for (yaml, key, line) in [
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    mode: magic\n",
                "mode",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:99999\n    upstream: 127.0.0.1:2\n",
                "listen",
                "line 2",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    trusted_sources: [10.0.0.0/33]\n",
                "trusted_sources",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    header_timeout: soon\n",
                "header_timeout",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    max_connections: 0\n",
                "max_connections",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    tlv_allow: [bogus]\n",
                "tlv_allow",
                "line 4",
            ),
            (
                "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    tlv_allow: [3]\n",
                "tlv_allow",
                "line 4",
            ),
        ] {
            let e = parse_err(yaml);
            assert!(e.contains(key) && e.contains(line), "{yaml}\n=> {e}");
        }
    }

    #[test]
    fn fast_path_is_off_unless_asked_for() {
        let base = "listeners:\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n    \
                    mode: ebpf\n    trusted_sources: [10.0.0.0/8]\n";
        let l = |extra: &str| {
            Config::from_yaml(&format!("{base}{extra}")).map(|c| c.listeners[0].fast_path)
        };
        assert_eq!(l("").unwrap(), FastPathMode::Off);
        assert_eq!(l("    fast_path: sk-msg\n").unwrap(), FastPathMode::SkMsg);
        assert_eq!(l("    fast_path: sk_msg\n").unwrap(), FastPathMode::SkMsg);
        assert_eq!(l("    fast_path: off\n").unwrap(), FastPathMode::Off);
        let e = trueip_telemetry::error_chain(&l("    fast_path: sockmap\n").unwrap_err());
        assert!(e.contains("fast_path") && e.contains("sk-msg"), "{e}");
    }

    #[test]
    fn combinations_are_checked() {
        let base = "listeners:\n  - name: a\n    listen: 0.0.0.0:1\n    upstream: 127.0.0.1:2\n";
        let e = parse_err(base);
        assert!(e.contains("trusted_sources"), "{e}");
        let e = parse_err(&format!("{base}    header: off\n    mode: proxy-v1\n"));
        assert!(e.contains("a: mode"), "{e}");
        let e = parse_err(&format!(
            "{base}    trusted_sources: [0.0.0.0/0]\n    fallback: none\n"
        ));
        assert!(e.contains("fallback"), "{e}");
        let e = parse_err(&format!(
            "{base}    trusted_sources: [0.0.0.0/0]\n    mode: transparent\n    steer: true\n"
        ));
        assert!(e.contains("a: steer") && e.contains("transparent"), "{e}");
        let e = parse_err(&base.replace("127.0.0.1:2", "10.0.0.5:2").replace(
            "upstream: 10.0.0.5:2\n",
            "upstream: 10.0.0.5:2\n    trusted_sources: [0.0.0.0/0]\n    steer: true\n",
        ));
        assert!(e.contains("a: steer") && e.contains("loopback"), "{e}");
        let e = parse_err(&format!(
            "{base}    trusted_sources: [0.0.0.0/0]\n  - listen: 0.0.0.0:1\n    upstream: 127.0.0.1:3\n    trusted_sources: [0.0.0.0/0]\n"
        ));
        assert!(e.contains("is used by another listener"), "{e}");
        assert_eq!(parse_err("listeners: []\n"), "no listeners configured");
    }
}
