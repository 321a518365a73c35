//! `trueip-injector`: the mutating admission webhook that gives pods in opted-in namespaces
//! (`trueip.io/inject: enabled`) the trueip sidecar.
//!
//! Thin by design: options → configuration and certificate → logging → serve. What a pod gets is
//! decided in [`inject`] from its annotations ([`settings`]) and the chart's [`config`]; the
//! sidecar it gets is built in [`sidecar`], with the configuration file [`file`] writes from the
//! chart's sidecar section ([`template`]).

#![forbid(unsafe_code)]

mod config;
mod exposure;
mod file;
mod inject;
mod metrics;
mod review;
mod server;
mod settings;
mod sidecar;
mod template;
mod tls;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use trueip_telemetry::LogFormat;

use crate::{config::Config, metrics::Metrics, server::Webhook, tls::ReloadingCert};

/// trueip sidecar injector: a mutating admission webhook (admission.k8s.io/v1) that adds the
/// trueip sidecar to new pods of namespaces labelled `trueip.io/inject=enabled`.
#[derive(Debug, Parser)]
#[command(name = "trueip-injector", version)]
struct Opt {
    /// Address of the HTTPS server (`/mutate`, `/healthz`, `/metrics`).
    #[arg(long, env = "TRUEIP_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,

    /// The injector's configuration (sidecar image, resources, defaults), as the Helm chart's
    /// ConfigMap renders it.
    #[arg(
        long,
        env = "TRUEIP_INJECTOR_CONFIG",
        default_value = "/etc/trueip-injector/config/config.yaml"
    )]
    config: PathBuf,

    /// Check the configuration file, print what a pod gets by default and exit (non-zero when
    /// invalid); no certificate needed.
    #[arg(long)]
    check_config: bool,

    /// PEM certificate chain the server presents (reloaded when the file changes).
    #[arg(
        long,
        env = "TRUEIP_INJECTOR_TLS_CERT",
        default_value = "/etc/trueip-injector/tls/tls.crt"
    )]
    tls_cert: PathBuf,

    /// PEM private key of the certificate (reloaded with it).
    #[arg(
        long,
        env = "TRUEIP_INJECTOR_TLS_KEY",
        default_value = "/etc/trueip-injector/tls/tls.key"
    )]
    tls_key: PathBuf,

    /// How often the certificate files are checked for changes.
    #[arg(long, env = "TRUEIP_INJECTOR_CERT_RELOAD_INTERVAL", default_value = "10s",
          value_parser = humantime::parse_duration)]
    cert_reload_interval: std::time::Duration,

    /// On SIGTERM, how long open connections may take to finish.
    #[arg(long, env = "TRUEIP_INJECTOR_DRAIN_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    drain_timeout: std::time::Duration,

    /// Log format: `text` or `json` (the level comes from RUST_LOG, default `info`).
    #[arg(long, env = "TRUEIP_INJECTOR_LOG_FORMAT", value_name = "FORMAT", default_value = "text",
          value_parser = |s: &str| trueip_telemetry::LogFormat::parse(s).map(|_| s.to_owned()))]
    log_format: String,
}

fn main() -> ExitCode {
    let opt = Opt::parse();
    trueip_telemetry::init_logging(LogFormat::parse(&opt.log_format).unwrap_or_default());
    if let Some(line) = LogFormat::deprecation(&opt.log_format) {
        tracing::warn!("{line}");
    }
    trueip_telemetry::exit_code(run(&opt))
}

fn run(opt: &Opt) -> anyhow::Result<()> {
    let config = Config::from_file(&opt.config).context("invalid injector configuration")?;
    if opt.check_config {
        tracing::info!(
            config = %opt.config.display(),
            image = %config.sidecar.image,
            default_mode = %config.defaults.mode,
            allowed_modes = %settings::list_modes(&config.allowed_modes),
            default_ports = config.defaults.ports.len(),
            default_trusted_cidrs = config.defaults.trusted.len(),
            "configuration is valid"
        );
        return Ok(());
    }
    let cert = ReloadingCert::load(&opt.tls_cert, &opt.tls_key)
        .context("cannot load the serving certificate")?;
    let tls = cert.server_config().context("cannot configure TLS")?;
    tracing::info!(
        image = %config.sidecar.image,
        default_mode = %config.defaults.mode,
        allowed_modes = %settings::list_modes(&config.allowed_modes),
        default_ports = config.defaults.ports.len(),
        "configuration loaded"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(opt.listen)
            .await
            .with_context(|| format!("cannot listen on {}", opt.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let metrics = Arc::new(Metrics::default());
        let (reload_metrics, interval) = (Arc::clone(&metrics), opt.cert_reload_interval);
        tokio::spawn(async move { tls::watch(&cert, interval, reload_metrics).await });
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        tracing::info!(%addr, path = server::MUTATE_PATH, "listening");
        let webhook = Arc::new(Webhook { config, metrics });
        let shutdown = async {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        server::serve(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            webhook,
            shutdown,
            opt.drain_timeout,
        )
        .await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Opt::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_chart_mounts() {
        let opt = Opt::try_parse_from(["trueip-injector"]).unwrap();
        assert_eq!(opt.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(
            opt.tls_cert,
            PathBuf::from("/etc/trueip-injector/tls/tls.crt")
        );
        assert_eq!(opt.cert_reload_interval, std::time::Duration::from_secs(10));
    }
}
