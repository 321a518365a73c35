//! The request headers the app learns the client from: `X-Forwarded-For`, `X-Real-IP`,
//! `Forwarded` (RFC 7239), `X-Forwarded-Proto` and the TLV headers, written by the sidecar and
//! never trusted from the client unless the listener says `client_headers: append` and the
//! connection's PROXY header came from a trusted load balancer. The rest of the family a
//! framework may read as "from the proxy" ([`PROXY_HEADERS`]: `X-Forwarded-Host`,
//! `True-Client-IP`, ...) is removed from the client's request, so none can pass for the
//! sidecar's. Addresses are written canonical: an IPv4-mapped IPv6 address is the IPv4 client.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use trueip_proxy_header::{Header, Ssl};

use trueip_sidecar_config::{ClientHeaders, HttpConfig, PROXY_HEADERS, canonical};

/// What every request of one downstream connection is told about its client: the client is a
/// property of the connection, so this is computed once, after the PROXY header.
#[derive(Debug, Clone)]
pub(crate) struct ClientFacts {
    /// The client's address, canonical.
    client: IpAddr,
    /// The client's address as `X-Forwarded-For` and `X-Real-IP` carry it (no port, no brackets).
    addr: HeaderValue,
    /// The `for=` parameter of `Forwarded` (IPv6 quoted and bracketed).
    forwarded_for: String,
    /// `https` when the client spoke TLS (to the sidecar or, per the SSL TLV, to the load
    /// balancer), `http` otherwise.
    proto: &'static str,
    /// Whether client-supplied forwarding headers are appended to (and the rest of the family
    /// kept) rather than removed.
    append: bool,
    /// TLV values, already turned into headers.
    tlvs: Vec<(HeaderName, HeaderValue)>,
}

impl ClientFacts {
    /// The facts of a connection from `client` (canonical: `::ffff:a.b.c.d` is `a.b.c.d`).
    /// `trusted_header` is the PROXY header when one came from a trusted source; `tls` says
    /// whether the sidecar terminated TLS.
    pub(crate) fn new(
        client: IpAddr,
        trusted_header: Option<&Header>,
        tls: bool,
        config: &HttpConfig,
    ) -> Self {
        let ssl_client = trusted_header
            .and_then(|h| h.tlvs.ssl())
            .is_some_and(|ssl| ssl.client & Ssl::CLIENT_SSL != 0);
        let client = canonical(client);
        Self {
            client,
            addr: HeaderValue::from_str(&client.to_string()).expect("an address is ASCII"),
            forwarded_for: forwarded_node(client),
            proto: if tls || ssl_client { "https" } else { "http" },
            append: config.client_headers == ClientHeaders::Append && trusted_header.is_some(),
            tlvs: trusted_header
                .map(|h| tlv_headers(h, config))
                .unwrap_or_default(),
        }
    }
}

impl ClientFacts {
    /// The client's address (canonical), for per-client limits.
    pub(crate) fn client(&self) -> IpAddr {
        self.client
    }
}

/// Rewrites the forwarding headers of one request; `host` is the host the client asked for
/// (`Host` or the `:authority`). Returns the client-supplied headers that were removed, for the
/// anti-spoofing metric.
pub(crate) fn rewrite(
    headers: &mut HeaderMap,
    config: &HttpConfig,
    facts: &ClientFacts,
    host: Option<&str>,
) -> Vec<HeaderName> {
    let mut removed = Vec::new();
    let mut strip = |headers: &mut HeaderMap, name: &HeaderName| {
        if headers.remove(name).is_some() {
            removed.push(name.clone());
        }
    };
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_forged(name, config, facts.append))
        .cloned()
        .collect();
    for name in &forged {
        strip(headers, name);
    }
    if let Some(name) = &config.x_forwarded_proto.0 {
        // Behind a trusted chain (`append`) the chain's own value says what the client spoke.
        if !(facts.append && headers.contains_key(name)) {
            strip(headers, name);
            headers.insert(name.clone(), HeaderValue::from_static(facts.proto));
        }
    }
    if let Some(name) = &config.x_real_ip.0 {
        strip(headers, name);
        headers.insert(name.clone(), facts.addr.clone());
    }
    if let Some(name) = &config.x_forwarded_for.0 {
        let own = facts.addr.to_str().expect("ASCII");
        set_list(headers, name, own, facts.append, &mut strip);
    }
    if let Some(name) = &config.forwarded.0 {
        let mut element = format!("{};proto={}", facts.forwarded_for, facts.proto);
        if let Some(host) = host.filter(|h| is_plain_host(h)) {
            element.push_str(";host=");
            element.push_str(&forwarded_value(host));
        }
        set_list(headers, name, &element, facts.append, &mut strip);
    }
    for (name, value) in &facts.tlvs {
        headers.insert(name.clone(), value.clone());
    }
    removed
}

