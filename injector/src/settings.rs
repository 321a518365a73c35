//! A pod's trueip settings: its `trueip.io/*` annotations, falling back to the chart's defaults.
//!
//! Every annotation is checked here, and a bad value becomes an error that names the annotation
//! and says what it accepts, so `kubectl apply` shows the user what to fix instead of a pod whose
//! sidecar crash-loops.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// `enabled` or `disabled`: `disabled` opts a pod out of injection (as an annotation, or as a
/// label, which the webhook's objectSelector already filters).
pub(crate) const INJECT: &str = "trueip.io/inject";
/// The TCP ports the sidecar serves: `8080` or `8080:80,9090` (listen:upstream pairs; a lone
/// port is the app's, steered to the sidecar).
pub(crate) const PORTS: &str = "trueip.io/ports";
/// The UDP ports the sidecar serves: `5353:53` (listen:upstream pairs only).
pub(crate) const UDP_PORTS: &str = "trueip.io/udp-ports";
/// Steering (`auto`, `true` or `false`): whether the app keeps its port and the node agent hands
/// outside connections to it to the sidecar.
pub(crate) const STEER: &str = "trueip.io/steer";
/// The restore mode: `none`, `proxy-v1`, `proxy-v2`, `ebpf`, `transparent` or `http`.
pub(crate) const MODE: &str = "trueip.io/mode";
/// The load balancers whose PROXY headers are honoured: comma-separated CIDRs or addresses.
pub(crate) const TRUSTED_CIDRS: &str = "trueip.io/trusted-cidrs";
/// The header policy: `required`, `optional` or `off`.
pub(crate) const HEADER: &str = "trueip.io/header";

/// The restore mode and header policy, as the sidecar's file spells them: the injector writes
/// them there, so it takes the sidecar's own types.
pub(crate) use trueip_sidecar_config::{HeaderPolicy, Mode};

/// A pod's mode when neither its annotation nor the chart names one: `ebpf`, which needs
/// nothing of the app (the sidecar's own default, `none`, hides the client).
pub(crate) const DEFAULT_MODE: Mode = Mode::Ebpf;

/// Whether a pod's TCP listeners are steered: the app keeps its port (the Service's
/// `targetPort` stays the app's), and the node agent's sk_lookup program hands connections from
/// outside the pod to that port to the sidecar. If the webhook was not called (down, with
/// `failurePolicy: Ignore`), traffic still reaches the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Steer {
    /// A port listed alone (`8080`) is the app's and is steered; a `listen:upstream` pair is
    /// not (the Service targets the sidecar's `listen` port).
    #[default]
    Auto,
    /// Every port is steered: a pair's `upstream` is the app's port, its `listen` the sidecar's.
    True,
    /// No port is steered; a port listed alone is refused (the app could not bind it next to
    /// the sidecar's wildcard listener).
    False,
}

/// One listener of the sidecar: the port the load balancer connects to, and the app's port on
/// loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortPair {
    /// Where the sidecar listens (the Service's `targetPort`).
    pub(crate) listen: u16,
    /// Where the app listens, on loopback.
    pub(crate) upstream: u16,
}

/// What a pod gets: its annotations, or the chart's defaults where it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodSettings {
    /// The sidecar's TCP listeners, one per pair (a lone port has `listen == upstream`).
    pub(crate) ports: Vec<PortPair>,
    /// The sidecar's UDP listeners, one per pair.
    pub(crate) udp_ports: Vec<PortPair>,
    /// Which TCP listeners are steered.
    pub(crate) steer: Steer,
    /// The restore mode of every listener.
    pub(crate) mode: Mode,
    /// The header policy of every listener.
    pub(crate) header: HeaderPolicy,
    /// The trusted load balancers.
    pub(crate) trusted: Vec<IpNet>,
}

/// The chart's defaults for pods without the matching annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Defaults {
    /// Ports for pods without `trueip.io/ports` (nor `trueip.io/udp-ports`); empty: such pods
    /// are not injected.
    pub(crate) ports: Vec<PortPair>,
    /// UDP ports for pods without `trueip.io/udp-ports`.
    pub(crate) udp_ports: Vec<PortPair>,
    /// Steering for pods without `trueip.io/steer`.
    pub(crate) steer: Steer,
    /// Mode for pods without `trueip.io/mode`.
    pub(crate) mode: Mode,
    /// Header policy for pods without `trueip.io/header`.
    pub(crate) header: HeaderPolicy,
    /// Trusted load balancers for pods without `trueip.io/trusted-cidrs`.
    pub(crate) trusted: Vec<IpNet>,
}

