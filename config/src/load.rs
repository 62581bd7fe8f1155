//! Reading, parsing and validating configuration files.
//!
//! Owns the path from text to a validated value: read, parse (`toml`), validate (the type's own
//! rules), and locate a validation error in the text ([`crate::locate`]). It never watches files
//! (that is [`crate::watch`]) and never applies a configuration to a running program.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{AgentConfig, ConfigError, RelayConfig};

/// Reads, parses and validates a relay configuration file.
pub fn load_relay(path: &Path) -> Result<RelayConfig, ConfigError> {
    parse_relay(&read(path)?, &path.display().to_string())
}

/// Reads, parses and validates an agent configuration file. A validation error is
/// [`ConfigError::InvalidAt`] (file and line) when its field can be located.
pub fn load_agent(path: &Path) -> Result<AgentConfig, ConfigError> {
    parse_validated(
        &read(path)?,
        &path.display().to_string(),
        AgentConfig::validate,
    )
}

/// Parses and validates relay configuration text; `origin` names it in errors, and a
/// validation error is [`ConfigError::InvalidAt`] when its field can be located.
pub fn parse_relay(text: &str, origin: &str) -> Result<RelayConfig, ConfigError> {
    parse_validated(text, origin, RelayConfig::validate)
}

/// Parses and validates agent configuration text; `origin` names it in errors.
///
/// Validation errors stay [`ConfigError::Invalid`] (no line) here for now: the agent's unit
/// tests match on that variant. [`load_agent`], which the `postern` command uses, locates them.
pub fn parse_agent(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
    parse_validated(text, origin, AgentConfig::validate)
}

/// Parses `text` into `T` and runs `validate` on it. A [`ConfigError::Invalid`] from
/// `validate` becomes [`ConfigError::InvalidAt`] naming `origin` and the line of the field (or
/// of its closest written parent); if nothing of the path is written, it stays `Invalid`.
pub(crate) fn parse_validated<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    validate: impl FnOnce(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let config: T = parse(text, origin)?;
    match validate(&config) {
        Ok(()) => Ok(config),
        Err(ConfigError::Invalid { field, reason }) => match crate::locate::locate(text, &field) {
            Some(line) => Err(ConfigError::InvalidAt {
                path: origin.to_owned(),
                line,
                field,
                reason,
            }),
            None => Err(ConfigError::Invalid { field, reason }),
        },
        Err(other) => Err(other),
    }
}

pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn loads_from_disk() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(include_bytes!("../examples/agent.toml"))
            .unwrap();
        let cfg = load_agent(file.path()).unwrap();
        assert_eq!(cfg.leases[0].name, "my-mcp");
    }

    #[test]
    fn missing_file_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        match load_relay(&path) {
            Err(ConfigError::Io { path: p, .. }) => assert_eq!(p, path),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn validation_errors_carry_origin_and_line() {
        let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let text =
            format!("[control_plane]\npublic_keys = [\"{key}\"]\n\n[limits]\nmax_sessions = 0\n");
        let err = parse_relay(&text, "relay.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "relay.toml:5: invalid `limits.max_sessions`: must be greater than 0"
        );
        assert_eq!(err.field(), Some("limits.max_sessions"));

        // Nothing of `control_plane.public_keys` is written: no line to give.
        let err = parse_relay("", "relay.toml").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(
            b"relays = [\"http://nope\"]\nidentity_key_file = \"k\"\ngrant_file = \"g\"\n",
        )
        .unwrap();
        let err = load_agent(file.path()).unwrap_err();
        assert_eq!(err.line(), Some(1), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{}:1: invalid `relays[0]`", file.path().display())),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_carry_origin_line_and_key() {
        let text = "[limits]\nmax_sessions = 1\nmax_leases = \"many\"\n";
        let err = parse_relay(text, "relay.toml").unwrap_err();
        let ConfigError::Parse { path, message } = &err else {
            panic!("expected Parse, got {err:?}");
        };
        assert_eq!(path, "relay.toml");
        assert!(message.contains("line 3"), "{message}");
        assert!(err.to_string().starts_with("cannot parse relay.toml"));

        let bad_duration = "[timeouts]\n\nhello = \"10 parsecs\"\n";
        let message = parse_relay(bad_duration, "r").unwrap_err().to_string();
        assert!(message.contains("line 3"), "{message}");

        let unknown = parse_relay("[limits]\nmax_sesions = 5\n", "r").unwrap_err();
        let message = unknown.to_string();
        assert!(
            message.contains("line 2") && message.contains("max_sesions"),
            "{message}"
        );
    }
}
