//! Everything the gateway resolves once at start-up from its config: the API key store, the
//! pinned owner identity of every lease it serves, the dialer (one E2EE session per lease) and
//! the client connection slots. The request path only reads this.

use std::collections::HashMap;
use std::sync::Arc;

use postern_config::GatewayConfig;
use postern_sdk::{ClientOptions, Dialer, DialerConfig, Identity, LeaseTarget, RelayUrl};

use crate::auth::KeyStore;
use crate::downstream::ConnectionSlots;
use crate::GatewayError;

#[derive(Debug)]
pub struct GatewayState {
    pub config: GatewayConfig,
    pub keys: KeyStore,
    /// Lease name (NFC) → where to dial and whom to expect there.
    pub leases: HashMap<String, LeaseTarget>,
    pub dialer: Dialer,
    /// One permit per client connection that may be open (`limits.max_connections`).
    pub connections: ConnectionSlots,
}

impl GatewayState {
    /// Loads keys, grants and CA files named by `config`. Must run inside a tokio runtime.
    pub fn load(config: GatewayConfig) -> Result<Self, GatewayError> {
        let identity = Identity::load(&config.identity_key_file)
            .map_err(|e| GatewayError::Key(e.to_string()))?;
        let grants = postern_sdk::grant::load_file(&config.grant_file)
            .map_err(|e| GatewayError::Key(format!("{}: {e}", config.grant_file.display())))?;
        let relays = config
            .relays
            .iter()
            .map(|r| RelayUrl::parse(r).map_err(|e| GatewayError::Config(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut client = ClientOptions::default();
        if let Some(ca) = &config.ca_file {
            let certs =
                postern_sdk::tls::load_certs(ca).map_err(|e| GatewayError::Tls(e.to_string()))?;
            client.tls = Some(
                postern_sdk::tls::client_config(&certs)
                    .map_err(|e| GatewayError::Tls(e.to_string()))?,
            );
        }
        let mut leases = HashMap::new();
        for (i, lease) in config.leases.iter().enumerate() {
            let name = postern_sdk::lease_name::normalize(&lease.name)
                .map_err(|e| GatewayError::Config(format!("lease[{i}].name: {e}")))?;
            let owner = postern_sdk::identity::parse_verifying_key(&lease.owner_identity)
                .map_err(|e| GatewayError::Config(format!("lease[{i}].owner_identity: {e}")))?;
            let mut target = LeaseTarget::new(name.clone(), owner);
            target.alpn = lease.alpn.clone();
            // The config checks names as written; two spellings of one name (NFC and NFD)
            // are the same lease and would silently shadow each other here.
            if leases.insert(name, target).is_some() {
                return Err(GatewayError::Config(format!(
                    "lease[{i}].name: the same lease name as an earlier [[lease]] \
                     (compared after Unicode NFC normalization)"
                )));
            }
        }
        let keys = KeyStore::new(&config.api_keys, &config.limits);
        let mut dcfg = DialerConfig::new(relays[0].clone(), identity, grants);
        dcfg.relays = relays;
        dcfg.client = client;
        dcfg.handshake_timeout = config.limits.upstream_connect_timeout;
        let slots = tokio::sync::Semaphore::new(slot_count(&config));
        Ok(Self {
            keys,
            leases,
            dialer: Dialer::new(dcfg),
            connections: Arc::new(slots),
            config,
        })
    }

    /// Client connections open now, across listeners.
    pub fn open_connections(&self) -> usize {
        self.max_connections()
            .saturating_sub(self.connections.available_permits())
    }

    /// How many client connections may be open at once.
    pub fn max_connections(&self) -> usize {
        slot_count(&self.config)
    }
}

/// `limits.max_connections`, within what a semaphore can count.
fn slot_count(config: &GatewayConfig) -> usize {
    config
        .limits
        .max_connections
        .min(tokio::sync::Semaphore::MAX_PERMITS)
}
