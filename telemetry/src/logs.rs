//! Logs to stderr: the one spelling of the format, and the subscriber every binary installs.

use tracing_log::NormalizeEvent as _;
use tracing_subscriber::{
    EnvFilter, Layer, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// How the binaries write their logs: the one spelling of `--log-format` (and the chart's
/// `logFormat` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`; `human`, the sidecar's old spelling of `text`, is taken too and
    /// reported by [`LogFormat::deprecation`].
    ///
    /// # Errors
    /// Any other word, with the accepted ones.
    pub fn parse(word: &str) -> Result<Self, String> {
        match word {
            "text" | "human" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?}: expected `text` or `json`")),
        }
    }

    /// The line to log once logging is set up when `word` is a deprecated spelling.
    pub fn deprecation(word: &str) -> Option<&'static str> {
        (word == "human").then_some("--log-format human is deprecated: it is now spelled `text`")
    }

    /// The word [`LogFormat::parse`] reads back.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Installs the global subscriber: logs to stderr in `format`.
pub fn init_logging(format: LogFormat) {
    tracing_subscriber::registry()
        .with(filter())
        .with(stderr(format))
        .init();
}

/// `RUST_LOG`, or `info`.
pub(crate) fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The stderr layer of [`init_logging`].
pub(crate) fn stderr<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let ansi = format == LogFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    layer(format, std::io::stderr, ansi)
}

/// The log layer in `format`, writing to `writer`.
fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        // json-subscriber, not tracing-subscriber's `json()`: that one re-parses and
        // re-serialises a span's JSON fields at every `Span::record`, which made JSON logging
        // (the chart's default) cost more per connection than the relay itself, even though
        // the sidecar logs no event for a connection that goes well. The lines are the same
        // objects (`timestamp`, `level`, `fields`, `target`, `span`, `spans`).
        LogFormat::Json => {
            let mut layer = json_subscriber::fmt::layer().with_writer(writer);
            // Records of the `log` crate (rustls writes its TLS alerts there) arrive through
            // tracing-log as events of target `log`; name the crate's own target instead, as
            // the text format does. (Their `log.*` fields stay: json-subscriber offers no way
            // to drop fields of an event.)
            layer
                .inner_layer_mut()
                .add_dynamic_field("target", |event, _| {
                    Some(event.normalized_metadata().map_or_else(
                        || event.metadata().target().to_owned(),
                        |normalized| normalized.target().to_owned(),
                    ))
                });
            layer.boxed()
        }
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    }
}

/// The process's exit code for how `run` ended: success, or failure with the error (and its
/// causes, `{:#}`) logged as the last line, so every binary ends alike.
pub fn exit_code(result: Result<(), impl std::fmt::Display>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex, PoisonError},
    };

    use tracing::field::Empty;
    use tracing_subscriber::{fmt::MakeWriter, layer::SubscriberExt as _};

    use super::*;

    /// A writer that keeps what the layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Self;
        fn make_writer(&'w self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn a_json_line_carries_the_event_and_the_fields_recorded_on_its_span() {
        let out = Captured::default();
        let subscriber =
            tracing_subscriber::registry().with(layer(LogFormat::Json, out.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("connection", listener = "web", client.address = Empty);
            span.record("client.address", "203.0.113.7");
            span.record("client.address", "203.0.113.8");
            let _in = span.enter();
            tracing::warn!(reason = "invalid_header", "connection rejected");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["message"], "connection rejected");
        assert_eq!(line["fields"]["reason"], "invalid_header");
        assert_eq!(line["span"]["name"], "connection");
        assert_eq!(line["span"]["listener"], "web");
        // The last record wins, as with `tracing-subscriber`.
        assert_eq!(line["span"]["client.address"], "203.0.113.8");
        assert!(line["timestamp"].is_string(), "{line}");
    }

    #[test]
    fn a_log_crate_record_is_named_by_its_own_target() {
        // What `init_logging` installs (tracing-subscriber's `init`); once per process.
        let _ = tracing_log::LogTracer::init();
        let out = Captured::default();
        let subscriber =
            tracing_subscriber::registry().with(layer(LogFormat::Json, out.clone(), false));
        tracing::subscriber::with_default(subscriber, || {
            log::warn!(target: "rustls::server::hs", "no ciphersuites in common");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["target"], "rustls::server::hs", "{line}");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["message"], "no ciphersuites in common");
    }
}
