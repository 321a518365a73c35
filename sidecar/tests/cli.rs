//! The binary's promises: every flag documented, `--check-config` names key and line, and a
//! real run serves and exits 0 on SIGTERM.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_trueip-sidecar");

#[test]
fn help_documents_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--check-config",
        "--listen",
        "--upstream",
        "--mode",
        "--trusted",
        "--header",
        "--untrusted",
        "--allow-loopback-clients",
        "--header-timeout",
        "--detect-timeout",
        "--max-header-len",
        "--max-connections",
        "--tlv-allow",
        "--crc32c",
        "--on-map-full",
        "--fallback",
        "--pipe-size",
        "--agent-socket",
        "--drain-timeout",
        "--log-format",
        "--metrics-listen",
    ] {
        let lines: Vec<&str> = help.lines().collect();
        let at = lines
            .iter()
            .position(|l| {
                l.trim_start()
                    .trim_start_matches("-c, ")
                    .split([' ', '='])
                    .next()
                    == Some(flag)
            })
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"));
        let doc = lines.get(at + 1).map_or("", |l| l.trim());
        assert!(
            !doc.is_empty() && !doc.starts_with('-'),
            "{flag} has no description:\n{help}"
        );
    }
}

fn check(yaml: &str) -> (bool, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    let out = Command::new(BIN)
        .args(["--check-config", "--config"])
        .arg(file.path())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn log_formats_are_text_and_json_and_the_old_human_says_it_is_deprecated() {
    let run = |format: &str| {
        Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:80"])
            .args([
                "--trusted",
                "10.0.0.0/8",
                "--check-config",
                "--log-format",
                format,
            ])
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    for format in ["text", "json"] {
        let out = run(format);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{format}: {log}");
        assert!(!log.contains("deprecated"), "{format}: {log}");
    }
    let out = run("json");
    let first = String::from_utf8_lossy(&out.stderr);
    let first = first.lines().next().unwrap_or_default();
    assert!(first.starts_with('{'), "json: {first}");
    let out = run("human");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("--log-format human is deprecated: it is now spelled `text`"),
        "{log}"
    );
    let out = run("yaml");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(log.contains("expected `text` or `json`"), "{log}");
}

#[test]
fn a_configuration_changed_after_admission_is_refused() {
    let yaml = "listeners:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:80\n    trusted_sources: [10.0.0.0/8]\n";
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    let run = |sha: &str| {
        Command::new(BIN)
            .args(["--check-config", "--config"])
            .arg(file.path())
            .args(["--config-sha256", sha])
            .output()
            .unwrap()
    };
    // A digest of another file: what the sidecar sees when the annotation was edited.
    let other = "1e0e8f8d51d8fda6f43e22bd3c6cd51bb6bd5e3e4c8c4b2c6e0d0fa0e8e6f3a1";
    let out = run(other);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a wrong digest must be refused: {log}"
    );
    assert!(
        log.contains("does not have the SHA-256 of --config-sha256")
            && log.contains("refusing to start"),
        "{log}"
    );
    // The message names the file's own digest; with it the file is accepted.
    let actual = log
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_owned();
    let out = run(&actual);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_start_up_failure_names_each_cause_once() {
    // No agent at that path: the error goes through the listener, the restore map, the agent
    // client and the OS; each says its part once.
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:80"])
        .args(["--trusted", "10.0.0.0/8", "--mode", "ebpf"])
        .args(["--agent-socket", "/nonexistent/trueip/agent.sock"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    for part in [
        "cannot connect to the trueip agent at /nonexistent/trueip/agent.sock",
        "No such file or directory",
    ] {
        assert_eq!(log.matches(part).count(), 1, "{part:?} in {log}");
    }
}

#[test]
fn check_config_accepts_a_good_file() {
    let (ok, log) = check(
        "listeners:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:80\n    trusted_sources: [10.0.0.0/8]\n",
    );
    assert!(ok, "{log}");
    assert!(log.contains("configuration is valid"), "{log}");
}

#[test]
fn check_config_shows_the_http_limits_and_names_a_bad_one() {
    let base = "listeners:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:80\n    \
                trusted_sources: [10.0.0.0/8]\n    mode: http\n";
    let (ok, log) = check(&format!(
        "{base}    http:\n      allow_connect: true\n      strip_headers: [X-User]\n      \
         limits: {{max_request_head: 16384, keep_alive_timeout: 5s}}\n\
         metrics_listen: 127.0.0.1:0\nadmin: {{header_timeout: 2s, max_connections: 4}}\n"
    ));
    assert!(ok, "{log}");
    for shown in [
        "max_request_head=16384",
        "keep_alive_timeout=5s",
        "header_read_timeout=10s",
        "h2_max_concurrent_streams=100",
        "max_requests_in_flight=1024",
        "allow_connect=true",
        "x-user",
        "admin endpoint ok",
    ] {
        assert!(log.contains(shown), "{shown} not in {log}");
    }
    let (ok, log) = check(&format!(
        "{base}    http:\n      limits: {{max_request_head: 100}}\n"
    ));
    assert!(!ok);
    assert!(
        log.contains("http.limits.max_request_head") && log.contains("outside 8192"),
        "{log}"
    );
    let (ok, log) = check(&format!(
        "{base}    http:\n      limits: {{max_head: 100}}\n"
    ));
    assert!(!ok);
    assert!(log.contains("unknown field `max_head`"), "{log}");
}

#[test]
fn check_config_names_key_and_line_of_a_bad_file() {
    let (ok, log) = check(
        "listeners:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:80\n    trusted_sources: [10.0.0.0/8]\n    mode: proxy-v3\n",
    );
    assert!(!ok, "a bad file exits non-zero");
    assert!(
        log.contains("listeners[0].mode") && log.contains("line 5"),
        "{log}"
    );
    let (ok, log) = check(
        "listeners:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:80\n    trusted_source: []\n",
    );
    assert!(!ok);
    assert!(
        log.contains("unknown field `trusted_source`") && log.contains("line 4"),
        "{log}"
    );
}

#[test]
fn serves_from_flags_and_exits_zero_on_sigterm() {
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream"])
        .arg(app.local_addr().unwrap().to_string())
        .args([
            "--mode",
            "proxy-v1",
            "--trusted",
            "127.0.0.0/8",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("the sidecar listens");
    client
        .write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\nhi")
        .unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut upstream, _) = app.accept().unwrap();
    let mut got = String::new();
    upstream.read_to_string(&mut got).unwrap();
    assert_eq!(got, "PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\nhi");
    drop(upstream);
    drop(client);

    terminate(child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("\"SIGTERM received\""), "json logs: {log}");
}

fn terminate(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
