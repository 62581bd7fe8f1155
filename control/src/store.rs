//! The control plane's storage: one [`Store`] trait, two implementations through `sqlx` —
//! embedded SQLite ([`sqlite::SqliteStore`], the default: one file in the data directory) and
//! PostgreSQL ([`postgres::PgStore`], for several gateways sharing one store) — with their
//! migrations embedded in the binary and run at open.
//!
//! This module owns the records and the SQL. It never decides who may do what (that is
//! [`crate::roles`] and [`crate::api`]) and never computes the audit chain itself: the chain's
//! format is [`crate::chain`], and [`Store::append_audit`] only serializes appends so that
//! every entry names the one stored before it, across processes on PostgreSQL.
//!
//! Tenant isolation lives in the queries: every method that reads or changes a workspace's
//! resource takes the workspace id and puts it in the `WHERE` clause, so a caller that passes
//! the wrong workspace finds nothing rather than another tenant's row.

use std::fmt::Debug;

use async_trait::async_trait;
use ipnet::IpNet;
use postern_config::{Rate, Scope};
use serde::{Deserialize, Serialize};

pub mod postgres;
mod sql;
pub mod sqlite;

/// Most rows one list call returns.
pub const MAX_PAGE: u32 = 1000;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique field (a workspace name, a key id, an idempotency key) is taken.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// The database could not be reached or answered with an error. The message names no
    /// secret: the store never puts one in a query's text.
    #[error("database: {0}")]
    Database(String),
    /// A stored row does not decode (a column edited by hand, or a newer schema).
    #[error("stored {what} is malformed: {why}")]
    Corrupt { what: &'static str, why: String },
    #[error("migrations: {0}")]
    Migrate(String),
}

/// A tenant: it owns API keys (and, later, grants, leases and approvals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: String,
    /// Unique, `[a-z0-9-]`, what people and the CLI call it.
    pub name: String,
    pub display_name: String,
    /// Bumped on every change; the ETag.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An API key as stored: everything the gateway needs to check it, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The `<id>` of `pst_<id>_<secret>`; unique across workspaces.
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    /// argon2id PHC string of the whole key.
    pub hash: String,
    pub leases: Vec<String>,
    pub scopes: Vec<Scope>,
    pub allow_ips: Vec<IpNet>,
    pub deny_ips: Vec<IpNet>,
    pub rate_limit: Option<Rate>,
    /// Unix seconds after which the gateway refuses the key.
    pub expires_unix: Option<i64>,
    pub revoked_at: Option<i64>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An admin credential: the bootstrap token or a personal access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    pub id: String,
    /// `None`: every workspace (the bootstrap token only).
    pub workspace_id: Option<String>,
    /// A [`crate::roles::Role`] name.
    pub role: String,
    pub name: String,
    /// SHA-256 (hex) of the token.
    pub digest: String,
    pub bootstrap: bool,
    pub created_at: i64,
    pub expires_unix: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// The first answer to a POST that carried an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentAnswer {
    /// SHA-256 (hex) of the method, path and body it answered.
    pub request_digest: String,
    pub status: u16,
    pub body: String,
}

/// One link of the evidence chain, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    /// RFC 8785 canonical JSON, naming the previous entry's hash.
    pub entry: String,
    /// SHA-256 (hex) of `entry`.
    pub hash: String,
}

/// A signed statement that the chain up to `seq` ends in `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub signed_at: i64,
    /// The signer's Ed25519 public key, base64.
    pub public_key: String,
    /// base64 Ed25519 signature over [`crate::chain::checkpoint_message`].
    pub signature: String,
}

/// A page of a list: `next` is the cursor of the page after it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// What a list call asks for: rows after the cursor (ids sort as text), at most `limit`,
/// optionally only those with this exact name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: u32,
    pub name: Option<String>,
}

impl ListQuery {
    /// The limit clamped to 1..=[`MAX_PAGE`].
    pub fn limit(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE)
    }
}

/// The control plane's store. Every call is one statement or one transaction.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    fn backend(&self) -> Backend;

    /// `Conflict` when the name is taken.
    async fn create_workspace(&self, ws: &Workspace) -> Result<(), StoreError>;
    async fn workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError>;
    async fn workspace_by_name(&self, name: &str) -> Result<Option<Workspace>, StoreError>;
    async fn list_workspaces(&self, q: &ListQuery) -> Result<Page<Workspace>, StoreError>;
    /// Writes `ws` (its version already bumped) if the stored version is `expected`; `false`
    /// when it is not (someone changed it first) or the workspace is gone.
    async fn update_workspace(&self, ws: &Workspace, expected: i64) -> Result<bool, StoreError>;

    /// `Conflict` when the id is taken.
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn api_key(&self, workspace: &str, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    async fn list_api_keys(
        &self,
        workspace: &str,
        q: &ListQuery,
    ) -> Result<Page<ApiKeyRecord>, StoreError>;
    /// As [`Store::update_workspace`], for a key of `key.workspace_id`.
    async fn update_api_key(&self, key: &ApiKeyRecord, expected: i64) -> Result<bool, StoreError>;
    /// Every key of every workspace that is not revoked: what the gateway serves.
    async fn active_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// A value that changes whenever any API key is inserted or updated (the gateway polls it
    /// to bound staleness when it cannot be told of a change).
    async fn api_keys_stamp(&self) -> Result<String, StoreError>;

    async fn insert_admin_token(&self, token: &AdminToken) -> Result<(), StoreError>;
    async fn admin_token_by_digest(&self, digest: &str) -> Result<Option<AdminToken>, StoreError>;
    async fn has_bootstrap_token(&self) -> Result<bool, StoreError>;

    async fn idempotent_answer(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotentAnswer>, StoreError>;
    /// Keeps the first answer; `false` when one is already kept for `(principal, key)`.
    async fn keep_idempotent_answer(
        &self,
        principal: &str,
        key: &str,
        answer: &IdempotentAnswer,
    ) -> Result<bool, StoreError>;

    /// Appends `events` to the evidence chain in one transaction, serialized against every
    /// other append (on PostgreSQL across processes), each sealed by [`crate::chain::seal`]
    /// onto the entry before it. Returns the rows written.
    async fn append_audit(&self, events: &[serde_json::Value])
        -> Result<Vec<AuditRow>, StoreError>;
    /// Rows with `seq > after`, ascending, at most `limit`.
    async fn audit_rows(&self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError>;
    async fn audit_tail(&self) -> Result<Option<AuditRow>, StoreError>;
    async fn insert_checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError>;
    /// Every checkpoint, ascending by `seq`.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError>;
}

/// Opens the store a URL names — `sqlite://PATH` (created if missing) or
/// `postgres://…` — and runs its migrations.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(postgres::PgStore::connect(url).await?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(std::sync::Arc::new(
            sqlite::SqliteStore::open(std::path::Path::new(path)).await?,
        ))
    } else {
        Err(StoreError::Database(
            "the database URL must start with sqlite:// or postgres://".into(),
        ))
    }
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn db_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict("row"),
        _ => StoreError::Database(e.to_string()),
    }
}

fn json_list<T: Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        why: e.to_string(),
    })
}
