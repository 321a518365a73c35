//! TLS termination for `mode: http`: the certificate and key come from files and are reloaded
//! when the files change (a Kubernetes Secret update swaps a symlink, cert-manager renews in
//! place); ALPN offers HTTP/2 and HTTP/1.1. A pair that does not load on reload is logged and
//! the previous certificate kept.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock, Weak},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// A certificate and key pair that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM section.
    #[error("{path}: no {what} in PEM form")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the pair (unsupported key, key not matching the certificate).
    #[error("{cert} and {key} do not make a usable certificate: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The protocol versions could not be configured.
    #[error("configuring TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// The certificate presented to clients, swapped when the files change.
#[derive(Debug)]
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

/// What is being served, with the bytes it was loaded from.
#[derive(Debug)]
struct Loaded {
    pem: (Vec<u8>, Vec<u8>),
    key: Arc<CertifiedKey>,
}

/// Loads the pair in `config` and returns an acceptor that presents it; a task polls the files
/// every `reload_interval` for as long as the acceptor lives. Must run inside the runtime.
pub(crate) fn acceptor(config: &TlsConfig, listener: &str) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem = read_pair(&config.cert, &config.key)?;
    let key = certified_key(&pem, &config.cert, &config.key, &provider)?;
    let cert = Arc::new(ReloadingCert {
        cert_path: config.cert.clone(),
        key_path: config.key.clone(),
        provider: Arc::clone(&provider),
        current: RwLock::new(Loaded { pem, key }),
    });
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(watch(
        Arc::downgrade(&cert),
        config.reload_interval,
        listener.to_owned(),
    ));
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Polls the files until the certificate is no longer used.
async fn watch(cert: Weak<ReloadingCert>, interval: Duration, listener: String) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(current) = cert.upgrade() else {
            return;
        };
        let path = current.cert_path.clone();
        match tokio::task::spawn_blocking(move || current.reload_if_changed()).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                tracing::info!(%listener, cert = %path.display(), "serving the new certificate");
            }
            Ok(Err(e)) => tracing::warn!(
                %listener, error = %e,
                "the certificate files changed but do not load; still serving the previous one"
            ),
            Err(e) => tracing::error!(%listener, error = %e, "the certificate reload task failed"),
        }
    }
}

// === impl ReloadingCert ===

impl ReloadingCert {
    /// Re-reads the files; swaps the certificate if they changed and load.
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let pem = read_pair(&self.cert_path, &self.key_path)?;
        if self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .pem
            == pem
        {
            return Ok(false);
        }
        let key = certified_key(&pem, &self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Loaded { pem, key };
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .key,
        ))
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

fn certified_key(
    (cert_pem, key_pem): &(Vec<u8>, Vec<u8>),
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path.to_owned(),
            what: "CERTIFICATE",
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Pem {
        path: key_path.to_owned(),
        what: "private key",
    })?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|source| TlsError::Rustls {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })
}

/// The negotiated protocol version as OpenTelemetry's `tls.protocol.version` spells it.
pub(crate) fn version_label(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "1.3",
        rustls::ProtocolVersion::TLSv1_2 => "1.2",
        _ => "other",
    }
}
