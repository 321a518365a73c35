//! The `http` mode's settings: which forwarding headers the sidecar writes, what happens to the
//! copies a client sent, which PROXY TLVs become request headers, optional TLS termination, and
//! the limits ([`HttpLimits`]) that keep hostile clients from exhausting the sidecar.

use std::{fmt, path::PathBuf, time::Duration};

use ::http::HeaderName;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::limits::HttpLimits;

/// Request headers an app (or a framework's "trusted proxy" setting) may read as written by a
/// proxy, besides the three the sidecar writes: a client's copies are always removed with
/// `client_headers: strip`, so none can pass for the sidecar's. `X-Forwarded-Proto` is then
/// written by the sidecar itself.
pub const PROXY_HEADERS: [&str; 9] = [
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
];

/// `mode: http`: the sidecar speaks HTTP to both sides and tells the app the client in headers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// What happens to forwarding headers (`x_forwarded_for`, `x_real_ip`, `forwarded` and the
    /// TLV headers) that arrive in the request: removed, or (for `X-Forwarded-For` and
    /// `Forwarded` only, and only behind a trusted PROXY header) kept and appended to.
    pub client_headers: ClientHeaders,
    /// The header that gets the client's address appended (`X-Forwarded-For`); `false`: none.
    pub x_forwarded_for: HeaderSlot,
    /// The header that gets the client's address alone (`X-Real-IP`); `false`: none.
    pub x_real_ip: HeaderSlot,
    /// The RFC 7239 header (`Forwarded: for=...;proto=...;host=...`); `false`: none.
    pub forwarded: HeaderSlot,
    /// The header that says whether the client spoke TLS (`X-Forwarded-Proto: https`, from the
    /// sidecar's own TLS or the PROXY header's SSL TLV); `false`: none.
    pub x_forwarded_proto: HeaderSlot,
    /// PROXY v2 TLVs passed on as request headers, each under the name given; unset: not passed.
    pub tlv_headers: TlvHeaders,
    /// Terminate TLS here (the load balancer passes TLS through). Unset: cleartext HTTP.
    pub tls: Option<TlsConfig>,
    /// More request headers to remove from every request, on top of [`PROXY_HEADERS`] (which
    /// `client_headers: strip` removes, whatever this says): a header this app trusts.
    #[serde(
        deserialize_with = "header_names",
        serialize_with = "write_header_names"
    )]
    pub strip_headers: Vec<HeaderName>,
    /// Pass `CONNECT` requests to the app (which may then open a tunnel past the sidecar's
    /// header rewrite). Off: `CONNECT` gets `405`.
    pub allow_connect: bool,
    /// Bounds on request heads, timeouts, HTTP/2 and the app's connections.
    pub limits: HttpLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            client_headers: ClientHeaders::default(),
            x_forwarded_for: HeaderSlot::named("x-forwarded-for"),
            x_real_ip: HeaderSlot::named("x-real-ip"),
            forwarded: HeaderSlot::named("forwarded"),
            x_forwarded_proto: HeaderSlot::named("x-forwarded-proto"),
            tlv_headers: TlvHeaders::default(),
            tls: None,
            strip_headers: Vec::new(),
            allow_connect: false,
            limits: HttpLimits::default(),
        }
    }
}

/// Reads a list of header names, naming the one that is not valid.
fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| de::Error::custom(format!("`{name}` is not a valid header name")))
        })
        .collect()
}

/// Writes a list of header names as [`header_names`] reads it.
fn write_header_names<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}

/// What the sidecar does with forwarding headers the request already carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientHeaders {
    /// Remove them, and the rest of the family ([`PROXY_HEADERS`]): anyone can write
    /// `X-Forwarded-For`, so only the sidecar's value reaches the app.
    #[default]
    Strip,
    /// Keep `X-Forwarded-For` and `Forwarded` and append the client, when the connection came
    /// with a PROXY header from a trusted source (a chain of proxies the operator trusts);
    /// otherwise strip them. `X-Real-IP` and TLV headers are always replaced; the rest of the
    /// family ([`PROXY_HEADERS`]) is kept behind a trusted header (the chain wrote it).
    Append,
}

/// A header the sidecar writes, by name, or `false` for none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSlot(pub Option<HeaderName>);

impl HeaderSlot {
    fn named(name: &'static str) -> Self {
        Self(Some(HeaderName::from_static(name)))
    }
}

impl<'de> Deserialize<'de> for HeaderSlot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SlotVisitor).map(Self)
    }
}

impl Serialize for HeaderSlot {
    /// The name, or `false` for none, as [`SlotVisitor`] reads them.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(name) => s.serialize_str(name.as_str()),
            None => s.serialize_bool(false),
        }
    }
}

/// Reads a header name, or `false` / null for "no header".
struct SlotVisitor;

