//! What one datagram from the load balancer is: which flow it belongs to, who the client is, and
//! where its payload starts, or why it is dropped. Pure (no sockets), so every rule is tested
//! directly; and the headers the sidecar writes: the clean one to the app (`proxy-v2`) and the
//! swapped one in front of replies (`reply_header`).

use std::net::SocketAddr;

use trueip_addrs::{ClientAddr, LbPeer, OriginalDst, SidecarAddr};
use trueip_proxy_header::{
    self as header, Addresses, Command, Detect, Header, Limits, Tlvs, Transport, Version,
    decode_datagram,
};

use trueip_sidecar_config::DatagramHeader;
use trueip_telemetry::Chain;

use crate::metrics::RestoreOutcome;
use trueip_sidecar_config::{HeaderPolicy, ListenerConfig, UntrustedPolicy, canonical};

/// A datagram to relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The flow it belongs to: the client named by its header (`every`), or the load balancer's
    /// address (`first`, and datagrams with no client in their header).
    pub key: SocketAddr,
    /// Who the app should see and what the client sent to, when a header named them.
    pub endpoints: Option<Endpoints>,
    /// The header, when the datagram had an honoured one (its TLVs go into `proxy-v2`).
    pub header: Option<Box<Header>>,
    /// Where the payload starts in the datagram.
    pub payload_at: usize,
    /// What the app will learn, should this datagram open a flow.
    pub outcome: RestoreOutcome,
}

/// The client and the address it sent to, as a header names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// The client.
    pub client: ClientAddr,
    /// The load balancer's frontend the client sent to.
    pub destination: OriginalDst,
}

impl Endpoints {
    /// A flow's endpoints when no header names them: the load balancer `lb` as the client, the
    /// listener's `local` address as the destination.
    pub fn unnamed(lb: LbPeer, local: SidecarAddr) -> Self {
        Self {
            client: LbPeer::new(unmapped(lb.addr())).as_client(),
            destination: SidecarAddr::new(unmapped(local.addr())).as_original_dst(),
        }
    }
}

/// A datagram that is dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The stable label of the drop counter.
    pub reason: &'static str,
    /// The detail for the log line.
    pub detail: String,
}

