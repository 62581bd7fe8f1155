//! Configuration of the relay (`postern-relay`): its types, defaults and validation rules.
//! Nothing here reads files, watches them or applies a configuration to a running relay.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{all_nonzero, all_positive, ensure, key32};
use crate::ConfigError;

/// Smallest and largest accepted `limits.max_frame_bytes`.
const FRAME_BYTES: std::ops::RangeInclusive<u32> = 1024..=16 * 1024 * 1024;
/// Smallest accepted `limits.max_ws_message_bytes`.
const MIN_WS_MESSAGE_BYTES: usize = 65_536;

/// The whole relay configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(default)]
    pub listen: RelayListen,
    #[serde(default)]
    pub control_plane: ControlPlane,
    #[serde(default)]
    pub limits: RelayLimits,
    #[serde(default)]
    pub timeouts: RelayTimeouts,
    #[serde(default)]
    pub metrics: RelayMetricsConfig,
    /// Dialers must present a grant from the control plane to connect to a lease.
    #[serde(default = "yes")]
    pub require_dial_grant: bool,
}

fn yes() -> bool {
    true
}

/// Where the relay accepts WebSocket connections.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayListen {
    pub addr: SocketAddr,
    /// PEM files; without them the relay speaks plain `ws://`.
    pub tls: Option<TlsFiles>,
}

impl Default for RelayListen {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 7000)),
            tls: None,
        }
    }
}

/// The Prometheus listener (`GET /metrics`), separate from the tunnel listener so it can stay
/// on loopback or a private network.
///
/// A file that omits the section gets `127.0.0.1:9465`; [`RelayConfig::with_control_plane_keys`]
/// (programmatic configs: tests, `postern up`, `--dev`) gets `127.0.0.1:0`, an ephemeral port,
/// so any number of relays can run in one process. A configured listener that cannot be bound
/// is an error at start-up; set `enabled = false` for none.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayMetricsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
}

impl Default for RelayMetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9465)),
        }
    }
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The control plane's Ed25519 public keys, used to verify lease grants.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlane {
    /// Standard base64, 32 bytes each; several allow key rotation.
    pub public_keys: Vec<String>,
}

impl ControlPlane {
    /// The decoded keys. Call after validation: undecodable entries are skipped.
    pub fn public_key_bytes(&self) -> Vec<[u8; 32]> {
        self.public_keys
            .iter()
            .filter_map(|k| key32("", k).ok())
            .collect()
    }

    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = format!("{at}.public_keys");
        ensure(
            !self.public_keys.is_empty(),
            &field,
            "at least one key is required",
        )?;
        for (i, key) in self.public_keys.iter().enumerate() {
            key32(&format!("{field}[{i}]"), key)?;
        }
        Ok(())
    }
}

/// Resource caps; every one bounds memory or work an untrusted peer can cause.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayLimits {
    pub max_sessions: usize,
    pub max_leases: usize,
    pub max_leases_per_session: usize,
    pub max_streams_per_session: usize,
    pub max_pending_connects: usize,
    pub max_streams_per_lease: usize,
    pub max_frame_bytes: u32,
    pub max_ws_message_bytes: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            max_leases: 100_000,
            max_leases_per_session: 64,
            max_streams_per_session: 1024,
            max_pending_connects: 1024,
            max_streams_per_lease: 1024,
            max_frame_bytes: 65_536,
            max_ws_message_bytes: 1_048_576,
        }
    }
}

impl RelayLimits {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        all_positive(
            at,
            &[
                ("max_sessions", self.max_sessions),
                ("max_leases", self.max_leases),
                ("max_leases_per_session", self.max_leases_per_session),
                ("max_streams_per_session", self.max_streams_per_session),
                ("max_pending_connects", self.max_pending_connects),
                ("max_streams_per_lease", self.max_streams_per_lease),
            ],
        )?;
        ensure(
            FRAME_BYTES.contains(&self.max_frame_bytes),
            &format!("{at}.max_frame_bytes"),
            "must be between 1024 and 16777216 (16 MiB)",
        )?;
        ensure(
            self.max_ws_message_bytes >= MIN_WS_MESSAGE_BYTES,
            &format!("{at}.max_ws_message_bytes"),
            "must be at least 65536",
        )
    }
}