impl<'de> de::Visitor<'de> for SlotVisitor {
    type Value = Option<HeaderName>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a header name, or false for none")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        if v {
            Err(E::custom("write the header name, or false for none"))
        } else {
            Ok(None)
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        HeaderName::from_bytes(v.as_bytes())
            .map(Some)
            .map_err(|_| E::custom(format!("`{v}` is not a valid header name")))
    }
}

/// Request headers made from the PROXY header's TLVs; each unset one is not written. A client's
/// own copy of a configured header is always removed, present TLV or not.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlvHeaders {
    /// `PP2_TYPE_AUTHORITY` (0x02): the host name the client asked for (SNI).
    pub authority: HeaderSlot,
    /// `PP2_TYPE_UNIQUE_ID` (0x05): the load balancer's connection id (printable bytes only).
    pub unique_id: HeaderSlot,
    /// AWS `0xEA`: the VPC endpoint id of a PrivateLink connection.
    pub aws_vpce_id: HeaderSlot,
    /// Azure `0xEE`: the private link id.
    pub azure_private_link_id: HeaderSlot,
    /// GCP `0xE0`: the Private Service Connect connection id.
    pub gcp_psc_connection_id: HeaderSlot,
    /// `PP2_SUBTYPE_SSL_CN` (0x22): the client certificate's Common Name.
    pub ssl_cn: HeaderSlot,
}

impl Default for HeaderSlot {
    /// Unset: no header.
    fn default() -> Self {
        Self(None)
    }
}

impl TlvHeaders {
    /// The configured header names, for stripping client copies.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.authority,
            &self.unique_id,
            &self.aws_vpce_id,
            &self.azure_private_link_id,
            &self.gcp_psc_connection_id,
            &self.ssl_cn,
        ]
        .into_iter()
        .filter_map(|slot| slot.0.as_ref())
    }
}

/// TLS termination: the certificate the sidecar presents, reloaded when its files change.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for a new certificate (Kubernetes Secret updates,
    /// cert-manager renewals).
    #[serde(default = "default_reload_interval", with = "crate::duration")]
    pub reload_interval: Duration,
}

/// Secret updates take up to a minute to reach the pod anyway; a few reads every 10 s are free.
fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use ::http::HeaderName;

    use crate::{Config, Mode};

    const BASE: &str = "listeners:\n  - name: web\n    listen: 0.0.0.0:8080\n    upstream: 127.0.0.1:80\n    trusted_sources: [10.0.0.0/8]\n";

    #[test]
    fn parses_the_http_section() {
        let c = Config::from_yaml(&format!(
            "{BASE}    mode: http\n    http:\n      client_headers: append\n      x_forwarded_for: X-Client-Chain\n      x_real_ip: false\n      forwarded: ~\n      tlv_headers:\n        unique_id: X-Request-Id\n      tls:\n        cert: /tls/tls.crt\n        key: /tls/tls.key\n        reload_interval: 30s\n"
        ))
        .unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.mode, Mode::Http);
        assert_eq!(l.http.client_headers, super::ClientHeaders::Append);
        assert_eq!(
            l.http.x_forwarded_for.0.as_ref().map(HeaderName::as_str),
            Some("x-client-chain")
        );
        assert!(l.http.x_real_ip.0.is_none());
        assert!(l.http.forwarded.0.is_none());
        assert_eq!(
            l.http
                .tlv_headers
                .names()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>(),
            ["x-request-id"]
        );
        let tls = l.http.tls.as_ref().unwrap();
        assert_eq!(tls.reload_interval, std::time::Duration::from_secs(30));

        // Defaults: the three headers on, strip, no TLV headers, no TLS.
        let c = Config::from_yaml(&format!("{BASE}    mode: http\n")).unwrap();
        let h = &c.listeners[0].http;
        assert_eq!(h.client_headers, super::ClientHeaders::Strip);
        assert_eq!(h.x_real_ip.0.as_ref().unwrap(), "x-real-ip");
        assert_eq!(h.forwarded.0.as_ref().unwrap(), "forwarded");
        assert_eq!(h.tlv_headers.names().count(), 0);
        assert!(h.tls.is_none());
    }

    #[test]
    fn bad_http_values_name_the_key() {
        for (extra, needle) in [
            (
                "    mode: http\n    http:\n      x_real_ip: 'bad header'\n",
                "x_real_ip",
            ),
            (
                "    mode: http\n    http:\n      x_real_ip: true\n",
                "write the header name",
            ),
            (
                "    mode: http\n    http:\n      client_headers: keep\n",
                "client_headers",
            ),
            ("    mode: http\n    http:\n      tls: {cert: /a}\n", "key"),
            (
                "    mode: http\n    untrusted: passthrough\n",
                "web: untrusted",
            ),
            (
                "    mode: none\n    http:\n      tls: {cert: /a, key: /b}\n",
                "web: http.tls",
            ),
        ] {
            let e = trueip_telemetry::error_chain(
                &Config::from_yaml(&format!("{BASE}{extra}")).unwrap_err(),
            );
            assert!(e.contains(needle), "{extra} => {e}");
        }
    }
}
