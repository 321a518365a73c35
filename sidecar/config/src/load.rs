//! Reading a configuration: from a file or YAML text, parsed and then validated, and the digest
//! the injector pins.

use std::path::Path;

use crate::{
    config::Config,
    error::{ConfigError, FileError},
};

impl Config {
    /// Reads, parses and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = FileError::read(path)?;
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
        let config: Self = FileError::parse(path, text)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_file_text(Path::new("<config>"), text)
    }
}
