//! The serving certificate, reloaded when its files change ([`trueip_tls_reload`]), with each
//! reload counted in the webhook's metrics: a certificate that stopped reloading is one of the
//! two things to alert on.

use std::{sync::Arc, time::Duration};

use trueip_tls_reload::Reload;
pub(crate) use trueip_tls_reload::ReloadingCert;

use trueip_telemetry::error_chain;

use crate::metrics::Metrics;

/// Polls the certificate's files every `interval` for as long as the server presents it.
pub(crate) async fn watch(cert: &Arc<ReloadingCert>, interval: Duration, metrics: Arc<Metrics>) {
    let path = cert.cert_path().display().to_string();
    trueip_tls_reload::watch(Arc::downgrade(cert), interval, move |reload| match reload {
        Reload::Reloaded => {
            metrics.cert_reloaded();
            tracing::info!(cert = %path, "serving the new certificate");
        }
        Reload::Rejected(e) => {
            metrics.cert_reload_failed();
            tracing::warn!(
                error = %error_chain(&e),
                "the certificate files changed but do not load; still serving the previous one"
            );
        }
        Reload::TaskFailed(e) => tracing::error!(error = %e, "the certificate reload task failed"),
    })
    .await;
}
