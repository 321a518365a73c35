//! Real senders into the sidecar, and what it made of their headers: the sidecar re-emits a
//! PROXY v2 header (`--mode proxy-v2`, TLVs passed on, a fresh CRC32c) to the recording app in
//! the pod, and the test decodes the recorded bytes with trueip-proxy-header. So every
//! assertion is about what the sidecar decoded from the real peer.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use trueip_interop_tests::{
    Family, Topology, curl, haproxy,
    record::{RecordApp, Recording},
    sidecar, tls,
};
use trueip_proxy_header::{Command, Header, Limits, Ssl, decode};
use trueip_test_kit::{
    Need,
    prereq::{self, require},
    process::Launch,
    run,
};

use crate::{SIDECAR_PORT, TIMEOUT, TRUSTED_LB, sidecar_addr};

/// The recording app, behind the sidecar.
const RECORDER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);

/// The re-emitting sidecar's flags: TLVs HAProxy sends are passed on, with a fresh CRC32c.
const REEMIT: [&str; 3] = ["--tlv-allow", "authority,unique-id,ssl", "--crc32c"];

/// Decodes a recording: the header the sidecar re-emitted and the payload after it.
fn decode_recording(rec: &Recording) -> Result<(Header, Vec<u8>)> {
    let (header, used) = decode(&rec.bytes, &Limits::default())
        .with_context(|| format!("the sidecar's header does not decode: {rec:?}"))?
        .with_context(|| format!("the sidecar's header is incomplete: {rec:?}"))?;
    Ok((header, rec.bytes[used..].to_vec()))
}

/// The recording whose header names `client`.
fn recording_for(recs: &[Recording], client: SocketAddr) -> Result<(Header, Vec<u8>)> {
    for rec in recs {
        let (header, payload) = decode_recording(rec)?;
        if header.client() == Some(client) {
            return Ok((header, payload));
        }
    }
    bail!("no recorded header names {client}: {recs:?}")
}

/// A `proxy-v2` sidecar with [`REEMIT`] in front of the recorder, trusting `trusted`.
fn reemitting_sidecar(topo: &Topology, trusted: &[&str]) -> Result<trueip_test_kit::Proc> {
    let listen = sidecar_addr(Family::V4);
    let launch = sidecar::launch("sidecar", listen, RECORDER, "proxy-v2", trusted)?.args(REEMIT);
    sidecar::start(topo, &topo.pod, launch, listen)
}

/// HAProxy's three ways to send TLS facts, one frontend each.
const TLS_VARIANTS: [(&str, u16, &str); 3] = [
    (
        "v2opts",
        443,
        "send-proxy-v2 proxy-v2-options crc32c,authority,unique-id,ssl",
    ),
    ("v2ssl", 444, "send-proxy-v2-ssl"),
    ("v2sslcn", 445, "send-proxy-v2-ssl-cn"),
];

