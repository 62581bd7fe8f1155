//! Reading, parsing and validating configuration files.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{AgentConfig, ConfigError, RelayConfig};

/// Reads, parses and validates a relay configuration file.
pub fn load_relay(path: &Path) -> Result<RelayConfig, ConfigError> {
    parse_relay(&read(path)?, &path.display().to_string())
}

/// Reads, parses and validates an agent configuration file.
pub fn load_agent(path: &Path) -> Result<AgentConfig, ConfigError> {
    parse_agent(&read(path)?, &path.display().to_string())
}

/// Parses and validates relay configuration text; `origin` names it in errors.
pub fn parse_relay(text: &str, origin: &str) -> Result<RelayConfig, ConfigError> {
    let config: RelayConfig = parse(text, origin)?;
    config.validate()?;
    Ok(config)
}

/// Parses and validates agent configuration text; `origin` names it in errors.
pub fn parse_agent(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
    let config: AgentConfig = parse(text, origin)?;
    config.validate()?;
    Ok(config)
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