/// Timeouts, written as humantime strings ("10s", "5m").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayTimeouts {
    /// Time a new session has to complete the hello exchange.
    #[serde(with = "humantime_serde")]
    pub hello: Duration,
    /// Time a lease owner has to accept a spliced connect.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// TTL granted when a registration does not ask for one.
    #[serde(with = "humantime_serde")]
    pub lease_ttl_default: Duration,
    /// Longest TTL granted, whatever is asked.
    #[serde(with = "humantime_serde")]
    pub lease_ttl_max: Duration,
    /// Time sessions get to drain on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Interval between keepalive pings.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
}

impl Default for RelayTimeouts {
    fn default() -> Self {
        Self {
            hello: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            lease_ttl_default: Duration::from_secs(60),
            lease_ttl_max: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
            keepalive: Duration::from_secs(15),
        }
    }
}

impl RelayTimeouts {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        all_nonzero(
            at,
            &[
                ("hello", self.hello),
                ("connect", self.connect),
                ("lease_ttl_default", self.lease_ttl_default),
                ("lease_ttl_max", self.lease_ttl_max),
                ("shutdown_grace", self.shutdown_grace),
                ("keepalive", self.keepalive),
            ],
        )?;
        ensure(
            self.lease_ttl_default <= self.lease_ttl_max,
            &format!("{at}.lease_ttl_default"),
            "must not exceed lease_ttl_max",
        )
    }
}

impl RelayConfig {
    /// Defaults everywhere, with the given control-plane keys (standard base64), except that
    /// the metrics listener takes an ephemeral port (`127.0.0.1:0`, see
    /// [`RelayMetricsConfig`]).
    pub fn with_control_plane_keys(keys: Vec<String>) -> Self {
        Self {
            listen: RelayListen::default(),
            control_plane: ControlPlane { public_keys: keys },
            limits: RelayLimits::default(),
            timeouts: RelayTimeouts::default(),
            metrics: RelayMetricsConfig {
                enabled: true,
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            },
            require_dial_grant: true,
        }
    }

    /// The settings a running relay cannot change without a restart (it holds sockets and TLS
    /// material made from them) that differ between `self` and `next`, by TOML path.
    pub fn restart_needed(&self, next: &RelayConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen.addr != next.listen.addr {
            changed.push("listen.addr");
        }
        if self.listen.tls != next.listen.tls {
            changed.push("listen.tls");
        }
        if self.metrics != next.metrics {
            changed.push("metrics");
        }
        changed
    }