impl Dropped {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Judges a datagram from `source`. `known_lb_flow`: with `datagram_header: first`, whether the
/// load balancer address `source` already has a flow (its datagrams then carry no header).
pub fn classify(
    config: &ListenerConfig,
    limits: &Limits,
    datagram: &[u8],
    source: SocketAddr,
    known_lb_flow: bool,
) -> Result<Inbound, Dropped> {
    let source = unmapped(source);
    let plain = |outcome| Inbound {
        key: source,
        endpoints: None,
        header: None,
        payload_at: 0,
        outcome,
    };
    if config.header == HeaderPolicy::Off {
        return Ok(plain(RestoreOutcome::NoClient));
    }
    if known_lb_flow && config.datagram_header == DatagramHeader::First {
        return Ok(plain(RestoreOutcome::Restored));
    }
    if header::detect(datagram) == Detect::NotProxy {
        return match config.header {
            HeaderPolicy::Optional => Ok(plain(RestoreOutcome::NoClient)),
            _ => Err(Dropped::new(
                "missing_header",
                "no PROXY header on a listener that requires one",
            )),
        };
    }
    if !config.is_trusted(source.ip()) {
        return match config.untrusted {
            UntrustedPolicy::Reject => Err(Dropped::new(
                "untrusted_source",
                "PROXY header from untrusted source",
            )),
            UntrustedPolicy::Passthrough => Ok(plain(RestoreOutcome::Passthrough)),
        };
    }
    let (header, len) = decode_datagram(datagram, limits)
        .map_err(|e| Dropped::new(e.reason(), format!("invalid PROXY header: {e}")))?;
    if let Some(client) = header.client() {
        crate::client::check(client.ip(), config.allow_loopback_clients)
            .map_err(|e| Dropped::new(e.reason(), format!("PROXY header refused: {e}")))?;
    }
    let endpoints = match (header.client(), header.original_destination()) {
        (Some(client), Some(destination)) => Some(Endpoints {
            client: ClientAddr::new(unmapped(client)),
            destination: OriginalDst::new(unmapped(destination)),
        }),
        _ => None,
    };
    let key = match (config.datagram_header, endpoints) {
        (DatagramHeader::Every, Some(e)) => e.client.addr(),
        _ => source,
    };
    Ok(Inbound {
        key,
        outcome: if endpoints.is_some() {
            RestoreOutcome::Restored
        } else {
            RestoreOutcome::NoClient
        },
        endpoints,
        header: Some(Box::new(header)),
        payload_at: len,
    })
}

/// The clean v2 header re-emitted to the app in `proxy-v2` mode: the client and destination as a
/// UDP `PROXY` command, the allowed TLVs of the flow's header, and a fresh CRC32c if asked.
pub fn app_header(
    endpoints: Endpoints,
    received: Option<&Header>,
    allowed: &[bool; 256],
    crc32c: bool,
) -> Vec<u8> {
    let mut tlvs = received.map(|h| h.tlvs.clone()).unwrap_or_default();
    tlvs.retain(|tlv| allowed[usize::from(tlv.kind)]);
    encode(
        endpoints.client.addr(),
        endpoints.destination.addr(),
        tlvs,
        crc32c,
    )
}

/// The v2 header in front of the app's replies (`reply_header: true`): the addresses of the
/// client's datagrams, swapped (from the frontend the client sent to, to the client), so that a
/// load balancer relaying replies by header knows where each goes.
pub fn reply_header(endpoints: Endpoints, crc32c: bool) -> Vec<u8> {
    encode(
        endpoints.destination.addr(),
        endpoints.client.addr(),
        Tlvs::default(),
        crc32c,
    )
}

fn encode(source: SocketAddr, destination: SocketAddr, tlvs: Tlvs, crc32c: bool) -> Vec<u8> {
    let header = Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Datagram,
        addresses: Addresses::Inet {
            source,
            destination,
        },
        tlvs,
    };
    header.to_v2(crc32c).unwrap_or_else(|e| {
        // Only TLVs near 64 KiB can overflow (and the listener caps received headers far below).
        tracing::warn!(error = %Chain(&e), "re-emitted header too long; its TLVs are dropped");
        Header {
            tlvs: Tlvs::default(),
            ..header
        }
        .to_v2(crc32c)
        .expect("a v2 header with two addresses and no TLVs fits")
    })
}

