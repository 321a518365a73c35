//! Differential test: the same inputs to HAProxy's PROXY decoder (`accept-proxy`) and to ours.
//! HAProxy accepts ⇔ we accept, and both name the same client. Where we deliberately differ,
//! the case says so and why, and the difference itself is asserted.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
};

use anyhow::{Result, ensure};
use trueip_interop_tests::{Topology, haproxy};
use trueip_proxy_header::{
    Addresses, Command, Header, Limits, Tlvs, Transport, Version, decode, kind,
};
use trueip_test_kit::{Need, prereq::require};

use crate::TIMEOUT;

const HAPROXY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9200);

/// How a case's outcomes relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Same verdict, same addresses.
    Same,
    /// HAProxy accepts, we reject on purpose (the reason is the case's note).
    WeAreStricter,
    /// HAProxy rejects what the spec allows and we accept (the reason is the case's note).
    TheyAreStricter,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = trueip_proxy_header::V2_SIGNATURE.to_vec();
    h.extend([ver_cmd, fam]);
    h.extend(u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    h.extend(body);
    h
}

fn tcp4_body() -> Vec<u8> {
    let mut b = vec![198, 18, 0, 1, 192, 0, 2, 10];
    b.extend(51234u16.to_be_bytes());
    b.extend(443u16.to_be_bytes());
    b
}

fn encoded(tlvs: Tlvs, crc: bool) -> Result<Vec<u8>> {
    Ok(Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: "198.18.0.1:51234".parse()?,
            destination: "192.0.2.10:443".parse()?,
        },
        tlvs,
    }
    .to_v2(crc)?)
}

