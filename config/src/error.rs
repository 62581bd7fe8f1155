//! The single error type of this crate.

use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not valid TOML, a value of the wrong type, or an unknown field. `message` comes from
    /// `toml` and names the line, column and key.
    #[error("cannot parse {path}: {message}")]
    Parse { path: String, message: String },
    /// Well-formed but semantically wrong. `field` is the dotted TOML path, e.g.
    /// `limits.max_sessions` or `lease[1].name`.
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The dotted field path of an [`ConfigError::Invalid`] error.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_display_names_field() {
        let e = ConfigError::invalid("limits.max_sessions", "must be greater than 0");
        assert_eq!(
            e.to_string(),
            "invalid `limits.max_sessions`: must be greater than 0"
        );
        assert_eq!(e.field(), Some("limits.max_sessions"));
    }
}
