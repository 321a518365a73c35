//! Logs to stderr: the one spelling of the format, and the subscriber every binary installs.

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
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == LogFormat::Json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
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
