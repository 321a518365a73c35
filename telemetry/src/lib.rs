//! What trueip's binaries (the sidecar, the node agent, the webhook) share about telemetry, so
//! that they log, trace and report errors the same way: logs to stderr, human-readable (`text`)
//! or one JSON object per line (`json`), filtered by `RUST_LOG` (default `info`); errors with their
//! causes on one line ([`error_chain`]); with the `otlp` feature, spans exported to an
//! OpenTelemetry collector too ([`otlp`]). The webhook leaves the feature off: it needs no
//! OpenTelemetry SDK.

mod chain;
mod logs;
#[cfg(feature = "otlp")]
pub mod otlp;

pub use chain::{Chain, error_chain};
pub use logs::{LogFormat, exit_code, init_logging};

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
