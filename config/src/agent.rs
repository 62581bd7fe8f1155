//! Configuration of an SDK agent (`postern expose`, or a service embedding the SDK).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{all_nonzero, all_positive, check_relay_client, ensure, key32};
use crate::ConfigError;

const MAX_NAME_CHARS: usize = 63;
const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY_BYTES: usize = 64;
const MAX_METADATA_VALUE_BYTES: usize = 256;
/// RFC 7301: a protocol id is 1..=255 bytes.
const MAX_ALPN_BYTES: usize = 255;

/// The whole agent configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `ws://` or `wss://` relay URLs; every lease is registered on each of them.
    #[serde(default)]
    pub relays: Vec<String>,
    /// The agent's Ed25519 identity key.
    pub identity_key_file: PathBuf,
    /// The lease grant signed by the control plane.
    pub grant_file: PathBuf,
    /// Extra PEM roots for `wss://` relays; the web PKI roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `[[lease]]` tables.
    #[serde(default, rename = "lease")]
    pub leases: Vec<LeaseConfig>,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    #[serde(default)]
    pub limits: AgentLimits,
    /// Base64 X25519 static keys of dialers allowed to connect; empty allows any.
    #[serde(default)]
    pub allowed_dialers: Vec<String>,
}

/// One named lease and the local service it forwards to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    pub name: String,
    /// `http://host:port`, `h2c://host:port` (an origin speaking HTTP/2 without TLS) or
    /// `tcp://host:port` on the agent's side.
    pub target: String,
    /// Keep the caller's `Host` header instead of rewriting it to the target.
    #[serde(default)]
    pub keep_host: bool,
    #[serde(default)]
    pub alpn: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(60)
}

/// Exponential backoff between relay reconnection attempts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectConfig {
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Caps on what dialers can make the agent hold.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentLimits {
    pub max_inner_streams: usize,
    pub max_pending_accepts: usize,
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_session_timeout: Duration,
    pub max_e2ee_sessions: usize,
    /// Most fields a request head may carry; set it to the gateway's `limits.max_header_count`
    /// (the agent adds room for the few fields the gateway itself sets).
    pub max_header_count: usize,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            max_inner_streams: 4096,
            max_pending_accepts: 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_session_timeout: Duration::from_secs(600),
            max_e2ee_sessions: 1024,
            max_header_count: 100,
        }
    }
}

impl AgentConfig {
    /// Checks the whole configuration; returns the first problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_relay_client(&self.relays, &self.identity_key_file, &self.grant_file)?;
        ensure(
            !self.leases.is_empty(),
            "lease",
            "at least one [[lease]] is required",
        )?;
        let mut names = HashSet::new();
        for (i, lease) in self.leases.iter().enumerate() {
            let at = format!("lease[{i}]");
            lease.validate(&at)?;
            ensure(
                names.insert(&lease.name),
                &format!("{at}.name"),
                "duplicate lease name",
            )?;
        }
        self.reconnect.validate("reconnect")?;
        self.limits.validate("limits")?;
        for (i, key) in self.allowed_dialers.iter().enumerate() {
            key32(&format!("allowed_dialers[{i}]"), key)?;
        }
        Ok(())
    }

    /// The decoded dialer keys (empty = any dialer). Call after validation.
    pub fn allowed_dialer_bytes(&self) -> Vec<[u8; 32]> {
        self.allowed_dialers
            .iter()
            .filter_map(|k| key32("", k).ok())
            .collect()
    }
}