/// The standard names of the three client headers, stripped whatever their slots say.
const STANDARD: [&str; 3] = ["x-forwarded-for", "x-real-ip", "forwarded"];

/// Whether a request header is one the client may not send: a configured TLV or
/// `strip_headers` name; with `strip` (no trusted chain to append to), any header of the proxy
/// family — [`PROXY_HEADERS`], every `x-forwarded-*`, the three standard names and the names
/// the sidecar writes (even when a slot is renamed or off: an app may still read the standard
/// one). Names are compared with `_` read as `-`, because app servers that build CGI-style
/// variables (`HTTP_X_FORWARDED_FOR`) cannot tell `X_Forwarded_For` from `X-Forwarded-For`;
/// such an alias of the family is removed even behind a trusted chain.
fn is_forged(name: &HeaderName, config: &HttpConfig, append: bool) -> bool {
    let raw = name.as_str();
    let underscored = raw.contains('_');
    let name = if underscored {
        std::borrow::Cow::Owned(raw.replace('_', "-"))
    } else {
        std::borrow::Cow::Borrowed(raw)
    };
    let name = name.as_ref();
    let is = |n: &HeaderName| n.as_str().replace('_', "-") == name;
    if config
        .tlv_headers
        .names()
        .chain(&config.strip_headers)
        .any(is)
    {
        return true;
    }
    let slots = [
        &config.x_forwarded_for,
        &config.x_real_ip,
        &config.forwarded,
        &config.x_forwarded_proto,
    ];
    let family = name.starts_with("x-forwarded-")
        || PROXY_HEADERS.contains(&name)
        || STANDARD.contains(&name)
        || slots.iter().filter_map(|slot| slot.0.as_ref()).any(is);
    family && (underscored || !append)
}

/// Sets a comma-separated list header to `own`, after the client's entries when appending.
fn set_list(
    headers: &mut HeaderMap,
    name: &HeaderName,
    own: &str,
    append: bool,
    strip: &mut impl FnMut(&mut HeaderMap, &HeaderName),
) {
    let mut value = String::new();
    if append {
        for v in headers.get_all(name) {
            // Values that are not text cannot be extended faithfully; they are dropped.
            if let Ok(v) = v.to_str()
                && !v.trim().is_empty()
            {
                value.push_str(v.trim());
                value.push_str(", ");
            }
        }
        headers.remove(name);
    } else {
        strip(headers, name);
    }
    value.push_str(own);
    let value = HeaderValue::from_str(&value)
        .expect("the client's values passed to_str() and ours is ASCII");
    headers.insert(name.clone(), value);
}