/// HAProxy terminates TLS (a certificate made now, client certificates verified against a CA
/// made now) and sends `send-proxy-v2` with `proxy-v2-options crc32c,authority,unique-id,ssl`,
/// `send-proxy-v2-ssl` and `send-proxy-v2-ssl-cn`; curl connects with SNI and a client
/// certificate over IPv4 and IPv6. What the app receives from the sidecar decodes to exactly
/// what HAProxy sent: the client = curl's address and port, the original destination = the
/// frontend, the authority = the SNI curl sent, the unique id = the `%ID` HAProxy logged, the
/// SSL TLV with the TLS version HAProxy logged, the client flag set and verify = 0, and the
/// certificate CN only with `-ssl-cn`; a fresh, valid CRC32c; the HTTP request intact after it.
pub(crate) fn haproxy_tls_send_proxy_v2_tlvs_reach_the_app_exactly() -> Result<()> {
    require(&[Need::Haproxy, Need::Curl, Need::Sidecar])?;
    let topo = Topology::new()?;
    let pki = tls::Pki::generate(topo.dir())?;
    let mut recorder = RecordApp::start(&topo, &topo.pod, &[RECORDER])?;
    let _sidecar = reemitting_sidecar(&topo, &TRUSTED_LB)?;

    let mut cfg = String::from(
        "global\n    log stderr format raw local0 info\n\
         defaults\n    mode tcp\n    log global\n    timeout connect 5s\n\
         \x20   timeout client 30s\n    timeout server 30s\n",
    );
    let mut binds = Vec::new();
    for (name, port, server_opts) in TLS_VARIANTS {
        let ssl = format!(
            "ssl crt {} ca-file {} verify optional",
            pki.server_pem.display(),
            pki.ca_cert.display()
        );
        cfg.push_str(&format!(
            "\nfrontend fe_{name}\n\
             \x20   bind {v4}:{port} {ssl}\n\
             \x20   bind [{v6}]:{port} {ssl}\n\
             \x20   unique-id-format uid-{name}-%ci-%cp-%rt\n\
             \x20   log-format \"variant={name} id=%ID client=%ci:%cp sni=%[ssl_fc_sni] sslv=%sslv cn=%[ssl_c_s_dn(cn)]\"\n\
             \x20   default_backend be_{name}\n\
             backend be_{name}\n    server pod {server} {server_opts}\n",
            v4 = Family::V4.lb_front(),
            v6 = Family::V6.lb_front(),
            server = sidecar_addr(Family::V4),
        ));
        for family in Family::BOTH {
            binds.push(SocketAddr::new(family.lb_front(), port));
        }
    }
    let haproxy = haproxy::start_config(&topo, &topo.lb, "haproxy-tls", &cfg, &binds)?;

    let mut n = 0;
    for (name, port, _) in TLS_VARIANTS {
        for family in Family::BOTH {
            let resolve = match family.lb_front() {
                IpAddr::V4(ip) => format!("{}:{port}:{ip}", tls::SERVER_NAME),
                IpAddr::V6(ip) => format!("{}:{port}:[{ip}]", tls::SERVER_NAME),
            };
            let cert = pki.client_cert.display().to_string();
            let key = pki.client_key.display().to_string();
            let path = format!("/{name}-{family}");
            let response = curl::get_url(
                &topo.client,
                &["-k", "--resolve", &resolve, "--cert", &cert, "--key", &key],
                &format!("https://{}:{port}{path}", tls::SERVER_NAME),
            )?;
            ensure!(response.is_ok(), "{name} {family}: {response:?}");
            let client = response.local.context("curl reported no local address")?;
            n += 1;
            let recs = recorder.wait_recordings(n, TIMEOUT)?;
            let (header, payload) = recording_for(&recs, client)?;
            let logged = haproxy.wait_for_log(
                &[
                    &format!("variant={name} "),
                    // HAProxy's %ci:%cp: IPv6 without brackets.
                    &format!("client={}:{} ", client.ip(), client.port()),
                ],
                TIMEOUT,
            )?;
            let field = |key: &str| {
                logged
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{key}=")))
                    .unwrap_or_default()
                    .to_owned()
            };
            let what = format!("{name} {family}: header {header:?}, HAProxy logged {logged:?}");
            ensure!(header.command == Command::Proxy, "{what}");
            ensure!(
                header.original_destination() == Some(SocketAddr::new(family.lb_front(), port)),
                "{what}"
            );
            ensure!(
                String::from_utf8_lossy(&payload).starts_with(&format!("GET {path} HTTP/1.1\r\n")),
                "{what}: payload {:?}",
                String::from_utf8_lossy(&payload)
            );
            ensure!(
                header.tlvs.crc32c().is_some(),
                "{what}: no CRC32c re-emitted"
            );
            let ssl: Ssl = header
                .tlvs
                .ssl()
                .with_context(|| format!("{what}: no SSL TLV"))?;
            ensure!(ssl.client & Ssl::CLIENT_SSL != 0, "{what}: {ssl:?}");
            ensure!(ssl.verify == 0, "{what}: verify {ssl:?}");
            ensure!(
                ssl.version.as_deref() == Some(field("sslv").as_str()),
                "{what}: {ssl:?}"
            );
            if name == "v2opts" {
                ensure!(
                    header.tlvs.authority() == Some(tls::SERVER_NAME)
                        && field("sni") == tls::SERVER_NAME,
                    "{what}: authority"
                );
                let id = header.tlvs.unique_id().map(String::from_utf8_lossy);
                ensure!(
                    id.as_deref() == Some(field("id").as_str()) && field("id").starts_with("uid-"),
                    "{what}: unique id {id:?}"
                );
            } else {
                ensure!(
                    header.tlvs.authority().is_none() && header.tlvs.unique_id().is_none(),
                    "{what}: TLVs HAProxy was not asked for"
                );
            }
            if name == "v2sslcn" {
                ensure!(
                    ssl.cn.as_deref() == Some(tls::CLIENT_CN) && field("cn") == tls::CLIENT_CN,
                    "{what}: CN {ssl:?}"
                );
            } else {
                ensure!(ssl.cn.is_none(), "{what}: CN sent without -ssl-cn: {ssl:?}");
            }
            ensure!(
                ssl.client & Ssl::CLIENT_CERT_CONN != 0,
                "{what}: curl's certificate not flagged: {ssl:?}"
            );
        }
    }
    Ok(())
}

