//! Typed configuration for the Postern relay and SDK agent.
//!
//! Each program reads one TOML file into a typed struct ([`RelayConfig`], [`AgentConfig`]).
//! Parsing is strict: unknown fields are rejected, durations are humantime strings (`"10s"`,
//! `"5m"`), and omitted sections take documented defaults. After parsing, the configuration is
//! validated as a whole — ranges, cross-field constraints, keys, URLs, lease names — and the
//! first problem is returned as [`ConfigError::InvalidAt`]: the file, the line ([`locate`]) and
//! the dotted TOML path of the offending value (`limits.max_sessions`, `lease[1].name`), or as
//! [`ConfigError::Invalid`] when nothing of that path is written. Syntax and type errors come
//! back as [`ConfigError::Parse`] with the line, column and key from `toml`.
//!
//! [`ConfigWatcher`] tells a program when to look at its file again (file events and SIGHUP);
//! it is kept apart from parsing, and applying a new configuration is the program's business.
//!
//! A commented example of each file lives in `config/examples/`.
//!
//! ```
//! let key = "[control_plane]\npublic_keys = [\"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"]\n";
//! let cfg = postern_config::parse_relay(key, "inline")?;
//! assert_eq!(cfg.limits.max_sessions, 10_000);
//!
//! let text = format!("{key}[limits]\nmax_sessions = 0\n");
//! let err = postern_config::parse_relay(&text, "inline").unwrap_err();
//! assert_eq!(err.to_string(), "inline:4: invalid `limits.max_sessions`: must be greater than 0");
//! # Ok::<(), postern_config::ConfigError>(())
//! ```

mod agent;
mod check;
mod error;
mod gateway;
mod load;
mod locate;
mod relay;
mod watch;

pub use agent::{AgentConfig, AgentLimits, LeaseConfig, ReconnectConfig};
pub use error::ConfigError;
pub use gateway::{
    load_gateway, parse_gateway, ApiKeyConfig, BreakerConfig, BreakerOverride, ControlConfig,
    GatewayConfig, GatewayLease, GatewayLimits, GatewayListen, IpPolicy, MetricsConfig, Rate,
    RateLimitBackend, RateLimitConfig, Scope, TlsCert, UpstreamConfig, UpstreamProtocol,
};
pub use load::{load_agent, load_relay, parse_agent, parse_relay};
pub use locate::locate;
pub use relay::{
    ControlPlane, RelayConfig, RelayLimits, RelayListen, RelayMetricsConfig, RelayTimeouts,
    TlsFiles,
};
pub use watch::{ConfigWatcher, ReloadTrigger, WatchError};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn examples_parse_and_validate() {
        let relay = parse_relay(include_str!("../examples/relay.toml"), "relay.toml").unwrap();
        assert_eq!(relay.control_plane.public_key_bytes(), vec![[1u8; 32]]);
        let agent = parse_agent(include_str!("../examples/agent.toml"), "agent.toml").unwrap();
        assert_eq!(agent.leases.len(), 2);
    }
}