fn cases() -> Result<Vec<Case>> {
    let same = |name, bytes: Vec<u8>| Case {
        name,
        bytes,
        expect: Expect::Same,
    };
    let ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let v1_107 = format!("PROXY UNKNOWN {ff} {ff} 65535 65535\r\n");
    let v1_108 = format!("PROXY UNKNOWN {ff} {ff} 65535 655350\r\n");
    let mut tcp6 = Vec::new();
    tcp6.extend("2001:db8:c::7".parse::<std::net::Ipv6Addr>()?.octets());
    tcp6.extend("2001:db8:b::10".parse::<std::net::Ipv6Addr>()?.octets());
    tcp6.extend([0xc8, 0x22, 0x01, 0xbb]);
    let mut with_tlvs = Tlvs::default();
    with_tlvs.push(kind::AUTHORITY, b"example.test".to_vec());
    with_tlvs.push(kind::UNIQUE_ID, b"id-1".to_vec());
    let good_crc = encoded(Tlvs::default(), true)?;
    let mut bad_crc = good_crc.clone();
    // The CRC32c TLV is the only one: type, length (2), value at 28..35.
    ensure!(bad_crc[28] == kind::CRC32C, "CRC TLV layout");
    bad_crc[34] ^= 0xff;
    let mut overrun = tcp4_body();
    overrun.extend([kind::NOOP, 0x00, 0x10, 0, 0]);
    let mut oversize = tcp4_body();
    oversize.extend([kind::NOOP, 0x13, 0x88]);
    oversize.extend(vec![0; 5000]);
    Ok(vec![
        same(
            "v1 TCP4",
            b"PROXY TCP4 198.18.0.1 192.0.2.10 51234 443\r\n".to_vec(),
        ),
        same(
            "v1 TCP6",
            b"PROXY TCP6 2001:db8:c::7 2001:db8:b::10 51234 443\r\n".to_vec(),
        ),
        same("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec()),
        Case {
            name: "v1 UNKNOWN with addresses: doc/proxy-protocol.txt says a receiver must \
                   ignore what follows UNKNOWN up to the CRLF, so we accept; HAProxy 2.6 only \
                   accepts the exact line `PROXY UNKNOWN\\r\\n` (memcmp in conn_recv_proxy)",
            bytes: b"PROXY UNKNOWN 198.18.0.1 192.0.2.10 51234 443\r\n".to_vec(),
            expect: Expect::TheyAreStricter,
        },
        Case {
            name: "v1 UNKNOWN, exactly 107 bytes: the longest line the spec allows (CRLF \
                   included), so we accept; HAProxy rejects it for the reason above",
            bytes: v1_107.into_bytes(),
            expect: Expect::TheyAreStricter,
        },
        same("v1 108 bytes", v1_108.into_bytes()),
        same(
            "v1 port 65536",
            b"PROXY TCP4 198.18.0.1 192.0.2.10 65536 443\r\n".to_vec(),
        ),
        same(
            "v1 TCP4 with IPv6 address",
            b"PROXY TCP4 2001:db8::1 192.0.2.10 1 2\r\n".to_vec(),
        ),
        same(
            "v1 LF only",
            b"PROXY TCP4 198.18.0.1 192.0.2.10 51234 443\n".to_vec(),
        ),
        same(
            "v1 bad protocol",
            b"PROXY TCP5 198.18.0.1 192.0.2.10 51234 443\r\n".to_vec(),
        ),
        same("v2 TCP4", v2(0x21, 0x11, &tcp4_body())),
        same("v2 TCP6", v2(0x21, 0x21, &tcp6)),
        same("v2 LOCAL", v2(0x20, 0x00, &[])),
        same("v2 LOCAL with TCP4 addresses", v2(0x20, 0x11, &tcp4_body())),
        Case {
            name: "v2 PROXY UNSPEC: the spec says to accept it and use the connection's own \
                   addresses (DESIGN.md: UNSPEC accepted), as we do; HAProxy 2.6 closes it",
            bytes: v2(0x21, 0x00, &[]),
            expect: Expect::TheyAreStricter,
        },
        Case {
            name: "v2 PROXY INET with an UNSPEC transport (0x10): the spec says to ignore the \
                   addresses, so we accept and use the connection's own (as for UNSPEC); \
                   HAProxy 2.6 closes it",
            bytes: v2(0x21, 0x10, &tcp4_body()),
            expect: Expect::TheyAreStricter,
        },
        same("v2 PROXY UDP4 on TCP (0x12)", v2(0x21, 0x12, &tcp4_body())),
        same("v2 TLVs", encoded(with_tlvs, false)?),
        same("v2 CRC32c good", good_crc),
        same("v2 CRC32c bad", bad_crc),
        same("v2 TLV overrun", v2(0x21, 0x11, &overrun)),
        same("v2 TCP4 too short", v2(0x21, 0x11, &tcp4_body()[..4])),
        same("v2 version 1", v2(0x11, 0x11, &tcp4_body())),
        same("v2 command 2", v2(0x22, 0x11, &tcp4_body())),
        Case {
            name: "v2 oversize (5015 bytes, NOOP TLV): we cap v2 headers at 4096 bytes \
                   (--max-header-len) so untrusted input cannot make us buffer 64 KiB; \
                   HAProxy reads whatever fits its 16 KiB buffer",
            bytes: v2(0x21, 0x11, &oversize),
            expect: Expect::WeAreStricter,
        },
        same("no header", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
    ])
}

/// What HAProxy made of `bytes`: the client it reports, or `None` when it closed.
fn haproxy_verdict(topo: &Topology, bytes: &[u8]) -> Result<(Option<SocketAddr>, SocketAddr)> {
    let mut stream = topo
        .pod
        .run(|| TcpStream::connect_timeout(&HAPROXY, TIMEOUT))??;
    let local = stream.local_addr()?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    // Written at once: HAProxy peeks at what has arrived.
    let _ = stream.write_all(&[bytes, b"GET /d HTTP/1.0\r\n\r\n"].concat());
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    if !reply.starts_with("HTTP/1.0 200") && !reply.starts_with("HTTP/1.1 200") {
        return Ok((None, local));
    }
    let body = reply.rsplit("\r\n\r\n").next().unwrap_or_default();
    let mut words = body.split_whitespace();
    let ip = words.next().and_then(|w| w.parse::<IpAddr>().ok());
    let port = words.next().and_then(|w| w.parse::<u16>().ok());
    Ok((ip.zip(port).map(|(i, p)| SocketAddr::new(i, p)), local))
}

/// Every case through HAProxy 2.6 `accept-proxy` and through `decode`: the verdicts agree,
/// and an accepted header yields the same client in both (LOCAL, UNSPEC and UNKNOWN: the
/// connection's own address). The one deliberate difference (oversize v2) is asserted as a
/// difference.
pub(crate) fn haproxy_and_trueip_agree_on_every_header() -> Result<()> {
    require(&[Need::Haproxy])?;
    let topo = Topology::new()?;
    let cfg = format!(
        "global\n    log stderr format raw local0 info\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 3s\n    timeout server 5s\n\
         frontend diff\n    bind {HAPROXY} accept-proxy\n\
         \x20   http-request return status 200 content-type text/plain lf-string \"%[src] %[src_port]\"\n"
    );
    let _haproxy = haproxy::start_config(&topo, &topo.pod, "haproxy-diff", &cfg, &[HAPROXY])?;
    let mut table = String::new();
    let mut mismatches = Vec::new();
    for case in cases()? {
        let (theirs, conn) = haproxy_verdict(&topo, &case.bytes)?;
        let ours = match decode(
            &[&case.bytes[..], b"GET /d HTTP/1.0\r\n\r\n"].concat(),
            &Limits::default(),
        ) {
            // A TCP listener refuses a connection its header describes as UDP
            // (`transport_mismatch`).
            Ok(Some((header, _)))
                if header.command == Command::Proxy && header.transport == Transport::Datagram =>
            {
                None
            }
            Ok(Some((header, _))) => Some(header.stream_client().unwrap_or(conn)),
            Ok(None) | Err(_) => None,
        };
        table.push_str(&format!(
            "{:<32} haproxy={theirs:?} trueip={ours:?}\n",
            case.name.split(':').next().unwrap_or(case.name)
        ));
        let verdict = (|| -> Result<()> {
            match case.expect {
                Expect::Same => ensure!(
                    theirs == ours,
                    "{}: HAProxy {theirs:?}, trueip {ours:?}",
                    case.name
                ),
                Expect::TheyAreStricter => ensure!(
                    theirs.is_none() && ours.is_some(),
                    "{}: expected HAProxy to reject and trueip to accept; HAProxy {theirs:?}, \
                 trueip {ours:?}",
                    case.name
                ),
                Expect::WeAreStricter => ensure!(
                    theirs.is_some() && ours.is_none(),
                    "{}: expected HAProxy to accept and trueip to reject; HAProxy {theirs:?}, \
                 trueip {ours:?}",
                    case.name
                ),
            }
            Ok(())
        })();
        if let Err(e) = verdict {
            mismatches.push(format!("{e:#}"));
        }
    }
    eprintln!("{table}");
    ensure!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    Ok(())
}
