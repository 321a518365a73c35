//! Writing a configuration as a file the sidecar reads: what the injector puts in a pod's
//! annotation. Keys at their defaults are left out, so the annotation stays about as short as
//! what a user would write by hand, except for what decides whom the sidecar trusts and what
//! the app is told: a listener's addresses, mode, header and trust policy, the agent's socket
//! and (when served) the admin endpoint's bounds are always written, and an `http` listener's
//! section is written whole once any of it differs from the defaults. So a sidecar image of another release, whose defaults may
//! differ, still runs the policy the injector decided; only a section left entirely at its
//! defaults takes the image's (the chart runs the sidecar of its own release).

use serde_norway::{Mapping, Value};

use crate::{config::Config, listener::ListenerConfig, policies::Mode};

/// A listener's keys that are always written, whole.
const LISTENER_POLICY: [&str; 6] = [
    "listen",
    "upstream",
    "mode",
    "header",
    "trusted_sources",
    "untrusted",
];

/// The file's keys that are always written, whole (the listeners are pruned one by one).
const FILE_POLICY: [&str; 2] = ["listeners", "agent_socket"];

impl Config {
    /// The YAML text of this configuration, without the keys at their defaults (but for the
    /// policy keys of the module's description); parsing it back gives this configuration.
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        let mut file = serde_norway::to_value(self)?;
        let defaults = serde_norway::to_value(Self::with_listeners(Vec::new()))?;
        if let Some(Value::Sequence(listeners)) = file.get_mut("listeners") {
            for (written, listener) in listeners.iter_mut().zip(&self.listeners) {
                let default = serde_norway::to_value(ListenerConfig::new(
                    listener.listen,
                    listener.upstream,
                ))?;
                let mut whole = LISTENER_POLICY.to_vec();
                if listener.mode == Mode::Http && written.get("http") != default.get("http") {
                    whole.push("http");
                }
                prune(written, &default, &whole);
            }
        }
        let mut whole = FILE_POLICY.to_vec();
        if self.metrics_listen.is_some() {
            // The bounds of an endpoint that anything reaching the pod can reach.
            whole.push("admin");
        }
        prune(&mut file, &defaults, &whole);
        serde_norway::to_string(&file)
    }
}

/// Removes from the mapping `value` every key whose value is its value in `default`, going
/// into nested mappings that differ (a listener's `limits`, say); the keys in `whole` stay as
/// they are.
fn prune(value: &mut Value, default: &Value, whole: &[&str]) {
    let (Value::Mapping(map), Value::Mapping(defaults)) = (value, default) else {
        return;
    };
    map.retain(|key, value| keep(key, value, defaults, whole));
}

/// Whether `key` stays: one of `whole`, not in `defaults`, or different from it there.
fn keep(key: &Value, value: &mut Value, defaults: &Mapping, whole: &[&str]) -> bool {
    if key.as_str().is_some_and(|k| whole.contains(&k)) {
        return true;
    }
    match defaults.get(key) {
        Some(default) if default == value => false,
        Some(default) => {
            prune(value, default, &[]);
            true
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    /// Every section and a value off its default in each: what a hand-written file may hold.
    const FULL: &str = "
listeners:
  - name: web
    listen: 0.0.0.0:8080
    upstream: 127.0.0.1:80
    mode: http
    header: optional
    trusted_sources: [10.0.0.0/8, 2001:db8::/32]
    header_timeout: 1m 30s
    tlv_allow: [authority, 0xEA, 7]
    http:
      client_headers: append
      x_real_ip: false
      tlv_headers: {authority: x-sni}
      strip_headers: [x-user]
      tls: {cert: /tls/tls.crt, key: /tls/tls.key, reload_interval: 250ms}
      limits: {max_headers: 50}
  - listen: '[::]:5353'
    upstream: 127.0.0.1:53
    protocol: udp
    mode: proxy-v2
    trusted_sources: [10.0.0.0/8]
    datagram_header: first
    max_flows: 10
drain_timeout: 5s
metrics_listen: 0.0.0.0:9090
admin: {max_connections: 4}
otlp: {endpoint: 'http://collector:4317', protocol: grpc}
transparent: {table: 100}
";

    #[test]
    fn a_written_file_reads_back_as_itself() {
        let config = Config::from_yaml(FULL).unwrap();
        let written = config.to_yaml().unwrap();
        let again = Config::from_yaml(&written).unwrap();
        assert_eq!(again.to_yaml().unwrap(), written);
        let listener = &again.listeners[0];
        assert_eq!(listener.header_timeout.as_secs(), 90);
        assert_eq!(
            listener.tlv_allow.iter().map(|k| k.0).collect::<Vec<_>>(),
            [0x02, 0xEA, 7]
        );
        assert_eq!(listener.http.x_real_ip.0, None);
        assert_eq!(listener.http.limits.max_headers, 50);
        assert_eq!(again.listeners[1].max_flows.get(), 10);
        assert_eq!(again.transparent.table, 100);
    }

    #[test]
    fn keys_at_their_defaults_are_left_out() {
        let config = Config::from_yaml(FULL).unwrap();
        let written = config.to_yaml().unwrap();
        for kept in [
            "client_headers: append",
            "max_headers: 50",
            "table: 100",
            "reload_interval: 250ms",
        ] {
            assert!(written.contains(kept), "{kept} missing from\n{written}");
        }
        for left_out in [
            "priority",
            "fast_path",
            "crc32c",
            "flow_idle_timeout",
            "drain_timeout: 30s",
        ] {
            assert!(
                !written.contains(left_out),
                "{left_out} written in\n{written}"
            );
        }
        let minimal =
            "listeners:\n- listen: 0.0.0.0:8080\n  upstream: 127.0.0.1:80\n  header: off\n";
        let with_policy = "listeners:\n- listen: 0.0.0.0:8080\n  upstream: 127.0.0.1:80\n  \
                           mode: none\n  header: off\n  trusted_sources: []\n  untrusted: reject\n\
                           agent_socket: /run/trueip/agent.sock\n";
        assert_eq!(
            Config::from_yaml(minimal).unwrap().to_yaml().unwrap(),
            with_policy
        );
    }

    #[test]
    fn the_policy_is_written_even_at_its_defaults() {
        // An `http` listener's whole section: what the app is told must not depend on the
        // defaults of whichever sidecar image reads the file.
        let written = Config::from_yaml(FULL).unwrap().to_yaml().unwrap();
        for kept in [
            "x_forwarded_for: x-forwarded-for",
            "max_request_head:",
            "untrusted: reject",
            "agent_socket:",
        ] {
            assert!(written.contains(kept), "{kept} missing from\n{written}");
        }
    }
}
