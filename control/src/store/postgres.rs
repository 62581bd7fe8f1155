//! The shared store: PostgreSQL, for several gateways. Audit appends take a transaction-scoped
//! advisory lock, so the chain stays one chain however many processes append to it.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Pool, Postgres};

use super::{sql::impl_store, Backend, StoreError};

/// Connections one gateway keeps to PostgreSQL.
const MAX_CONNECTIONS: u32 = 8;

/// The control plane's store in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool<Postgres>,
}

impl PgStore {
    /// Connects to `url` and runs the migrations (concurrent starts serialize on sqlx's own
    /// migration lock).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        Ok(Self { pool })
    }

    /// The pool, for tests that tamper with rows the way an attacker with database access would.
    pub fn pool(&self) -> &Pool<Postgres> {
        &self.pool
    }
}

// 0x706f7374 is "post": the one lock key of the audit chain.
impl_store!(
    PgStore,
    Postgres,
    Backend::Postgres,
    "SELECT pg_advisory_xact_lock(1886352244)"
);