/// An annotation whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?}: {problem}")]
pub(crate) struct BadAnnotation {
    /// The annotation's key.
    pub(crate) annotation: &'static str,
    /// Its value, as given.
    pub(crate) value: String,
    /// What is wrong and what is accepted.
    pub(crate) problem: String,
}

/// What the annotations say about injecting the pod at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// `trueip.io/inject: disabled`.
    OptedOut,
    /// Neither `trueip.io/ports`, `trueip.io/udp-ports` nor a default port: nothing to serve.
    NoPorts,
    /// Inject with these settings.
    Inject(PodSettings),
}

// === impl Defaults ===

impl Default for Defaults {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            udp_ports: Vec::new(),
            steer: Steer::default(),
            mode: DEFAULT_MODE,
            header: HeaderPolicy::default(),
            trusted: Vec::new(),
        }
    }
}

// === impl PortPair ===

impl PortPair {
    /// Whether `steer` steers this listener: the app keeps `upstream`'s port.
    pub(crate) fn steered(self, steer: Steer) -> bool {
        match steer {
            Steer::Auto => self.listen == self.upstream,
            Steer::True => true,
            Steer::False => false,
        }
    }
}

// === impl PodSettings ===

impl PodSettings {
    /// Reads the pod's annotations (and its labels, for the opt-out), with `defaults` for what
    /// they leave out. Every bad annotation is reported, not only the first.
    pub(crate) fn resolve(
        annotations: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
        defaults: &Defaults,
    ) -> Result<Resolution, Vec<BadAnnotation>> {
        let opted_out =
            |map: &BTreeMap<String, String>| map.get(INJECT).map(|v| v.trim()) == Some("disabled");
        if opted_out(labels) || opted_out(annotations) {
            return Ok(Resolution::OptedOut);
        }
        let mut errors = Vec::new();
        let mut check = |key: &'static str, parse: fn(&str) -> Result<(), String>| {
            if let Some(value) = annotations.get(key)
                && let Err(problem) = parse(value)
            {
                errors.push(BadAnnotation {
                    annotation: key,
                    value: value.clone(),
                    problem,
                });
            }
        };
        check(INJECT, |v| match v.trim() {
            "enabled" | "disabled" => Ok(()),
            _ => Err("expected `enabled` or `disabled`".into()),
        });
        check(PORTS, |v| parse_ports(v).map(drop));
        check(UDP_PORTS, |v| parse_udp_ports(v).map(drop));
        check(STEER, |v| word::<Steer>(v).map(drop));
        check(MODE, |v| word::<Mode>(v).map(drop));
        check(HEADER, |v| word::<HeaderPolicy>(v).map(drop));
        check(TRUSTED_CIDRS, |v| parse_cidrs(v).map(drop));
        if !errors.is_empty() {
            return Err(errors);
        }
        // Every value parsed above, so the `ok()`s below only skip absent annotations.
        let get = |key| annotations.get(key).map(String::as_str);
        let ports = get(PORTS)
            .and_then(|v| parse_ports(v).ok())
            .unwrap_or_else(|| defaults.ports.clone());
        let udp_ports = get(UDP_PORTS)
            .and_then(|v| parse_udp_ports(v).ok())
            .unwrap_or_else(|| defaults.udp_ports.clone());
        if ports.is_empty() && udp_ports.is_empty() {
            return Ok(Resolution::NoPorts);
        }
        let steer = get(STEER)
            .and_then(|v| word(v).ok())
            .unwrap_or(defaults.steer);
        if steer == Steer::False
            && let Some(lone) = ports.iter().find(|p| p.listen == p.upstream)
        {
            return Err(vec![BadAnnotation {
                annotation: PORTS,
                value: get(PORTS).map_or_else(|| format_ports(&ports), str::to_owned),
                problem: format!(
                    "port {} is listed alone, which makes it both the sidecar's and the app's: \
                     without steering ({STEER}: \"false\") the app could not bind it next to the \
                     sidecar's listener. Give `listen:upstream` (e.g. `{}:{}`), or let the app \
                     keep its port with steering ({STEER}: \"auto\" or \"true\")",
                    lone.listen,
                    lone.listen.wrapping_add(1).max(1),
                    lone.upstream,
                ),
            }]);
        }
        Ok(Resolution::Inject(Self {
            ports,
            udp_ports,
            steer,
            mode: get(MODE)
                .and_then(|v| word(v).ok())
                .unwrap_or(defaults.mode),
            header: get(HEADER)
                .and_then(|v| word(v).ok())
                .unwrap_or(defaults.header),
            trusted: get(TRUSTED_CIDRS)
                .and_then(|v| parse_cidrs(v).ok())
                .unwrap_or_else(|| defaults.trusted.clone()),
        }))
    }
}

