//! The serving certificate, reloaded when its files change.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, and cert-manager renews
//! certificates in place; either way the files' contents change while the webhook runs. The
//! files are polled (cheap: two small reads) and compared with what is loaded, which also catches
//! swaps that keep the modification time. A pair that does not load — a key that does not match
//! the certificate, half-written files — is logged and the previous certificate kept.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{error_chain, metrics::Metrics};

/// A certificate and key pair that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// A file could not be read.
    #[error("reading {path}")]
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
    #[error("{cert} and {key} do not make a usable certificate")]
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
    #[error("configuring TLS")]
    Config(#[source] rustls::Error),
}

/// The certificate the server presents; swapped by [`ReloadingCert::reload_if_changed`].
#[derive(Debug)]
pub(crate) struct ReloadingCert {
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

// === impl ReloadingCert ===

impl ReloadingCert {
    /// Loads the pair; fails if it is not usable (the webhook does not start without one).
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pem = read_pair(cert_path, key_path)?;
        let key = certified_key(&pem, cert_path, key_path, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Loaded { pem, key }),
        })
    }

    /// A rustls server configuration presenting the current certificate, offering HTTP/2 and
    /// HTTP/1.1 (the apiserver speaks either).
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Re-reads the files; swaps the certificate if they changed and load. `Ok(true)` when a
    /// new certificate is now served.
    pub(crate) fn reload_if_changed(&self) -> Result<bool, TlsError> {
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

    /// Polls the files every `interval`, forever.
    pub(crate) async fn watch(self: Arc<Self>, interval: Duration, metrics: Arc<Metrics>) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.reload_if_changed()).await {
                Ok(Ok(false)) => {}
                Ok(Ok(true)) => {
                    metrics.cert_reloaded();
                    tracing::info!(cert = %self.cert_path.display(), "serving the new certificate");
                }
                Ok(Err(e)) => {
                    metrics.cert_reload_failed();
                    tracing::warn!(
                        error = %error_chain(&e),
                        "the certificate files changed but do not load; still serving the previous one"
                    );
                }
                Err(e) => tracing::error!(error = %e, "the certificate reload task failed"),
            }
        }
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
