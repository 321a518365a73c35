//! Reading a configuration: from a file or YAML text, parsed and then validated, and the digest
//! the injector pins.

use std::path::{Path, PathBuf};

use crate::{config::Config, error::ConfigError};

impl Config {
    /// Reads, parses and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_file_text(path, &text)
    }

    /// The SHA-256 of a configuration file's text, in hex: what the injector pins in the
    /// sidecar's `--config-sha256` and what the sidecar checks, computed by one function.
    pub fn digest(text: &str) -> String {
        ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Parses and validates `text`, read from `path` (which parse errors name): for a caller
    /// that checks the bytes it read before parsing them.
    pub fn from_file_text(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml(text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }
}
