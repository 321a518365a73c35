//! Receivers of the sidecar's re-emitted header — HAProxy `accept-proxy`, Apache httpd
//! mod_remoteip `RemoteIPProxyProtocol On`, nginx `listen ... proxy_protocol` — and tshark's
//! PROXY dissector reading the same loopback traffic.
//!
//! A load balancer stand-in in the LB namespace sends headers built with trueip-proxy-header
//! (v2 with an authority and a unique-id TLV, IPv4 and IPv6 clients) to sidecars in
//! `proxy-v1`, `proxy-v2`, and `proxy-v2 --tlv-allow authority,unique-id --crc32c` mode, one per
//! receiver, each followed by an HTTP request.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use trueip_interop_tests::{Family, Topology, haproxy, sidecar};
use trueip_proxy_header::{Addresses, Command, Header, Tlvs, Transport, Version, kind};
use trueip_test_kit::{
    Need, Proc,
    prereq::{find_program, require},
    process::Launch,
    run::{self, wait_for},
};

use crate::{TIMEOUT, TRUSTED_LB};

const AUTHORITY: &str = "app.trueip.test";

/// The sidecar modes whose output every receiver must accept.
const MODES: [(&str, &[&str]); 3] = [
    ("proxy-v1", &[]),
    // Every TLV stripped (only NOOP allowed, and none is sent).
    ("proxy-v2", &["--tlv-allow", "noop"]),
    (
        "proxy-v2",
        &["--tlv-allow", "authority,unique-id", "--crc32c"],
    ),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Receiver {
    Haproxy,
    Apache,
    Nginx,
}

impl Receiver {
    fn port(self) -> u16 {
        match self {
            Self::Haproxy => 9101,
            Self::Apache => 9102,
            Self::Nginx => 9103,
        }
    }

    fn addr(self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port())
    }
}

/// The header the LB stand-in sends for `client`.
fn lb_header(client: SocketAddr, dst: SocketAddr, n: usize) -> Result<Vec<u8>> {
    let mut tlvs = Tlvs::default();
    tlvs.push(kind::AUTHORITY, AUTHORITY.as_bytes().to_vec());
    tlvs.push(kind::UNIQUE_ID, format!("uid-{n}").into_bytes());
    let header = Header {
        version: Version::V2,
        command: Command::Proxy,
        transport: Transport::Stream,
        addresses: Addresses::Inet {
            source: client,
            destination: dst,
        },
        tlvs,
    };
    Ok(header.to_v2(false)?)
}