impl LeaseConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        let len = self.name.chars().count();
        ensure(
            len > 0 && len <= MAX_NAME_CHARS,
            &field("name"),
            "must be 1 to 63 characters",
        )?;
        let bad = |c: char| c.is_whitespace() || c.is_control() || c == '/';
        ensure(
            !self.name.contains(bad),
            &field("name"),
            "must not contain whitespace, control characters or '/'",
        )?;
        let rest = ["http://", "h2c://", "tcp://"]
            .iter()
            .find_map(|s| self.target.strip_prefix(s));
        let target_ok = rest.is_some_and(|r| !r.is_empty());
        ensure(
            target_ok,
            &field("target"),
            "must be http://host:port, h2c://host:port or tcp://host:port",
        )?;
        for (i, proto) in self.alpn.iter().enumerate() {
            let ok = !proto.is_empty() && proto.len() <= MAX_ALPN_BYTES;
            ensure(ok, &field(&format!("alpn[{i}]")), "must be 1 to 255 bytes")?;
        }
        let entries = self.metadata.len();
        ensure(
            entries <= MAX_METADATA_ENTRIES,
            &field("metadata"),
            "at most 32 entries",
        )?;
        for (key, value) in &self.metadata {
            let f = field(&format!("metadata.{key}"));
            let key_ok = !key.is_empty() && key.len() <= MAX_METADATA_KEY_BYTES;
            ensure(key_ok, &f, "key must be 1 to 64 bytes")?;
            ensure(
                value.len() <= MAX_METADATA_VALUE_BYTES,
                &f,
                "value must be at most 256 bytes",
            )?;
        }
        all_nonzero(at, &[("ttl", self.ttl)])
    }
}

impl ReconnectConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        all_nonzero(
            at,
            &[
                ("initial_backoff", self.initial_backoff),
                ("max_backoff", self.max_backoff),
            ],
        )?;
        ensure(
            self.initial_backoff <= self.max_backoff,
            &format!("{at}.initial_backoff"),
            "must not exceed max_backoff",
        )
    }
}