/// RFC 7239 section 6: an IPv4 node is a token; an IPv6 node is bracketed, and then quoted
/// because `[`, `]` and `:` are not token characters.
fn forwarded_node(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// A parameter value: a token as is, anything else (a host with a port, say) quoted.
fn forwarded_value(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(is_tchar) {
        return v.to_owned();
    }
    let mut quoted = String::with_capacity(v.len() + 2);
    quoted.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A host as `Forwarded: host=` may carry it: a name or address with an optional port, and
/// nothing a parser that ignores quoting could split (`,`, `;`, `=`, quotes, userinfo).
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether the SSL TLV says the client presented a certificate (on this connection or its TLS
/// session) and the load balancer verified it (`verify` is 0 only then): a CN from an unverified
/// or absent certificate is whatever the client wrote into it.
fn verified_certificate(ssl: &Ssl) -> bool {
    ssl.client & Ssl::CLIENT_SSL != 0
        && ssl.client & (Ssl::CLIENT_CERT_CONN | Ssl::CLIENT_CERT_SESS) != 0
        && ssl.verify == 0
}

/// The configured TLV headers that the header carries, with values that are valid header text.
fn tlv_headers(header: &Header, config: &HttpConfig) -> Vec<(HeaderName, HeaderValue)> {
    let t = &config.tlv_headers;
    let tlvs = &header.tlvs;
    let ssl = tlvs.ssl();
    let values: [(&Option<HeaderName>, Option<String>); 6] = [
        (&t.authority.0, tlvs.authority().map(str::to_owned)),
        (
            &t.unique_id.0,
            tlvs.unique_id()
                .map(|v| String::from_utf8_lossy(v).into_owned()),
        ),
        (&t.aws_vpce_id.0, tlvs.aws_vpce_id().map(str::to_owned)),
        (
            &t.azure_private_link_id.0,
            tlvs.azure_private_link_id().map(|v| v.to_string()),
        ),
        (
            &t.gcp_psc_connection_id.0,
            tlvs.gcp_psc_connection_id().map(|v| v.to_string()),
        ),
        (
            &t.ssl_cn.0,
            ssl.filter(verified_certificate).and_then(|s| s.cn),
        ),
    ];
    values
        .into_iter()
        .filter_map(|(name, value)| {
            let (name, value) = (name.as_ref()?, value?);
            match HeaderValue::from_str(&value) {
                Ok(v) => Some((name.clone(), v)),
                Err(_) => {
                    tracing::debug!(header = %name, "TLV value is not valid header text; not passed on");
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use trueip_proxy_header::{Addresses, Command, Tlvs, Transport, Version, kind};

    use super::*;
    use trueip_sidecar_config::HeaderSlot;

    fn header(client: &str, tlvs: Tlvs) -> Header {
        let client: std::net::SocketAddr = client.parse().unwrap();
        let dst: std::net::SocketAddr = if client.is_ipv4() {
            "198.51.100.1:443".parse().unwrap()
        } else {
            "[2001:db8::443]:443".parse().unwrap()
        };
        Header {
            version: Version::V2,
            command: Command::Proxy,
            transport: Transport::Stream,
            addresses: Addresses::Inet {
                source: client,
                destination: dst,
            },
            tlvs,
        }
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-client-cn", HeaderValue::from_static("admin"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    fn config() -> HttpConfig {
        let mut c = HttpConfig::default();
        c.tlv_headers.ssl_cn = HeaderSlot(Some(HeaderName::from_static("x-client-cn")));
        c
    }

    #[test]
    fn spoofed_headers_are_replaced_by_the_client() {
        let config = config();
        let h = header("203.0.113.7:51234", Tlvs::default());
        let facts = ClientFacts::new(h.client().unwrap().ip(), Some(&h), false, &config);
        let mut headers = spoofed();
        let removed = rewrite(&mut headers, &config, &facts, Some("example.com"));
        assert_eq!(all(&headers, "x-forwarded-for"), ["203.0.113.7"]);
        assert_eq!(all(&headers, "x-real-ip"), ["203.0.113.7"]);
        assert_eq!(
            all(&headers, "forwarded"),
            ["for=203.0.113.7;proto=http;host=example.com"]
        );
        // No SSL TLV: the client's own CN header is gone and nothing replaces it.
        assert!(headers.get("x-client-cn").is_none());
        assert_eq!(all(&headers, "accept"), ["*/*"]);
        let mut removed: Vec<_> = removed.iter().map(HeaderName::as_str).collect();
        removed.sort_unstable();
        assert_eq!(
            removed,
            ["forwarded", "x-client-cn", "x-forwarded-for", "x-real-ip"]
        );
    }

    #[test]
    fn append_only_behind_a_trusted_header() {
        let mut config = config();
        config.client_headers = ClientHeaders::Append;
        let h = header("203.0.113.7:51234", Tlvs::default());
        let trusted = ClientFacts::new(h.client().unwrap().ip(), Some(&h), false, &config);
        let mut headers = spoofed();
        let removed = rewrite(&mut headers, &config, &trusted, None);
        assert_eq!(
            all(&headers, "x-forwarded-for"),
            ["6.6.6.6, 7.7.7.7, 203.0.113.7"]
        );
        assert_eq!(
            all(&headers, "forwarded"),
            ["for=6.6.6.6, for=203.0.113.7;proto=http"]
        );
        // X-Real-IP is single-valued: always the sidecar's.
        assert_eq!(all(&headers, "x-real-ip"), ["203.0.113.7"]);
        assert!(
            !removed
                .iter()
                .any(|n| n == "x-forwarded-for" || n == "forwarded")
        );

        // Without a trusted PROXY header (an `optional` listener's headerless connection) the
        // client's copies are removed even with `append`.
        let direct = ClientFacts::new("192.0.2.9".parse().unwrap(), None, false, &config);
        let mut headers = spoofed();
        rewrite(&mut headers, &config, &direct, None);
        assert_eq!(all(&headers, "x-forwarded-for"), ["192.0.2.9"]);
        assert_eq!(all(&headers, "forwarded"), ["for=192.0.2.9;proto=http"]);
    }

    #[test]
    fn ipv6_is_bracketed_and_quoted_in_forwarded_only() {
        let config = config();
        let h = header("[2001:db8:c::7]:443", Tlvs::default());
        let facts = ClientFacts::new(h.client().unwrap().ip(), Some(&h), true, &config);
        let mut headers = HeaderMap::new();
        rewrite(&mut headers, &config, &facts, Some("example.com:8443"));
        assert_eq!(all(&headers, "x-forwarded-for"), ["2001:db8:c::7"]);
        assert_eq!(all(&headers, "x-real-ip"), ["2001:db8:c::7"]);
        assert_eq!(
            all(&headers, "forwarded"),
            ["for=\"[2001:db8:c::7]\";proto=https;host=\"example.com:8443\""]
        );
        // A v4-mapped peer (dual-stack listener) is the IPv4 client.
        assert_eq!(
            forwarded_node("::ffff:192.0.2.1".parse().unwrap()),
            "for=192.0.2.1"
        );
        assert_eq!(forwarded_value("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn headers_can_be_renamed_and_disabled() {
        let mut config = config();
        config.x_forwarded_for = HeaderSlot(Some(HeaderName::from_static("x-client-ip")));
        config.x_real_ip = HeaderSlot(None);
        config.forwarded = HeaderSlot(None);
        let facts = ClientFacts::new("192.0.2.9".parse().unwrap(), None, false, &config);
        let mut headers = spoofed();
        rewrite(&mut headers, &config, &facts, None);
        assert_eq!(all(&headers, "x-client-ip"), ["192.0.2.9"]);
        // Disabled or renamed, the standard headers are not written, and the client's copies
        // are still removed: an app may read them whatever the sidecar writes.
        assert!(headers.get("x-real-ip").is_none());
        assert!(headers.get("x-forwarded-for").is_none());
        assert!(headers.get("forwarded").is_none());
    }

    #[test]
    fn underscore_aliases_and_every_x_forwarded_name_are_removed() {
        let mut config = config();
        config.strip_headers = vec![HeaderName::from_static("x-authenticated-user")];
        let facts = ClientFacts::new("192.0.2.9".parse().unwrap(), None, false, &config);
        let mut headers = HeaderMap::new();
        for name in [
            "x_forwarded_for",
            "x_client_cn",
            "x_authenticated_user",
            "x-forwarded-ssl",
            "x-forwarded-scheme",
            "x_forwarded_host",
            "x-forwarded-client-cert",
            "accept_language",
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
        }
        let removed = rewrite(&mut headers, &config, &facts, None);
        assert_eq!(removed.len(), 7, "{removed:?}");
        // Not a proxy header: an underscore alone is no reason to remove a header.
        assert_eq!(all(&headers, "accept_language"), ["x"]);
        assert_eq!(all(&headers, "x-forwarded-for"), ["192.0.2.9"]);

        // Behind a trusted chain the family is kept, its underscore aliases are not.
        config.client_headers = ClientHeaders::Append;
        let h = header("203.0.113.7:1", Tlvs::default());
        let trusted = ClientFacts::new(h.client().unwrap().ip(), Some(&h), false, &config);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-host", HeaderValue::from_static("shop.example"));
        headers.insert("x_forwarded_host", HeaderValue::from_static("evil.example"));
        rewrite(&mut headers, &config, &trusted, None);
        assert_eq!(all(&headers, "x-forwarded-host"), ["shop.example"]);
        assert!(headers.get("x_forwarded_host").is_none());
    }

    #[test]
    fn forwarded_host_is_written_only_when_no_parser_could_split_it() {
        let config = config();
        let facts = ClientFacts::new("192.0.2.9".parse().unwrap(), None, false, &config);
        for (host, expected) in [
            (
                "shop.example:8443",
                "for=192.0.2.9;proto=http;host=\"shop.example:8443\"",
            ),
            (
                "[2001:db8::1]:443",
                "for=192.0.2.9;proto=http;host=\"[2001:db8::1]:443\"",
            ),
            ("x,for=6.6.6.6", "for=192.0.2.9;proto=http"),
            ("x;proto=https", "for=192.0.2.9;proto=http"),
            ("user@x", "for=192.0.2.9;proto=http"),
        ] {
            let mut headers = HeaderMap::new();
            rewrite(&mut headers, &config, &facts, Some(host));
            assert_eq!(all(&headers, "forwarded"), [expected], "{host}");
        }
    }

    #[test]
    fn tlvs_become_headers() {
        let mut config = config();
        config.tlv_headers.authority = HeaderSlot(Some(HeaderName::from_static("x-sni")));
        config.tlv_headers.unique_id = HeaderSlot(Some(HeaderName::from_static("x-conn-id")));
        config.tlv_headers.aws_vpce_id = HeaderSlot(Some(HeaderName::from_static("x-vpce")));
        let mut tlvs = Tlvs::default();
        tlvs.push(kind::AUTHORITY, b"shop.example".to_vec());
        tlvs.push(kind::UNIQUE_ID, b"conn-42".to_vec());
        tlvs.push(kind::AWS, b"\x01vpce-0123".to_vec());
        tlvs.push(
            kind::SSL,
            Ssl {
                client: Ssl::CLIENT_SSL | Ssl::CLIENT_CERT_CONN,
                verify: 0,
                version: Some("TLSv1.3".into()),
                cn: Some("alice".into()),
                cipher: None,
                sig_alg: None,
                key_alg: None,
            }
            .encode()
            .unwrap(),
        );
        let h = header("203.0.113.7:1", tlvs);
        let facts = ClientFacts::new(h.client().unwrap().ip(), Some(&h), false, &config);
        assert_eq!(
            facts.proto, "https",
            "the SSL TLV says the client spoke TLS"
        );
        let mut headers = spoofed();
        headers.insert("x-sni", HeaderValue::from_static("evil.example"));
        rewrite(&mut headers, &config, &facts, None);
        assert_eq!(all(&headers, "x-sni"), ["shop.example"]);
        assert_eq!(all(&headers, "x-conn-id"), ["conn-42"]);
        assert_eq!(all(&headers, "x-vpce"), ["vpce-0123"]);
        assert_eq!(all(&headers, "x-client-cn"), ["alice"]);
    }
}