/// `[::ffff:a.b.c.d]:p` as `a.b.c.d:p`, so a dual-stack listener keys IPv4 flows as IPv4.
pub(super) fn unmapped(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use trueip_proxy_header::kind;

    use super::*;

    const LB: &str = "10.0.0.1:40000";
    const CLIENT: &str = "203.0.113.7:5353";
    const FRONTEND: &str = "198.51.100.1:53";

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn config(tune: impl FnOnce(&mut ListenerConfig)) -> ListenerConfig {
        let mut c = ListenerConfig::new(sa("0.0.0.0:5300"), sa("127.0.0.1:53"));
        c.protocol = super::super::Protocol::Udp;
        c.trusted_sources = vec!["10.0.0.0/8".parse().unwrap()];
        tune(&mut c);
        c
    }

    fn udp_header(client: &str, transport: Transport, tlvs: Tlvs, crc: bool) -> Vec<u8> {
        Header {
            version: Version::V2,
            command: Command::Proxy,
            transport,
            addresses: Addresses::Inet {
                source: sa(client),
                destination: sa(FRONTEND),
            },
            tlvs,
        }
        .to_v2(crc)
        .unwrap()
    }

    fn datagram(client: &str, payload: &[u8]) -> Vec<u8> {
        let mut d = udp_header(client, Transport::Datagram, Tlvs::default(), true);
        d.extend_from_slice(payload);
        d
    }

    fn judge(config: &ListenerConfig, datagram: &[u8], source: &str) -> Result<Inbound, Dropped> {
        classify(config, &Limits::default(), datagram, sa(source), false)
    }

    #[test]
    fn the_header_is_stripped_and_names_the_flow() {
        let c = config(|_| {});
        let d = datagram(CLIENT, b"query");
        let inbound = judge(&c, &d, LB).unwrap();
        assert_eq!(&d[inbound.payload_at..], b"query");
        assert_eq!(inbound.key, sa(CLIENT));
        assert_eq!(
            inbound.endpoints,
            Some(Endpoints {
                client: ClientAddr::new(sa(CLIENT)),
                destination: OriginalDst::new(sa(FRONTEND))
            })
        );
        assert_eq!(inbound.outcome, RestoreOutcome::Restored);
    }

    #[test]
    fn a_v4_mapped_load_balancer_is_trusted_and_unmapped() {
        let c = config(|c| c.datagram_header = DatagramHeader::First);
        let inbound = judge(&c, &datagram(CLIENT, b"x"), "[::ffff:10.0.0.1]:40000").unwrap();
        assert_eq!(inbound.key, sa(LB));
    }

    #[test]
    fn every_bad_datagram_has_its_reason() {
        let c = config(|_| {});
        let good = datagram(CLIENT, b"query");
        let mut bad_crc = good.clone();
        let crc_at = udp_header(CLIENT, Transport::Datagram, Tlvs::default(), true).len() - 1;
        bad_crc[crc_at] ^= 1;
        let tcp = udp_header(CLIENT, Transport::Stream, Tlvs::default(), false);
        let v1 = b"PROXY UDP4 203.0.113.7 198.51.100.1 5353 53\r\nquery".to_vec();
        for (datagram, source, reason) in [
            (good[..20].to_vec(), LB, "truncated"),
            (good[..5].to_vec(), LB, "truncated"),
            (good.clone(), "192.0.2.9:1000", "untrusted_source"),
            (bad_crc, LB, "crc32c_mismatch"),
            (tcp, LB, "stream_in_datagram"),
            (v1, LB, "v1_in_datagram"),
            (b"\x00\x01plain dns".to_vec(), LB, "missing_header"),
            (datagram("127.0.0.1:5353", b"q"), LB, "client_loopback"),
            (datagram("224.0.0.251:5353", b"q"), LB, "client_multicast"),
            (datagram("0.0.0.0:5353", b"q"), LB, "client_unspecified"),
        ] {
            let dropped = judge(&c, &datagram, source).unwrap_err();
            assert_eq!(dropped.reason, reason, "{dropped:?}");
        }
        let capped = classify(&c, &Limits { max_v2_len: 20 }, &good, sa(LB), false);
        assert_eq!(capped.unwrap_err().reason, "v2_too_long");
    }

    #[test]
    fn policies_for_missing_and_untrusted_headers() {
        let optional = config(|c| c.header = HeaderPolicy::Optional);
        let plain = judge(&optional, b"\x00\x01plain", LB).unwrap();
        assert_eq!((plain.key, plain.payload_at), (sa(LB), 0));
        let pass = config(|c| c.untrusted = UntrustedPolicy::Passthrough);
        let d = datagram(CLIENT, b"q");
        let passed = judge(&pass, &d, "192.0.2.9:1000").unwrap();
        assert_eq!(passed.payload_at, 0);
        assert_eq!(passed.outcome, RestoreOutcome::Passthrough);
        let off = config(|c| c.header = HeaderPolicy::Off);
        assert_eq!(judge(&off, &d, LB).unwrap().payload_at, 0);
    }

    #[test]
    fn first_mode_keys_by_load_balancer_and_trusts_known_flows() {
        let c = config(|c| c.datagram_header = DatagramHeader::First);
        let first = judge(&c, &datagram(CLIENT, b"one"), LB).unwrap();
        assert_eq!(first.key, sa(LB));
        assert_eq!(first.endpoints.unwrap().client.addr(), sa(CLIENT));
        let later = classify(&c, &Limits::default(), b"two", sa(LB), true).unwrap();
        assert_eq!((later.key, later.payload_at), (sa(LB), 0));
        // Without a flow, a headerless datagram is refused.
        assert_eq!(judge(&c, b"two", LB).unwrap_err().reason, "missing_header");
    }

    #[test]
    fn local_health_checks_use_the_load_balancer_address() {
        let c = config(|_| {});
        let mut local = ppp_local();
        local.extend(b"ping");
        let inbound = judge(&c, &local, LB).unwrap();
        assert_eq!(inbound.key, sa(LB));
        assert_eq!(inbound.endpoints, None);
        assert_eq!(&local[inbound.payload_at..], b"ping");
        assert_eq!(inbound.outcome, RestoreOutcome::NoClient);
    }

    fn ppp_local() -> Vec<u8> {
        let mut v = trueip_proxy_header::V2_SIGNATURE.to_vec();
        v.extend([0x20, 0x12, 0x00, 0x00]);
        v
    }

    #[test]
    fn the_app_header_filters_tlvs_and_the_reply_header_swaps() {
        let mut tlvs = Tlvs::default();
        tlvs.push(kind::AUTHORITY, b"dns.example".to_vec());
        tlvs.push(kind::NOOP, vec![0; 3]);
        let d = {
            let mut d = udp_header(CLIENT, Transport::Datagram, tlvs, true);
            d.extend(b"q");
            d
        };
        let inbound = judge(&config(|_| {}), &d, LB).unwrap();
        let mut allowed = [false; 256];
        allowed[usize::from(kind::AUTHORITY)] = true;
        let endpoints = inbound.endpoints.unwrap();
        let to_app = app_header(endpoints, inbound.header.as_deref(), &allowed, true);
        let (decoded, len) = decode_datagram(&to_app, &Limits::default()).unwrap();
        assert_eq!(len, to_app.len());
        assert_eq!(decoded.client(), Some(sa(CLIENT)));
        assert_eq!(decoded.transport, Transport::Datagram);
        assert_eq!(decoded.tlvs.authority(), Some("dns.example"));
        assert!(decoded.tlvs.crc32c().is_some());
        assert!(decoded.tlvs.iter().all(|t| t.kind != kind::NOOP));

        let reply = reply_header(endpoints, false);
        let (decoded, _) = decode_datagram(&reply, &Limits::default()).unwrap();
        assert_eq!(decoded.client(), Some(sa(FRONTEND)));
        assert_eq!(decoded.original_destination(), Some(sa(CLIENT)));
    }

    proptest! {
        /// Any payload behind any valid UDP header comes out byte for byte, and the flow is the
        /// header's client, IPv4 or IPv6.
        #[test]
        fn payload_is_untouched(
            payload in prop::collection::vec(any::<u8>(), 0..2048),
            v6 in any::<bool>(),
            port in 1u16..,
            crc in any::<bool>(),
        ) {
            let client = if v6 { format!("[2001:db8:c::7]:{port}") } else { format!("203.0.113.7:{port}") };
            let mut d = udp_header(&client, Transport::Datagram, Tlvs::default(), crc);
            d.extend_from_slice(&payload);
            let inbound = judge(&config(|_| {}), &d, LB).unwrap();
            prop_assert_eq!(&d[inbound.payload_at..], &payload[..]);
            prop_assert_eq!(inbound.key, sa(&client));
        }

        /// Whatever the bytes, a datagram is either relayed or dropped with a reason: never a
        /// panic, and a relayed payload is a suffix of the datagram.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), sig in any::<bool>()) {
            let mut d = if sig { trueip_proxy_header::V2_SIGNATURE.to_vec() } else { Vec::new() };
            d.extend_from_slice(&bytes);
            match judge(&config(|_| {}), &d, LB) {
                Ok(inbound) => prop_assert!(inbound.payload_at <= d.len()),
                Err(dropped) => prop_assert!(!dropped.reason.is_empty()),
            }
        }
    }
}