/// nginx's stream module in the LB namespace, `proxy_protocol on;` (a v1 sender) in front of
/// the sidecar: the header the sidecar re-emits names the client's address and port and
/// nginx's listening address, over IPv4 and IPv6, and the client's bytes follow intact.
pub(crate) fn nginx_stream_proxy_protocol_v1_sender() -> Result<()> {
    require(&[Need::Nginx, Need::Sidecar])?;
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    if !std::path::Path::new(module).is_file() {
        return Err(prereq::skip(format!(
            "{module} missing (Debian package libnginx-mod-stream)"
        )));
    }
    let topo = Topology::new()?;
    let mut recorder = RecordApp::start(&topo, &topo.pod, &[RECORDER])?;
    let _sidecar = reemitting_sidecar(&topo, &TRUSTED_LB)?;
    let port = 90;
    let prefix = topo.dir().join("nginx-stream");
    std::fs::create_dir_all(&prefix)?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {module};\ndaemon off;\nmaster_process off;\n\
             error_log stderr info;\npid {dir}/nginx.pid;\nevents {{}}\n\
             stream {{\n  server {{\n    listen {v4}:{port};\n    listen [{v6}]:{port};\n\
             \x20   proxy_pass {pod};\n    proxy_protocol on;\n  }}\n}}\n",
            dir = prefix.display(),
            v4 = Family::V4.lb_front(),
            v6 = Family::V6.lb_front(),
            pod = sidecar_addr(Family::V4),
        ),
    )?;
    let mut nginx = Launch::new("nginx-stream", "nginx")
        .args([
            "-p".to_owned(),
            format!("{}/", prefix.display()),
            "-e".into(),
            "stderr".into(),
            "-c".into(),
        ])
        .args([&conf])
        .netns(&topo.lb)
        .spawn(topo.dir())?;
    for family in Family::BOTH {
        nginx.wait_listening(&topo.lb, SocketAddr::new(family.lb_front(), port), TIMEOUT)?;
    }
    for (i, family) in Family::BOTH.into_iter().enumerate() {
        let front = SocketAddr::new(family.lb_front(), port);
        let payload = format!("hello from {family}\n");
        let reply = trueip_interop_tests::app::exchange(&topo.client, front, payload.as_bytes())?;
        let recs = recorder.wait_recordings(i + 1, TIMEOUT)?;
        let (header, got) = recording_for(&recs, reply.local)?;
        ensure!(
            header.original_destination() == Some(front) && got == payload.as_bytes(),
            "{family}: {header:?}, payload {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    Ok(())
}

/// curl `--haproxy-clientip` (curl >= 8.2) sends a v1 header naming an address of the
/// caller's choice. Where this curl has it, the sidecar must pass that address on.
pub(crate) fn curl_haproxy_clientip() -> Result<()> {
    require(&[Need::Curl, Need::Sidecar])?;
    let mut help = std::process::Command::new("curl");
    help.args(["--help", "all"]);
    let out = run::output(&mut help, Duration::from_secs(10))?;
    if !String::from_utf8_lossy(&out.stdout).contains("--haproxy-clientip") {
        let mut version = std::process::Command::new("curl");
        version.arg("--version");
        let v = run::output(&mut version, Duration::from_secs(10))?;
        let v = String::from_utf8_lossy(&v.stdout);
        let v: Vec<&str> = v.split_whitespace().take(2).collect();
        return Err(prereq::skip(format!(
            "this curl ({}) has no --haproxy-clientip (added in curl 8.2.0)",
            v.join(" ")
        )));
    }
    let topo = Topology::new()?;
    let mut recorder = RecordApp::start(&topo, &topo.pod, &[RECORDER])?;
    let _sidecar = reemitting_sidecar(&topo, &["203.0.113.0/24"])?;
    let fake: IpAddr = "198.18.7.7".parse()?;
    let response = curl::get_url(
        &topo.client,
        &["--haproxy-clientip", &fake.to_string()],
        &format!("http://{}/clientip", sidecar_addr(Family::V4)),
    )?;
    ensure!(response.is_ok(), "{response:?}");
    let recs = recorder.wait_recordings(1, TIMEOUT)?;
    let (header, _) = decode_recording(&recs[0])?;
    ensure!(
        header.client().map(|c| c.ip()) == Some(fake),
        "curl claimed {fake}, the sidecar passed on {header:?}"
    );
    Ok(())
}

/// The exact 28-byte header LoxiLB's eBPF datapath inserts (v2, PROXY, TCP over IPv4, no TLVs).
fn loxilb_header(src: SocketAddr, dst: SocketAddr) -> Result<Vec<u8>> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        bail!("LoxiLB only sends TCP4 headers");
    };
    let mut h = trueip_proxy_header::V2_SIGNATURE.to_vec();
    h.extend([0x21, 0x11, 0x00, 0x0c]);
    h.extend(s.octets());
    h.extend(d.octets());
    h.extend(src.port().to_be_bytes());
    h.extend(dst.port().to_be_bytes());
    ensure!(h.len() == 28, "a LoxiLB header is 28 bytes");
    Ok(h)
}

