//! Why a configuration cannot be used.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A YAML file that could not be read or parsed. The sidecar's file and the injector's share
/// it, so both name the file, the key and the line alike.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
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
}

impl FileError {
    /// The text of the file at `path`.
    pub fn read(path: &Path) -> Result<String, Self> {
        std::fs::read_to_string(path).map_err(|source| Self::Read {
            path: path.to_owned(),
            source,
        })
    }

    /// `text` parsed as YAML; `path` names it in the error.
    pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, Self> {
        serde_norway::from_str(text).map_err(|source| Self::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// A configuration that cannot be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    File(#[from] FileError),
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
