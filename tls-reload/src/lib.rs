//! A rustls server certificate read from a PEM certificate and key file, and reloaded when the
//! files change, for the two TLS servers of trueip: the sidecar's `http` mode and the injector's
//! admission webhook.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, and cert-manager renews
//! certificates in place; either way the files' contents change while the server runs. The
//! files are polled (cheap: two small reads) and compared with what is loaded, which also
//! catches swaps that keep the modification time. A pair that does not load — a key that does
//! not match the certificate, half-written files — is reported and the previous certificate
//! kept.

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

/// A certificate and key pair that cannot be used. The messages name the file; the cause is
/// the error's `source()`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
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

/// The certificate a server presents; [`ReloadingCert::reload_if_changed`] swaps it.
#[derive(Debug)]
pub struct ReloadingCert {
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

/// What a poll of [`watch`] found, when it found something.
#[derive(Debug)]
pub enum Reload {
    /// The files changed and load: the new certificate is served from now on.
    Reloaded,
    /// The files changed (or vanished) but do not load; the previous certificate is still
    /// served.
    Rejected(TlsError),
    /// The blocking task that reads the files did not finish (it panicked).
    TaskFailed(tokio::task::JoinError),
}

// === impl ReloadingCert ===

impl ReloadingCert {
    /// Loads the pair (ring's crypto); fails if it is not usable, since a server should not
    /// start without a certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pem = read_pair(cert_path, key_path)?;
        let key = certified_key(&pem, cert_path, key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Loaded { pem, key }),
        }))
    }

    /// The certificate file, for logs.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A rustls server configuration presenting the current certificate, with the safe default
    /// protocol versions, no client authentication, and ALPN offering HTTP/2 then HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Re-reads the files and swaps the certificate if they changed and load: `Ok(true)` when
    /// a new certificate is now served, `Ok(false)` when the files are unchanged. Blocking (two
    /// file reads).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
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

/// Polls the files every `interval` (the first time one interval from now) for as long as the
/// certificate is in use elsewhere, and passes what each poll found to `report` (nothing when
/// the files did not change). The caller logs and counts in its own terms.
pub async fn watch(cert: Weak<ReloadingCert>, interval: Duration, mut report: impl FnMut(Reload)) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(current) = cert.upgrade() else {
            return;
        };
        match tokio::task::spawn_blocking(move || current.reload_if_changed()).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => report(Reload::Reloaded),
            Ok(Err(e)) => report(Reload::Rejected(e)),
            Err(e) => report(Reload::TaskFailed(e)),
        }
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// Writes a self-signed pair for `cn` to `dir/tls.{crt,key}` (renamed into place, as a
    /// Secret update swaps files) and returns the certificate's DER.
    fn write_pair(dir: &Path, cn: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["app.test".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("tls.key.tmp"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("tls.crt.tmp"), cert.pem()).unwrap();
        std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).unwrap();
        std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).unwrap();
        cert.der().to_vec()
    }

    fn paths(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("tls.crt"), dir.join("tls.key"))
    }

    /// The leaf certificate the server would present now.
    fn served(cert: &ReloadingCert) -> Vec<u8> {
        let key = cert.current.read().unwrap().key.clone();
        key.cert[0].to_vec()
    }

    #[test]
    fn serves_the_pair_and_offers_h2_then_http11() {
        let dir = tempfile::tempdir().unwrap();
        let der = write_pair(dir.path(), "first");
        let (crt, key) = paths(dir.path());
        let cert = ReloadingCert::load(&crt, &key).unwrap();
        assert_eq!(served(&cert), der);
        let config = cert.server_config().unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(cert.cert_path(), crt);
    }

    #[test]
    fn unusable_pairs_name_the_file_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = paths(dir.path());
        let e = ReloadingCert::load(&crt, &key).unwrap_err();
        assert_eq!(e.to_string(), format!("cannot read {}", crt.display()));
        assert!(e.source().is_some(), "the io error is the source");

        write_pair(dir.path(), "first");
        std::fs::write(&key, "not a key").unwrap();
        let e = ReloadingCert::load(&crt, &key).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: no private key in PEM form", key.display())
        );

        // A key that belongs to another certificate.
        let other = tempfile::tempdir().unwrap();
        write_pair(other.path(), "other");
        let e = ReloadingCert::load(&crt, &other.path().join("tls.key")).unwrap_err();
        assert!(matches!(e, TlsError::Rustls { .. }), "{e:?}");
    }

    #[test]
    fn reloads_changed_files_and_keeps_the_previous_pair_when_they_break() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "first");
        let (crt, key) = paths(dir.path());
        let cert = ReloadingCert::load(&crt, &key).unwrap();
        assert!(!cert.reload_if_changed().unwrap(), "nothing changed");

        let second = write_pair(dir.path(), "second");
        assert_ne!(first, second);
        assert!(cert.reload_if_changed().unwrap());
        assert_eq!(served(&cert), second);

        std::fs::write(&crt, "-----BEGIN CERTIFICATE-----\nhalf-writ").unwrap();
        let e = cert.reload_if_changed().unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
        assert_eq!(served(&cert), second, "the previous pair is still served");
    }

    #[tokio::test]
    async fn watch_reports_reloads_and_rejections_and_stops_with_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "first");
        let (crt, key) = paths(dir.path());
        let cert = ReloadingCert::load(&crt, &key).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = tokio::spawn(watch(
            Arc::downgrade(&cert),
            Duration::from_millis(20),
            move |r| tx.send(r).unwrap(),
        ));

        write_pair(dir.path(), "second");
        assert!(matches!(rx.recv().await, Some(Reload::Reloaded)));
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(Reload::Rejected(TlsError::Read { .. }))
        ));
        drop(cert);
        watcher.await.unwrap();
    }
}
