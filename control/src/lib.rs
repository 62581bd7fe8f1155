//! Postern's control plane: workspaces, API keys, admin tokens and the evidence chain, kept in
//! SQLite (embedded, the default) or PostgreSQL, and served as an HTTP API at `/api/v1` that the
//! gateway mounts on its own host names.
//!
//! * [`store`] — the one storage trait and its two `sqlx` implementations, with migrations;
//! * [`api`] — the axum router: one gate (rate limit, action table, admin token, workspace,
//!   role), then one handler per route; OpenAPI 3.1 from the code;
//! * [`roles`] — the roles and the action→role table;
//! * [`tokens`] — the bootstrap token and personal access tokens;
//! * [`keys`] — the API key format and minting;
//! * [`audit`] and [`chain`] — the append-only, hash-chained, checkpointed evidence log.
//!
//! The crate never sees a request of the data path: the gateway reads the keys it serves from
//! [`ControlPlane::active_keys`] and is told of changes through [`ControlPlane::subscribe`].
//! It never logs a secret: keys and tokens are shown once, in the answer that creates them.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use postern_config::{ApiKeyConfig, Rate};
use tokio::sync::watch;

pub mod api;
pub mod audit;
pub mod chain;
pub mod keys;
pub mod roles;
pub mod store;
pub mod tokens;

use store::{ApiKeyRecord, Store, StoreError};

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Accept the bootstrap token. The gateway turns this off once an identity provider is
    /// configured, unless the operator keeps it explicitly.
    pub keep_bootstrap: bool,
    /// The admin API's budget per client address.
    pub admin_rate: Rate,
    pub audit: audit::AuditSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            keep_bootstrap: true,
            admin_rate: Rate {
                requests: 50,
                per: Duration::from_secs(1),
                burst: Some(100),
            },
            audit: audit::AuditSettings::default(),
        }
    }
}

/// The control plane: its store, its audit writer, and the signal the gateway reloads on.
#[derive(Debug)]
pub struct ControlPlane {
    pub store: Arc<dyn Store>,
    pub audit: audit::Audit,
    pub settings: Settings,
    limiter: api::AdminLimiter,
    changes: watch::Sender<u64>,
}

impl ControlPlane {
    /// Starts the control plane on `store`, signing checkpoints with `key`. Must run inside a
    /// tokio runtime (the audit writer is a task).
    pub fn start(store: Arc<dyn Store>, key: SigningKey, settings: Settings) -> Arc<Self> {
        let audit = audit::Audit::start(Arc::clone(&store), key, settings.audit);
        let (changes, _) = watch::channel(0);
        Arc::new(Self {
            limiter: api::AdminLimiter::new(settings.admin_rate),
            store,
            audit,
            settings,
            changes,
        })
    }

    /// The router to mount at `/api/v1`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::router(Arc::clone(self))
    }

    /// Resolves when the keys changed in this process (a counter that only grows).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn keys_changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Every active key of every workspace, as the gateway's key table takes them.
    pub async fn active_keys(&self) -> Result<Vec<ApiKeyConfig>, StoreError> {
        Ok(self
            .store
            .active_api_keys()
            .await?
            .iter()
            .map(key_config)
            .collect())
    }

    /// Makes the bootstrap token if the store has none; returns it (to print once).
    pub async fn ensure_bootstrap_token(&self) -> Result<Option<String>, StoreError> {
        if self.store.has_bootstrap_token().await? {
            return Ok(None);
        }
        let minted = tokens::mint(None, roles::Role::Admin, "bootstrap", true);
        self.store.insert_admin_token(&minted.record).await?;
        // Best effort: the token exists whether or not its event is written in time.
        let _ = self
            .audit
            .record(audit::event(
                "token.bootstrap",
                "control-plane",
                None,
                Some(&minted.record.id),
                serde_json::json!({}),
            ))
            .await;
        Ok(Some(minted.secret))
    }
}

/// A stored key as the gateway's config type.
pub fn key_config(k: &ApiKeyRecord) -> ApiKeyConfig {
    ApiKeyConfig {
        id: k.id.clone(),
        hash: k.hash.clone(),
        name: k.name.clone(),
        leases: k.leases.clone(),
        scopes: k.scopes.clone(),
        expires_at: k.expires_unix.and_then(|t| u64::try_from(t).ok()),
        allow_ips: k.allow_ips.clone(),
        deny_ips: k.deny_ips.clone(),
        rate_limit: k.rate_limit,
    }
}
