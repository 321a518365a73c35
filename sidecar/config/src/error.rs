//! Why a configuration cannot be used.

use std::path::PathBuf;

/// A configuration that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a bad value; the message names key and line.
    #[error("{path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, with the key path and the line.
        #[source]
        source: serde_norway::Error,
    },
    /// Values that are fine alone but not together.
    #[error("{listener}: {key}: {problem}")]
    Invalid {
        /// The listener's name.
        listener: String,
        /// The key at fault.
        key: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The file declares no listener.
    #[error("no listeners configured")]
    NoListeners,
}
