//! What trueip's binaries (the sidecar, the node agent, the webhook) share about telemetry, so
//! that they log and trace the same way: logs to stderr, human-readable or one JSON object per
//! line, filtered by `RUST_LOG` (default `info`); with the `otlp` feature, spans exported to an
//! OpenTelemetry collector too ([`otlp`]). The webhook leaves the feature off: it needs no
//! OpenTelemetry SDK.

#[cfg(feature = "otlp")]
pub mod otlp;

use tracing_subscriber::{
    EnvFilter, Layer, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// Installs the global subscriber: logs to stderr (`json`: one object per line; otherwise
/// human-readable, coloured on a terminal).
pub fn init_logging(json: bool) {
    tracing_subscriber::registry()
        .with(filter())
        .with(stderr(json))
        .init();
}

/// `RUST_LOG`, or `info`.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The stderr layer of [`init_logging`].
fn stderr<S>(json: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    }
}