/// A LoxiLB-shaped sender over a real TCP connection from the client's namespace (its subnet
/// trusted): the 28-byte header and the first data in one segment, then header and data in
/// separate segments (TCP_NODELAY, a pause between). Both times the sidecar decodes the
/// client and destination LoxiLB named, and the data arrives intact after the header.
pub(crate) fn loxilb_shaped_header_glued_and_split_over_tcp() -> Result<()> {
    require(&[Need::Sidecar])?;
    let topo = Topology::new()?;
    let mut recorder = RecordApp::start(&topo, &topo.pod, &[RECORDER])?;
    let _sidecar = reemitting_sidecar(&topo, &["203.0.113.0/24"])?;
    let to = SocketAddr::new(Family::V4.pod(), SIDECAR_PORT);
    let vip: SocketAddr = "203.0.113.100:80".parse()?;
    for (i, split) in [false, true].into_iter().enumerate() {
        let mut stream = topo
            .client
            .run(|| TcpStream::connect_timeout(&to, TIMEOUT))??;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let client = stream.local_addr()?;
        let header = loxilb_header(client, vip)?;
        let data = format!("GET /loxilb-{split} HTTP/1.0\r\n\r\n");
        if split {
            stream.write_all(&header)?;
            std::thread::sleep(Duration::from_millis(300));
            stream.write_all(data.as_bytes())?;
        } else {
            stream.write_all(&[header.as_slice(), data.as_bytes()].concat())?;
        }
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        let recs = recorder.wait_recordings(i + 1, TIMEOUT)?;
        let (decoded, got) = recording_for(&recs, client)?;
        ensure!(
            decoded.original_destination() == Some(vip) && got == data.as_bytes(),
            "split={split}: {decoded:?}, data {:?}",
            String::from_utf8_lossy(&got)
        );
        ensure!(
            reply.starts_with(b"HTTP/1.0 200"),
            "split={split}: the app's answer did not come back: {reply:?}"
        );
    }
    Ok(())
}