/// Parses `8080` or `8080:80,9090`: comma-separated ports or `listen:upstream` pairs, a lone
/// port being both. Listen ports must be distinct; an empty list is allowed (no ports).
pub(crate) fn parse_ports(text: &str) -> Result<Vec<PortPair>, String> {
    const SYNTAX: &str = "expected ports like `8080` or `listen:upstream` pairs like `8080:80`, \
                          comma-separated, each 1-65535";
    let mut pairs: Vec<PortPair> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("`{item}` is not a port: {SYNTAX}"))
        };
        let pair = match item.split_once(':') {
            Some((listen, upstream)) => PortPair {
                listen: port(listen)?,
                upstream: port(upstream)?,
            },
            None => {
                let p = port(item)?;
                PortPair {
                    listen: p,
                    upstream: p,
                }
            }
        };
        if pairs.iter().any(|p| p.listen == pair.listen) {
            return Err(format!("lists port {} twice", pair.listen));
        }
        pairs.push(pair);
    }
    Ok(pairs)
}

/// Parses the UDP ports: `listen:upstream` pairs only. A lone port cannot be both: the app's
/// socket and the sidecar's wildcard one cannot share it, and UDP has no steering.
pub(crate) fn parse_udp_ports(text: &str) -> Result<Vec<PortPair>, String> {
    let pairs = parse_ports(text)?;
    if let Some(lone) = pairs.iter().find(|p| p.listen == p.upstream) {
        return Err(format!(
            "UDP port {} is both the sidecar's and the app's: give `listen:upstream` pairs (the \
             load balancer sends to `listen`, the app listens on `upstream`), e.g. `{}:{}`",
            lone.listen,
            lone.listen.wrapping_add(1).max(1),
            lone.upstream
        ));
    }
    Ok(pairs)
}

/// Writes ports the way the annotation spells them (for messages about a chart default).
fn format_ports(ports: &[PortPair]) -> String {
    let items: Vec<String> = ports
        .iter()
        .map(|p| {
            if p.listen == p.upstream {
                p.listen.to_string()
            } else {
                format!("{}:{}", p.listen, p.upstream)
            }
        })
        .collect();
    items.join(",")
}

