//! The embedded store: one SQLite file, created on first open, in WAL mode.
//!
//! One connection: SQLite serializes writers anyway, and with a single connection an audit
//! append (read the tail, then insert) can never lose a race to another writer of this
//! process. The store is meant for one gateway process; several gateways share PostgreSQL.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite};

use super::{sql::impl_store, Backend, StoreError};

/// The control plane's store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: Pool<Sqlite>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and runs the migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migrate(e.to_string()))?;
        Ok(Self { pool })
    }

    /// The pool, for tests that tamper with rows the way an attacker with file access would.
    pub fn pool(&self) -> &Pool<Sqlite> {
        &self.pool
    }
}

// A single connection: the append transaction needs no lock of its own.
impl_store!(SqliteStore, Sqlite, Backend::Sqlite, "SELECT 1");
