//! What trueip's binaries (the sidecar, the node agent, the webhook) share about telemetry, so
//! that they log, trace and report errors the same way: logs to stderr, human-readable (`text`)
//! or one JSON object per line (`json`), filtered by `RUST_LOG` (default `info`); errors with their
//! causes on one line ([`error_chain`]); with the `otlp` feature, spans exported to an
//! OpenTelemetry collector too ([`otlp`]). The webhook leaves the feature off: it needs no
//! OpenTelemetry SDK.

#[cfg(feature = "otlp")]
pub mod otlp;

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

/// An error and its causes on one line (`outer: inner: innermost`), for log fields and error
/// answers: a message says only its own part (trueip's errors never repeat their source), the
/// chain adds the causes once each.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    Chain(e).to_string()
}

/// [`error_chain`] as a `Display`, for a log field: `error = %Chain(&e)`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `RUST_LOG`, or `info`.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The stderr layer of [`init_logging`].
fn stderr<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_and_the_old_one_with_a_deprecation() {
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("human"), Ok(LogFormat::Text));
        assert!(LogFormat::deprecation("human").is_some());
        assert_eq!(LogFormat::deprecation("text"), None);
        let e = LogFormat::parse("yaml").unwrap_err();
        assert!(e.contains("`text` or `json`"), "{e}");
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::parse(f.as_str()), Ok(f));
        }
    }

    #[test]
    fn a_chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect to the agent")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(
            error_chain(&e),
            "cannot connect to the agent: entity not found"
        );
    }
}