/// Parses comma-separated CIDRs; a bare address is that one host (`/32` or `/128`).
pub(crate) fn parse_cidrs(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{item}` is not a CIDR like 10.0.0.0/8 or an IP address"))
        })
        .collect()
}

/// Modes as a user reads them in a message: `none, proxy-v1, ebpf`.
pub(crate) fn list_modes(modes: &[Mode]) -> String {
    let names: Vec<String> = modes.iter().map(ToString::to_string).collect();
    names.join(", ")
}

/// Parses one keyword the way the sidecar's YAML spells it; the error lists the accepted words.
pub(crate) fn word<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
    T::deserialize(serde_json::Value::String(text.trim().to_owned())).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn defaults() -> Defaults {
        Defaults {
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
            ..Defaults::default()
        }
    }

    #[test]
    fn ports() {
        assert_eq!(
            parse_ports("8080").unwrap(),
            [PortPair {
                listen: 8080,
                upstream: 8080
            }]
        );
        assert_eq!(
            parse_ports(" 8080:80 , 9090 ").unwrap(),
            [
                PortPair {
                    listen: 8080,
                    upstream: 80
                },
                PortPair {
                    listen: 9090,
                    upstream: 9090
                }
            ]
        );
        assert_eq!(parse_ports("").unwrap(), []);
        for bad in [
            "http",
            "0",
            "65536",
            "8080:",
            ":80",
            "8080:80:1",
            "-1",
            "80 80",
        ] {
            let e = parse_ports(bad).unwrap_err();
            assert!(e.contains("listen:upstream"), "{bad}: {e}");
        }
        assert_eq!(parse_ports("80,80:81").unwrap_err(), "lists port 80 twice");
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidrs("10.0.0.0/8, 192.0.2.1,fd00::/8").unwrap(),
            [
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.1/32".parse().unwrap(),
                "fd00::/8".parse().unwrap()
            ]
        );
        let e = parse_cidrs("10.0.0.0/33").unwrap_err();
        assert!(e.contains("`10.0.0.0/33`"), "{e}");
    }

    #[test]
    fn words_list_the_accepted_values() {
        assert_eq!(word::<Mode>("proxy-v2"), Ok(Mode::ProxyV2));
        assert_eq!(
            word::<HeaderPolicy>(" optional "),
            Ok(HeaderPolicy::Optional)
        );
        let e = word::<Mode>("ebpf2").unwrap_err();
        assert!(e.contains("`none`, `proxy-v1`, `proxy-v2`, `ebpf`"), "{e}");
        for mode in [
            Mode::None,
            Mode::ProxyV1,
            Mode::ProxyV2,
            Mode::Ebpf,
            Mode::Transparent,
            Mode::Http,
        ] {
            assert_eq!(word::<Mode>(&mode.to_string()), Ok(mode));
        }
    }

    #[test]
    fn annotations_override_defaults() {
        let none = map(&[]);
        let got = PodSettings::resolve(
            &map(&[
                (PORTS, "8080:80"),
                (MODE, "proxy-v1"),
                (HEADER, "optional"),
                (TRUSTED_CIDRS, "192.0.2.0/24"),
                (INJECT, "enabled"),
            ]),
            &none,
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            got,
            Resolution::Inject(PodSettings {
                ports: vec![PortPair {
                    listen: 8080,
                    upstream: 80
                }],
                udp_ports: vec![],
                steer: Steer::Auto,
                mode: Mode::ProxyV1,
                header: HeaderPolicy::Optional,
                trusted: vec!["192.0.2.0/24".parse().unwrap()],
            })
        );
        let got = PodSettings::resolve(&map(&[(PORTS, "9090")]), &none, &defaults()).unwrap();
        let Resolution::Inject(settings) = got else {
            panic!("{got:?}")
        };
        assert_eq!(settings.mode, Mode::Ebpf);
        assert_eq!(settings.header, HeaderPolicy::Required);
        assert_eq!(settings.trusted, defaults().trusted);
    }

    #[test]
    fn steering_and_udp_ports() {
        let none = map(&[]);
        let resolve =
            |pairs: &[(&str, &str)]| PodSettings::resolve(&map(pairs), &none, &defaults());
        let Ok(Resolution::Inject(got)) = resolve(&[(PORTS, "8080"), (STEER, "true")]) else {
            panic!()
        };
        assert_eq!(got.steer, Steer::True);
        let Ok(Resolution::Inject(got)) = resolve(&[(UDP_PORTS, "5353:53")]) else {
            panic!()
        };
        assert!(got.ports.is_empty());
        assert_eq!(
            got.udp_ports,
            [PortPair {
                listen: 5353,
                upstream: 53
            }]
        );
        assert_eq!(got.steer, Steer::Auto);
        // A lone port without steering cannot work: the message says both ways out.
        let errors = resolve(&[(PORTS, "8080:80,9090"), (STEER, "false")]).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].annotation, PORTS);
        let text = errors[0].to_string();
        assert!(text.contains("port 9090 is listed alone"), "{text}");
        assert!(text.contains("`9091:9090`"), "{text}");
        assert!(text.contains("trueip.io/steer"), "{text}");
        // UDP has no steering: a lone UDP port is refused.
        let errors = resolve(&[(UDP_PORTS, "53"), (STEER, "sometimes")]).unwrap_err();
        let names: Vec<_> = errors.iter().map(|e| e.annotation).collect();
        assert_eq!(names, [UDP_PORTS, STEER]);
        assert!(
            errors[0]
                .to_string()
                .contains("give `listen:upstream` pairs"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1]
                .to_string()
                .contains("expected one of `auto`, `true`, `false`"),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn opt_out_and_no_ports() {
        let none = map(&[]);
        let opted = map(&[(INJECT, "disabled"), (PORTS, "not even a port")]);
        assert_eq!(
            PodSettings::resolve(&opted, &none, &defaults()),
            Ok(Resolution::OptedOut)
        );
        assert_eq!(
            PodSettings::resolve(&none, &map(&[(INJECT, "disabled")]), &defaults()),
            Ok(Resolution::OptedOut)
        );
        assert_eq!(
            PodSettings::resolve(&none, &none, &defaults()),
            Ok(Resolution::NoPorts)
        );
        let with_default_ports = Defaults {
            ports: parse_ports("8080:80").unwrap(),
            ..defaults()
        };
        assert!(matches!(
            PodSettings::resolve(&none, &none, &with_default_ports),
            Ok(Resolution::Inject(_))
        ));
    }

    #[test]
    fn every_bad_annotation_is_named() {
        let errors = PodSettings::resolve(
            &map(&[
                (INJECT, "false"),
                (PORTS, "http"),
                (MODE, "tproxy"),
                (HEADER, "yes"),
                (TRUSTED_CIDRS, "lb.example"),
            ]),
            &map(&[]),
            &defaults(),
        )
        .unwrap_err();
        let names: Vec<_> = errors.iter().map(|e| e.annotation).collect();
        assert_eq!(names, [INJECT, PORTS, MODE, HEADER, TRUSTED_CIDRS]);
        assert_eq!(
            errors[2].to_string(),
            "annotation trueip.io/mode: \"tproxy\": unknown variant `tproxy`, \
             expected one of `none`, `proxy-v1`, `proxy-v2`, `ebpf`, `transparent`, `http`"
        );
    }
}