/// Sends `header` and a request for `path` from the LB namespace to `to`; returns the reply.
fn send(topo: &Topology, to: SocketAddr, header: &[u8], path: &str) -> Result<String> {
    let mut stream = topo.lb.run(|| TcpStream::connect_timeout(&to, TIMEOUT))??;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(
        &[
            header,
            format!("GET {path} HTTP/1.0\r\nHost: {AUTHORITY}\r\n\r\n").as_bytes(),
        ]
        .concat(),
    )?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn start_haproxy(topo: &Topology) -> Result<Proc> {
    let cfg = format!(
        "global\n    log stderr format raw local0 info\n\
         defaults\n    mode http\n    log global\n    timeout connect 5s\n\
         \x20   timeout client 10s\n    timeout server 10s\n\
         frontend rx\n    bind {} accept-proxy\n\
         \x20   log-format \"rx path=%HP src=%[src]:%[src_port] authority=%[fc_pp_authority] uid=%[fc_pp_unique_id]\"\n\
         \x20   http-request return status 200 content-type text/plain lf-string \"src=%[src] port=%[src_port] authority=%[fc_pp_authority] uid=%[fc_pp_unique_id]\"\n",
        Receiver::Haproxy.addr()
    );
    haproxy::start_config(
        topo,
        &topo.pod,
        "haproxy-rx",
        &cfg,
        &[Receiver::Haproxy.addr()],
    )
}

fn start_apache(topo: &Topology) -> Result<Proc> {
    let dir = topo.dir().join("apache");
    std::fs::create_dir_all(&dir)?;
    let m = "/usr/lib/apache2/modules";
    let conf = format!(
        "ServerRoot {d}\nServerName localhost\nListen {addr}\nPidFile {d}/httpd.pid\n\
         DefaultRuntimeDir {d}\nMutex file:{d} default\nUser www-data\nGroup www-data\n\
         LoadModule mpm_event_module {m}/mod_mpm_event.so\n\
         LoadModule authz_core_module {m}/mod_authz_core.so\n\
         LoadModule remoteip_module {m}/mod_remoteip.so\n\
         ErrorLog {d}/error.log\nLogLevel info\n\
         LogFormat \"rx %a %{{remote}}p %U\" rx\nCustomLog {d}/access.log rx\n\
         DocumentRoot {d}\nRemoteIPProxyProtocol On\n",
        d = dir.display(),
        addr = Receiver::Apache.addr(),
    );
    let path = dir.join("httpd.conf");
    std::fs::write(&path, conf)?;
    let mut proc = Launch::new("apache", "apache2")
        .args(["-X".as_ref(), "-f".as_ref(), path.as_os_str()])
        .netns(&topo.pod)
        .spawn(topo.dir())?;
    proc.wait_listening(&topo.pod, Receiver::Apache.addr(), TIMEOUT)?;
    Ok(proc)
}

fn start_nginx(topo: &Topology) -> Result<Proc> {
    let prefix = topo.dir().join("nginx-rx");
    std::fs::create_dir_all(&prefix)?;
    let conf = prefix.join("nginx.conf");
    // nginx 1.22 has no $proxy_protocol_tlv_* variables (added in 1.23.2): it logs what it has.
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nerror_log stderr info;\npid {d}/nginx.pid;\n\
             events {{}}\nhttp {{\n  access_log off;\n  server {{\n    listen {addr} proxy_protocol;\n\
             \x20   location / {{ return 200 \"src=$proxy_protocol_addr port=$proxy_protocol_port\"; }}\n  }}\n}}\n",
            d = prefix.display(),
            addr = Receiver::Nginx.addr()
        ),
    )?;
    let mut proc = Launch::new("nginx-rx", "nginx")
        .args([
            "-p".to_owned(),
            format!("{}/", prefix.display()),
            "-e".into(),
            "stderr".into(),
            "-c".into(),
        ])
        .args([&conf])
        .netns(&topo.pod)
        .spawn(topo.dir())?;
    proc.wait_listening(&topo.pod, Receiver::Nginx.addr(), TIMEOUT)?;
    Ok(proc)
}

/// Every receiver accepts every header the sidecar emits (v1; v2 without TLVs; v2 with authority and
/// unique-id passed through and a CRC32c) for IPv4 and IPv6 clients, and reports exactly the
/// client the load balancer named: HAProxy's `%[src]`/`%[src_port]` (plus `fc_pp_authority`
/// and `fc_pp_unique_id` when the TLVs were passed on), Apache's `%a` and `%{remote}p`,
/// nginx's `$proxy_protocol_addr`/`$proxy_protocol_port`. tshark, capturing the sidecars'
/// loopback traffic, decodes the same addresses from every v1 and v2 header.
pub(crate) fn haproxy_apache_nginx_accept_every_reemitted_header_and_tshark_decodes_it()
-> Result<()> {
    require(&[Need::Haproxy, Need::Nginx, Need::Sidecar])?;
    let apache = find_program("apache2").is_some();
    if !apache {
        run::note("SKIPPED (Apache part): `apache2` not found (run scripts/setup.sh)");
    }
    let tshark = find_program("tshark").is_some();
    if !tshark {
        run::note("SKIPPED (tshark part): `tshark` not found (run scripts/setup.sh)");
    }
    run::note(
        "note: nginx 1.22 has no $proxy_protocol_tlv_* variables (nginx >= 1.23.2): \
         nginx checks addresses only",
    );
    let topo = Topology::new()?;
    let capture = topo.dir().join("lo.pcapng");
    let mut dumper = if tshark {
        let proc = Launch::new("tshark-capture", "tshark")
            .args(["-i", "lo", "-f", "tcp portrange 9101-9103", "-w"])
            .args([&capture])
            .netns(&topo.pod)
            .spawn(topo.dir())?;
        proc.wait_for_log(&["Capturing on"], TIMEOUT)?;
        Some(proc)
    } else {
        None
    };
    let mut receivers = vec![Receiver::Haproxy, Receiver::Nginx];
    let mut procs = vec![start_haproxy(&topo)?, start_nginx(&topo)?];
    if apache {
        receivers.push(Receiver::Apache);
        procs.push(start_apache(&topo)?);
    }
    let mut listen_port = 8100;
    let mut expected_clients = Vec::new();
    let mut n = 0;
    for &rx in &receivers {
        for (mode, flags) in MODES {
            let listen = SocketAddr::new(Family::V4.pod(), listen_port);
            listen_port += 1;
            let name = format!("sidecar-{rx:?}-{listen_port}");
            let launch = sidecar::launch(&name, listen, rx.addr(), mode, &TRUSTED_LB)?.args(flags);
            procs.push(sidecar::start(&topo, &topo.pod, launch, listen)?);
            let passes_tlvs = flags.contains(&"authority,unique-id");
            for family in Family::BOTH {
                n += 1;
                let client = SocketAddr::new(family.client(), u16::try_from(40000 + n)?);
                let dst = SocketAddr::new(family.lb_front(), 443);
                let path = format!("/{rx:?}-{n}");
                let reply = send(&topo, listen, &lb_header(client, dst, n)?, &path)?;
                let what = format!("{rx:?} behind {mode} {flags:?}, {family}: {reply:?}");
                ensure!(reply.contains(" 200 ") || rx == Receiver::Apache, "{what}");
                ensure!(reply.starts_with("HTTP/1."), "{what}");
                match rx {
                    Receiver::Haproxy | Receiver::Nginx => {
                        ensure!(
                            reply.contains(&format!("src={} port={}", client.ip(), client.port())),
                            "{what}"
                        );
                    }
                    Receiver::Apache => {
                        let log = topo.dir().join("apache/access.log");
                        let line = format!("rx {} {} {path}", client.ip(), client.port());
                        wait_for(&format!("Apache to log {line:?}"), TIMEOUT, || {
                            Ok(std::fs::read_to_string(&log)
                                .unwrap_or_default()
                                .contains(&line)
                                .then_some(()))
                        })
                        .with_context(|| {
                            format!(
                                "{what}\naccess.log: {}",
                                std::fs::read_to_string(&log).unwrap_or_default()
                            )
                        })?;
                    }
                }
                if rx == Receiver::Haproxy {
                    let tlvs = format!("authority={AUTHORITY} uid=uid-{n}");
                    ensure!(
                        reply.contains(&tlvs) == passes_tlvs,
                        "{what}: TLVs passed on: {passes_tlvs}"
                    );
                }
                expected_clients.push((mode, client));
            }
        }
    }
    if let Some(dumper) = dumper.as_mut() {
        // Let the last segments reach the capture file, then stop it.
        std::thread::sleep(Duration::from_millis(500));
        dumper.stop();
        check_tshark(&topo, &capture, &expected_clients)?;
    }
    Ok(())
}

/// tshark's PROXY dissector on the capture: every header the sidecars sent decodes to the
/// expected client, with the expected version.
fn check_tshark(
    topo: &Topology,
    capture: &std::path::Path,
    expected: &[(&str, SocketAddr)],
) -> Result<()> {
    let mut cmd = std::process::Command::new("tshark");
    // PROXY is a heuristic dissector on TCP, enabled by default: no decode-as needed.
    cmd.arg("-r").arg(capture);
    cmd.args([
        "-Y",
        "proxy",
        "-T",
        "fields",
        "-E",
        "separator=,",
        "-e",
        "proxy.v1.magic",
        "-e",
        "proxy.v2.magic",
        "-e",
        "proxy.src.ipv4",
        "-e",
        "proxy.src.ipv6",
        "-e",
        "proxy.srcport",
    ]);
    let out = run::output(&mut cmd, Duration::from_secs(60))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seen = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            continue;
        }
        let version = if f[0].is_empty() {
            "proxy-v2"
        } else {
            "proxy-v1"
        };
        let ip = if f[2].is_empty() { f[3] } else { f[2] };
        if let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), f[4].parse::<u16>()) {
            seen.push((version, SocketAddr::new(ip, port)));
        }
    }
    for &(mode, client) in expected {
        ensure!(
            seen.contains(&(mode, client)),
            "tshark did not decode a {mode} header naming {client}; it decoded {seen:?}\n{text}\n(capture kept in {})",
            topo.dir().display()
        );
    }
    eprintln!("tshark decoded {} PROXY headers", seen.len());
    Ok(())
}
