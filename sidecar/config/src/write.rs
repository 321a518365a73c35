//! Writing a configuration as a file the sidecar reads: what the injector puts in a pod's
//! annotation. Only keys that differ from their defaults are written, so the annotation stays
//! as short as what a user would write by hand, and a default that a newer sidecar changes
//! applies to pods injected before it.

use serde_norway::{Mapping, Value};

use crate::{config::Config, listener::ListenerConfig};

/// Keys written even at their default: a listener's addresses (the file needs them), and the
/// list of listeners.
const ALWAYS_WRITTEN: [&str; 3] = ["listen", "upstream", "listeners"];

impl Config {
    /// The YAML text of this configuration, without the keys at their defaults; parsing it
    /// back gives this configuration.
    pub fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        let mut file = serde_norway::to_value(self)?;
        let defaults = serde_norway::to_value(Self::with_listeners(Vec::new()))?;
        if let Some(Value::Sequence(listeners)) = file.get_mut("listeners") {
            for (written, listener) in listeners.iter_mut().zip(&self.listeners) {
                let default = ListenerConfig::new(listener.listen, listener.upstream);
                prune(written, &serde_norway::to_value(default)?);
            }
        }
        prune(&mut file, &defaults);
        serde_norway::to_string(&file)
    }
}

/// Removes from the mapping `value` every key whose value is its value in `default`, going
/// into nested mappings that differ (a listener's `http.limits`, say).
fn prune(value: &mut Value, default: &Value) {
    let (Value::Mapping(map), Value::Mapping(defaults)) = (value, default) else {
        return;
    };
    map.retain(|key, value| keep(key, value, defaults));
}

/// Whether `key` stays: always-written, not in `defaults`, or different from it there.
fn keep(key: &Value, value: &mut Value, defaults: &Mapping) -> bool {
    if key.as_str().is_some_and(|k| ALWAYS_WRITTEN.contains(&k)) {
        return true;
    }
    match defaults.get(key) {
        Some(default) if default == value => false,
        Some(default) => {
            prune(value, default);
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
            "x_forwarded_for",
            "max_request_head",
            "priority",
            "fast_path",
            "crc32c",
        ] {
            assert!(
                !written.contains(left_out),
                "{left_out} written in\n{written}"
            );
        }
        let minimal =
            "listeners:\n- listen: 0.0.0.0:8080\n  upstream: 127.0.0.1:80\n  header: off\n";
        assert_eq!(
            Config::from_yaml(minimal).unwrap().to_yaml().unwrap(),
            minimal
        );
    }
}