impl AgentLimits {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        all_positive(
            at,
            &[
                ("max_inner_streams", self.max_inner_streams),
                ("max_pending_accepts", self.max_pending_accepts),
                ("max_e2ee_sessions", self.max_e2ee_sessions),
                ("max_header_count", self.max_header_count),
            ],
        )?;
        all_nonzero(
            at,
            &[
                ("handshake_timeout", self.handshake_timeout),
                ("idle_session_timeout", self.idle_session_timeout),
            ],
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use base64::{engine::general_purpose::STANDARD, Engine as _};

    use super::*;
    use crate::parse_agent;

    /// A valid agent file with `extra` inserted before its final `[[lease]]` named "web".
    fn parse(extra: &str) -> Result<AgentConfig, ConfigError> {
        let text = format!(
            "relays = [\"wss://relay.example.com/v1/tunnel\"]\n\
             identity_key_file = \"id.key\"\ngrant_file = \"grant.tok\"\n{extra}\n\
             [[lease]]\nname = \"web\"\ntarget = \"http://127.0.0.1:3000\"\n"
        );
        parse_agent(&text, "agent.toml")
    }

    fn field(extra: &str) -> String {
        match parse(extra) {
            Err(e @ (ConfigError::Invalid { .. } | ConfigError::InvalidAt { .. })) => {
                e.field().unwrap_or_default().to_owned()
            }
            other => panic!("expected Invalid for {extra:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.reconnect, ReconnectConfig::default());
        assert_eq!(cfg.reconnect.initial_backoff, Duration::from_millis(200));
        assert_eq!(cfg.limits.idle_session_timeout, Duration::from_secs(600));
        assert_eq!(cfg.limits.max_inner_streams, 4096);
        let lease = &cfg.leases[0];
        assert_eq!(lease.ttl, Duration::from_secs(60));
        assert!(!lease.keep_host && lease.alpn.is_empty() && lease.metadata.is_empty());
        assert!(cfg.ca_file.is_none() && cfg.allowed_dialers.is_empty());
    }

    #[test]
    fn durations_keys_and_urls_parse() {
        let key = STANDARD.encode([3u8; 32]);
        let mut cfg = parse(&format!(
            "allowed_dialers = [\"{key}\"]\n[reconnect]\ninitial_backoff = \"1s\"\nmax_backoff = \"2m\""
        ))
        .unwrap();
        assert_eq!(cfg.reconnect.max_backoff, Duration::from_secs(120));
        assert_eq!(cfg.allowed_dialer_bytes(), vec![[3u8; 32]]);
        cfg.relays = vec!["ws://127.0.0.1:7000".into(), "wss://[::1]:443/v1".into()];
        cfg.validate().unwrap();
    }

    #[test]
    fn each_rule_names_its_field() {
        let top = [
            ("allowed_dialers = [\"AAAA\"]", "allowed_dialers[0]"),
            (
                "[reconnect]\ninitial_backoff = \"1m\"",
                "reconnect.initial_backoff",
            ),
            ("[reconnect]\nmax_backoff = \"0s\"", "reconnect.max_backoff"),
            (
                "[limits]\nmax_e2ee_sessions = 0",
                "limits.max_e2ee_sessions",
            ),
            (
                "[limits]\nhandshake_timeout = \"0ms\"",
                "limits.handshake_timeout",
            ),
        ];
        for (extra, expected) in top {
            assert_eq!(field(extra), expected, "{extra}");
        }
        // Each body becomes lease[0], ahead of the fixed "web" lease.
        let long_name = format!("name = \"{}\"", "x".repeat(64));
        let long_value = format!("name = \"a\"\nmetadata = {{ k = \"{}\" }}", "v".repeat(257));
        let leases = [
            ("name = \"web\"", "lease[1].name"),
            ("name = \"\"", "lease[0].name"),
            ("name = \"a b\"", "lease[0].name"),
            ("name = \"a/b\"", "lease[0].name"),
            (&long_name, "lease[0].name"),
            ("name = \"a\"\nalpn = [\"h2\", \"\"]", "lease[0].alpn[1]"),
            ("name = \"a\"\nttl = \"0s\"", "lease[0].ttl"),
            (&long_value, "lease[0].metadata.k"),
        ];
        for (body, expected) in leases {
            let extra = format!("[[lease]]\ntarget = \"tcp://h:1\"\n{body}");
            assert_eq!(field(&extra), expected, "{extra}");
        }
        for target in ["udp://h:1", "http://", "127.0.0.1:80"] {
            let extra = format!("[[lease]]\nname = \"a\"\ntarget = \"{target}\"");
            assert_eq!(field(&extra), "lease[0].target", "{target}");
        }
    }

    #[test]
    fn metadata_entry_count_is_bounded() {
        let mut cfg = parse("").unwrap();
        cfg.leases[0].metadata = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(
            cfg.validate().unwrap_err().field(),
            Some("lease[0].metadata")
        );
    }

    #[test]
    fn relay_urls_are_checked() {
        let mut cfg = parse("").unwrap();
        for bad in [
            "http://relay",
            "wss://",
            "wss:///path",
            "ws://:7000",
            "ws://h:99999",
            "ws://[::1]x",
        ] {
            cfg.relays = vec![bad.to_owned()];
            assert_eq!(
                cfg.validate().unwrap_err().field(),
                Some("relays[0]"),
                "{bad}"
            );
        }
        cfg.relays = vec!["wss://a".into(), "wss://a".into()];
        assert_eq!(cfg.validate().unwrap_err().field(), Some("relays[1]"));
        cfg.relays.clear();
        assert_eq!(cfg.validate().unwrap_err().field(), Some("relays"));
        cfg.relays = vec!["wss://a".into()];
        cfg.leases.clear();
        assert_eq!(cfg.validate().unwrap_err().field(), Some("lease"));
    }

    #[test]
    fn unknown_fields_rejected() {
        for extra in [
            "bogus = 1",
            "[reconnect]\nmax = \"1s\"",
            "[[lease]]\nname = \"a\"\ntarget = \"tcp://h:1\"\nport = 1",
        ] {
            assert!(
                matches!(parse(extra), Err(ConfigError::Parse { .. })),
                "{extra}"
            );
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let cfg = parse("[[lease]]\nname = \"m\"\ntarget = \"tcp://h:1\"\nmetadata = { team = \"x\" }\nalpn = [\"h2\"]").unwrap();
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(parse_agent(&text, "again").unwrap(), cfg);
    }
}
