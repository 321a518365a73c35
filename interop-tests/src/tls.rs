//! A throw-away PKI made at test time with the `openssl` CLI: a CA, a server certificate for
//! the load balancer (HAProxy `bind ... ssl crt`) and a client certificate (for
//! `send-proxy-v2-ssl-cn`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use trueip_test_kit::run;

/// The server name clients send (SNI) and the server certificate is for.
pub const SERVER_NAME: &str = "lb.trueip.test";

/// The client certificate's common name.
pub const CLIENT_CN: &str = "client.trueip.test";

/// Any single `openssl` invocation finishes well within this.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// The files, all PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (HAProxy `ca-file`).
    pub ca_cert: PathBuf,
    /// Server certificate followed by its key (HAProxy `crt`).
    pub server_pem: PathBuf,
    /// The server certificate alone (a `kubernetes.io/tls` Secret's `tls.crt`).
    pub server_cert: PathBuf,
    /// The server key alone (`tls.key`).
    pub server_key: PathBuf,
    /// The client certificate (curl `--cert`).
    pub client_cert: PathBuf,
    /// The client key (curl `--key`).
    pub client_key: PathBuf,
}

impl Pki {
    /// Generates everything into `dir` (EC P-256 keys: fast), the server certificate for
    /// [`SERVER_NAME`].
    pub fn generate(dir: &Path) -> Result<Self> {
        Self::generate_for(dir, SERVER_NAME)
    }

    /// [`generate`](Self::generate) with the server certificate for `server_name` (a DNS name).
    pub fn generate_for(dir: &Path, server_name: &str) -> Result<Self> {
        let p = |name: &str| dir.join(name);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-days", "2", "-subj", "/CN=trueip test CA"])
                .args(ec)
                .arg("-keyout")
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.crt")),
        )?;
        for (name, cn, ext) in [
            (
                "server",
                server_name,
                format!("subjectAltName=DNS:{server_name}"),
            ),
            (
                "client",
                CLIENT_CN,
                "extendedKeyUsage=clientAuth".to_owned(),
            ),
        ] {
            openssl(
                Command::new("openssl")
                    .args(["req", "-subj", &format!("/CN={cn}")])
                    .args(ec)
                    .arg("-keyout")
                    .arg(p(&format!("{name}.key")))
                    .arg("-out")
                    .arg(p(&format!("{name}.csr"))),
            )?;
            let ext_file = p(&format!("{name}.ext"));
            std::fs::write(&ext_file, format!("{ext}\n"))
                .with_context(|| format!("writing {}", ext_file.display()))?;
            openssl(
                Command::new("openssl")
                    .args(["x509", "-req", "-days", "2", "-set_serial", "1"])
                    .arg("-in")
                    .arg(p(&format!("{name}.csr")))
                    .arg("-CA")
                    .arg(p("ca.crt"))
                    .arg("-CAkey")
                    .arg(p("ca.key"))
                    .arg("-extfile")
                    .arg(&ext_file)
                    .arg("-out")
                    .arg(p(&format!("{name}.crt"))),
            )?;
        }
        let server_pem = p("server.pem");
        let pem = [
            std::fs::read(p("server.crt"))?,
            std::fs::read(p("server.key"))?,
        ]
        .concat();
        std::fs::write(&server_pem, pem)
            .with_context(|| format!("writing {}", server_pem.display()))?;
        Ok(Self {
            ca_cert: p("ca.crt"),
            server_pem,
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
        })
    }
}

fn openssl(cmd: &mut Command) -> Result<()> {
    let out = run::output(cmd, OPENSSL_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
