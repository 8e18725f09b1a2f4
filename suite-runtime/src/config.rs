//! YAML configuration files. Errors carry the file and the serde path of the
//! offending field (`listeners[0].port`), so a bad config is fixed at once.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for the expected structure.
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or `<string>`).
        origin: String,
        /// What is wrong, naming the field and the line.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// The field, as written in the file.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// An invalid value of `field`.
    pub fn invalid(
        origin: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            origin: origin.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses YAML text into `T`; `origin` names the source in errors.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })
}

/// Reads and parses a YAML file into `T`.
pub fn load_yaml<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        port: u16,
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse_yaml::<Sample>("port: nope", "a.yaml").unwrap_err();
        assert!(e.to_string().starts_with("a.yaml: port"), "{e}");
        let e = parse_yaml::<Sample>("prot: 1", "a.yaml").unwrap_err();
        assert!(e.to_string().contains("prot"), "{e}");
        let e = load_yaml::<Sample>("/nonexistent/x.yaml").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.yaml"), "{e}");
    }
}