    /// Checks the whole configuration; returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.listen.tls {
            ensure(
                !tls.cert.as_os_str().is_empty(),
                "listen.tls.cert",
                "is empty",
            )?;
            ensure(
                !tls.key.as_os_str().is_empty(),
                "listen.tls.key",
                "is empty",
            )?;
        }
        self.control_plane.validate("control_plane")?;
        self.limits.validate("limits")?;
        self.timeouts.validate("timeouts")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use base64::{engine::general_purpose::STANDARD, Engine as _};

    use super::*;
    use crate::parse_relay;

    fn parse(extra: &str) -> Result<RelayConfig, ConfigError> {
        let key = STANDARD.encode([7u8; 32]);
        parse_relay(
            &format!("{extra}\n[control_plane]\npublic_keys = [\"{key}\"]\n"),
            "relay.toml",
        )
    }

    fn field(extra: &str) -> String {
        parse(extra).unwrap_err().field().unwrap().to_owned()
    }

    #[test]
    fn defaults() {
        let cfg = parse("").unwrap();
        let key = STANDARD.encode([7u8; 32]);
        let mut programmatic = RelayConfig::with_control_plane_keys(vec![key]);
        assert_eq!(programmatic.metrics.listen.port(), 0, "ephemeral in code");
        programmatic.metrics = RelayMetricsConfig::default();
        assert_eq!(cfg, programmatic);
        assert_eq!(cfg.metrics.listen, "127.0.0.1:9465".parse().unwrap());
        assert!(cfg.metrics.enabled);
        assert_eq!(cfg.listen.addr, "127.0.0.1:7000".parse().unwrap());
        assert!(cfg.require_dial_grant);
        assert_eq!(cfg.limits.max_sessions, 10_000);
        assert_eq!(cfg.limits.max_frame_bytes, 65_536);
        assert_eq!(cfg.timeouts.lease_ttl_max, Duration::from_secs(600));
        assert_eq!(cfg.control_plane.public_key_bytes(), vec![[7u8; 32]]);
    }

    #[test]
    fn durations_and_overrides_parse() {
        let cfg = parse(
            "require_dial_grant = false\n[listen]\naddr = \"0.0.0.0:443\"\n\
             tls = { cert = \"c.pem\", key = \"k.pem\" }\n\
             [timeouts]\nhello = \"1500ms\"\nlease_ttl_max = \"1h\"",
        )
        .unwrap();
        assert!(!cfg.require_dial_grant);
        assert_eq!(cfg.timeouts.hello, Duration::from_millis(1500));
        assert_eq!(cfg.timeouts.lease_ttl_max, Duration::from_secs(3600));
        assert_eq!(cfg.listen.tls.unwrap().key, PathBuf::from("k.pem"));
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            ("[limits]\nmax_sessions = 0", "limits.max_sessions"),
            (
                "[limits]\nmax_streams_per_lease = 0",
                "limits.max_streams_per_lease",
            ),
            ("[limits]\nmax_frame_bytes = 1023", "limits.max_frame_bytes"),
            (
                "[limits]\nmax_frame_bytes = 16777217",
                "limits.max_frame_bytes",
            ),
            (
                "[limits]\nmax_ws_message_bytes = 65535",
                "limits.max_ws_message_bytes",
            ),
            ("[timeouts]\nkeepalive = \"0s\"", "timeouts.keepalive"),
            (
                "[timeouts]\nlease_ttl_default = \"11m\"",
                "timeouts.lease_ttl_default",
            ),
            (
                "[listen]\ntls = { cert = \"\", key = \"k\" }",
                "listen.tls.cert",
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(field(extra), expected, "{extra}");
        }
    }

    #[test]
    fn control_plane_keys_are_checked() {
        let empty = parse_relay("[control_plane]\npublic_keys = []", "r").unwrap_err();
        assert_eq!(empty.field(), Some("control_plane.public_keys"));
        assert_eq!(
            parse_relay("", "r").unwrap_err().field(),
            Some("control_plane.public_keys")
        );
        let short = STANDARD.encode([1u8; 16]);
        let mut cfg = RelayConfig::with_control_plane_keys(vec![STANDARD.encode([1u8; 32])]);
        cfg.control_plane.public_keys.push(short);
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.field(), Some("control_plane.public_keys[1]"));
    }

    #[test]
    fn metrics_section_parses() {
        let cfg = parse("[metrics]\nlisten = \"0.0.0.0:9100\"").unwrap();
        assert_eq!(cfg.metrics.listen, "0.0.0.0:9100".parse().unwrap());
        assert!(cfg.metrics.enabled);
        assert!(!parse("[metrics]\nenabled = false").unwrap().metrics.enabled);
    }

    #[test]
    fn restart_needed_names_listeners_and_tls_only() {
        let a = parse("").unwrap();
        let mut b = a.clone();
        b.limits.max_sessions = 1;
        b.timeouts.hello = Duration::from_secs(1);
        b.control_plane.public_keys.push(STANDARD.encode([8u8; 32]));
        assert!(a.restart_needed(&b).is_empty());
        b.listen.addr = "127.0.0.1:7001".parse().unwrap();
        b.listen.tls = Some(TlsFiles {
            cert: "c".into(),
            key: "k".into(),
        });
        b.metrics.enabled = false;
        assert_eq!(
            a.restart_needed(&b),
            vec!["listen.addr", "listen.tls", "metrics"]
        );
    }

    #[test]
    fn unknown_fields_rejected() {
        for extra in [
            "bogus = 1",
            "[limits]\nmax_sesions = 5",
            "[listen]\nport = 1",
        ] {
            assert!(
                matches!(parse(extra), Err(ConfigError::Parse { .. })),
                "{extra}"
            );
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let cfg = parse("[listen]\ntls = { cert = \"c.pem\", key = \"k.pem\" }").unwrap();
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(parse_relay(&text, "again").unwrap(), cfg);
    }
}
