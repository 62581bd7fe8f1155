//! The single error type of this crate. It describes what went wrong and where; it never
//! decides validity itself (that is the config types' `validate`).

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
    /// [`ConfigError::Invalid`] located in its text: `path` is the file (or origin) and `line`
    /// the 1-based line where `field` — or its closest written parent — is.
    #[error("{path}:{line}: invalid `{field}`: {reason}")]
    InvalidAt {
        path: String,
        line: usize,
        field: String,
        reason: String,
    },
}

impl ConfigError {
    /// Shorthand for [`ConfigError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The dotted field path of an [`ConfigError::Invalid`] or [`ConfigError::InvalidAt`]
    /// error.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::InvalidAt { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The 1-based line of an [`ConfigError::InvalidAt`] error.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::InvalidAt { line, .. } => Some(*line),
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
        assert_eq!(e.line(), None);
    }

    #[test]
    fn invalid_at_display_names_file_line_and_field() {
        let e = ConfigError::InvalidAt {
            path: "relay.toml".into(),
            line: 7,
            field: "limits.max_sessions".into(),
            reason: "must be greater than 0".into(),
        };
        assert_eq!(
            e.to_string(),
            "relay.toml:7: invalid `limits.max_sessions`: must be greater than 0"
        );
        assert_eq!(e.field(), Some("limits.max_sessions"));
        assert_eq!(e.line(), Some(7));
    }
}
