//! instauth persistence: one [`Store`] API over PostgreSQL (production, shared by replicas) and an
//! embedded SQLite file (the default).
//!
//! Both backends share one diesel schema ([`schema`]) and one set of query bodies: the
//! `with_conn!` macro expands each body once per backend, so a query cannot drift between them.
//! Every statement sent to the database is counted ([`Store::queries_total`]), which is how the
//! tests prove the exchange's candidate lookup is a single statement.
//!
//! The code is split by concern: [`pool`] (connections, migrations), `builds`, `agents`
//! (candidates, sessions, heartbeats), `workspaces`, `audit`, `keys` and `aia` (fetched
//! certificates, stored as opaque bytes); rows are read into the
//! structs of [`model`], ids and vocabulary values are mapped to and from their text columns in
//! one place (`text`), and builds are checked by [`validate`] before the store will take them.
//!
//! Architecture invariant: this crate knows nothing of HTTP, tokens or cloud proofs. It stores
//! hashes handed to it and never sees a plaintext token.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use chrono::{NaiveDateTime, SubsecRound, Utc};
use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::AsyncPgConnection;

/// A pooled connection, or [`StoreError::Unavailable`] after [`pool::CONNECT_TIMEOUT`].
macro_rules! checkout {
    ($pool:expr) => {
        match tokio::time::timeout($crate::pool::CONNECT_TIMEOUT, $pool.get()).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err($crate::StoreError::Unavailable(
                    "timed out waiting for a database connection".into(),
                ))
            }
        }
    };
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever backend the store uses.
/// The body is expanded once per backend, so each query is written once and type-checked twice.
macro_rules! with_conn {
    ($self:ident, |$conn:ident| $body:expr) => {
        match &$self.inner.backend {
            $crate::Backend::Postgres(pool) => {
                let mut pooled = checkout!(pool);
                let $conn: &mut diesel_async::AsyncPgConnection = &mut pooled;
                $body
            }
            $crate::Backend::Sqlite(pool) => {
                let mut pooled = checkout!(pool);
                let $conn: &mut $crate::SqliteConn = &mut pooled;
                $body
            }
        }
    };
}

/// Implements `QueryId` for statements whose text never changes, so each is prepared once per
/// connection and cached (a `sql_query` would be parsed and planned again every time).
macro_rules! static_query_id {
    ($($t:ident),+) => {$(
        impl diesel::query_builder::QueryId for $t<'_> {
            type QueryId = $t<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }
    )+};
}

mod agents;
mod aia;
mod audit;
mod batch;
mod builds;
pub mod error;
pub mod files;
mod heartbeats;
mod insert;
mod keys;
pub mod liveness;
pub mod model;
pub mod pool;
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;
pub mod validate;
mod workspaces;

pub use aia::{MAX_AIA_DER_LEN, MAX_AIA_URL_LEN};
pub use error::StoreError;
pub use instauth_types::{AgentAuth, LifecycleState, Provider};
pub use keys::SessionKey;
pub use liveness::{CacheStats, Live};
pub use model::*;
pub use pool::DatabaseConfig;
pub use validate::{validate_build, ValidAgent, ValidBuild};

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

enum Backend {
    Postgres(Pool<AsyncPgConnection>),
    Sqlite(Pool<SqliteConn>),
}

struct Inner {
    backend: Backend,
    config: DatabaseConfig,
    queries: Arc<AtomicU64>,
    liveness: Arc<liveness::Liveness>,
    heartbeats: batch::Batcher<heartbeats::Heartbeats>,
    lookups: batch::Batcher<agents::Lookups>,
}

/// The store: a pooled connection to one database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.inner.config.describe())
            .finish()
    }
}

/// The current time as stored: UTC, truncated to microseconds (PostgreSQL's precision), so a
/// value reads back equal on both backends.
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

/// The default SQLite path: `<data-dir>/instauth.db`.
pub fn sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("instauth.db")
}
