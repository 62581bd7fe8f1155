//! Small validation primitives shared by the relay and agent sections.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine as _};

use crate::ConfigError;

/// `Ok(())` if `ok`, otherwise an [`ConfigError::Invalid`] for `field`.
pub(crate) fn ensure(ok: bool, field: &str, reason: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, reason))
    }
}

/// Every `(name, value)` must be greater than zero; fields are reported as `at.name`.
pub(crate) fn all_positive(at: &str, counts: &[(&str, usize)]) -> Result<(), ConfigError> {
    for (name, value) in counts {
        ensure(
            *value > 0,
            &format!("{at}.{name}"),
            "must be greater than 0",
        )?;
    }
    Ok(())
}

/// Every `(name, duration)` must be non-zero; fields are reported as `at.name`.
pub(crate) fn all_nonzero(at: &str, durations: &[(&str, Duration)]) -> Result<(), ConfigError> {
    for (name, value) in durations {
        ensure(
            !value.is_zero(),
            &format!("{at}.{name}"),
            "must be greater than 0",
        )?;
    }
    Ok(())
}

/// Decodes a standard-base64 32-byte public key (Ed25519 or X25519).
pub(crate) fn key32(field: &str, b64: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = STANDARD
        .decode(b64)
        .map_err(|e| ConfigError::invalid(field, format!("not valid base64: {e}")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        ConfigError::invalid(
            field,
            format!("must decode to 32 bytes, got {}", bytes.len()),
        )
    })
}

/// The relay-client part shared by agent and gateway configs: at least one `ws(s)://` relay URL,
/// no duplicates, and the identity key and grant files named.
pub(crate) fn check_relay_client(
    relays: &[String],
    identity_key_file: &std::path::Path,
    grant_file: &std::path::Path,
) -> Result<(), ConfigError> {
    ensure(
        !relays.is_empty(),
        "relays",
        "at least one relay URL is required",
    )?;
    let mut seen = std::collections::HashSet::new();
    for (i, url) in relays.iter().enumerate() {
        let field = format!("relays[{i}]");
        check_ws_url(&field, url)?;
        ensure(seen.insert(url), &field, "duplicate relay URL")?;
    }
    for (field, path) in [
        ("identity_key_file", identity_key_file),
        ("grant_file", grant_file),
    ] {
        ensure(!path.as_os_str().is_empty(), field, "is empty")?;
    }
    Ok(())
}

/// Scheme must be `ws` or `wss`; the authority must name a host and, if given, a valid port.
fn check_ws_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| ConfigError::invalid(field, "must start with ws:// or wss://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, tail)) => (host, Some(tail.strip_prefix(':').unwrap_or(tail))),
            None => ("", None),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host_ok = !host.is_empty() && !host.chars().any(|c| c.is_whitespace() || c == '@');
    ensure(host_ok, field, "must name a host")?;
    ensure(
        port.is_none_or(|p| p.parse::<u16>().is_ok()),
        field,
        "has an invalid port",
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn key32_checks_encoding_and_length() {
        assert_eq!(key32("k", &STANDARD.encode([9u8; 32])).unwrap(), [9u8; 32]);
        let short = key32("k", &STANDARD.encode([9u8; 31])).unwrap_err();
        assert!(short.to_string().contains("got 31"), "{short}");
        assert_eq!(key32("k", "not base64!").unwrap_err().field(), Some("k"));
    }
}
