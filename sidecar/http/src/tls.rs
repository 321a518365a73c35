//! TLS termination for `mode: http`: the certificate and key come from files and are reloaded
//! when the files change ([`trueip_tls_reload`]); ALPN offers HTTP/2 and HTTP/1.1. A pair that
//! does not load on reload is logged and the previous certificate kept.

use std::{error::Error, sync::Arc};

use tokio_rustls::TlsAcceptor;
pub use trueip_tls_reload::TlsError;
use trueip_tls_reload::{Reload, ReloadingCert, watch};

use trueip_telemetry::Chain;

use trueip_sidecar_config::TlsConfig;

/// Loads the pair in `config` and returns an acceptor that presents it; a task polls the files
/// every `reload_interval` for as long as the acceptor lives. Must run inside the runtime.
pub(crate) fn acceptor(config: &TlsConfig, listener: &str) -> Result<TlsAcceptor, TlsError> {
    let cert = ReloadingCert::load(&config.cert, &config.key)?;
    let server = cert.server_config()?;
    let listener = listener.to_owned();
    let path = cert.cert_path().display().to_string();
    tokio::spawn(watch(
        Arc::downgrade(&cert),
        config.reload_interval,
        move |reload| match reload {
            Reload::Reloaded => {
                tracing::info!(%listener, cert = %path, "serving the new certificate");
            }
            Reload::Rejected(e) => tracing::warn!(
                %listener, error = &e as &(dyn Error + 'static),
                "the certificate files changed but do not load; still serving the previous one"
            ),
            Reload::TaskFailed(e) => {
                tracing::error!(%listener, error = %Chain(&e), "the certificate reload task failed");
            }
        },
    ));
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The negotiated protocol version as OpenTelemetry's `tls.protocol.version` spells it.
pub(crate) fn version_label(v: rustls::ProtocolVersion) -> &'static str {
    match v {
        rustls::ProtocolVersion::TLSv1_3 => "1.3",
        rustls::ProtocolVersion::TLSv1_2 => "1.2",
        _ => "other",
    }
}
