//! instauth persistence: one [`Store`] API over PostgreSQL (production, shared by replicas) and an
//! embedded SQLite file (the default).
//!
//! Both backends share one diesel schema ([`schema`]) and one set of query bodies: the
//! `with_conn!` macro expands each body once per backend, so a query cannot drift between them.
//! Every statement sent to the database is counted ([`Store::queries_total`]), which is how the
//! tests prove the exchange's candidate lookup is a single statement.
//!
//! Architecture invariant: this crate knows nothing of HTTP, tokens or cloud proofs. It stores
//! hashes handed to it and never sees a plaintext token.

pub mod error;
pub mod model;
pub mod schema;
#[cfg(feature = "testing")]
pub mod testing;
pub mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, SubsecRound, Utc};
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use uuid::Uuid;

pub use error::StoreError;
pub use model::*;
use schema::{
    agent_sessions, audit_log, workspace_agents, workspace_builds, workspace_resources, workspaces,
};

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// How long a caller waits for a pooled connection (or a new one) before the store reports
/// [`StoreError::Unavailable`] and the API answers 503.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite settings applied to every connection. WAL lets readers run beside the one writer;
/// busy_timeout makes a second writer wait instead of failing at once.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;";

/// Which database to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// The embedded SQLite database file.
    Sqlite {
        /// Path of the database file; its directory is created if missing.
        path: PathBuf,
    },
    /// A PostgreSQL server (`postgres://user@host:port/db`).
    Postgres {
        /// Connection URL.
        url: String,
    },
}

impl DatabaseConfig {
    /// A short description without credentials, for logs.
    pub fn describe(&self) -> String {
        match self {
            DatabaseConfig::Sqlite { path } => format!("sqlite {}", path.display()),
            DatabaseConfig::Postgres { url } => {
                // Drop any user:password@ part.
                let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
                let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
                format!("postgres {host}")
            }
        }
    }
}

type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

enum Backend {
    Postgres(Pool<AsyncPgConnection>),
    Sqlite(Pool<SqliteConn>),
}

struct Inner {
    backend: Backend,
    config: DatabaseConfig,
    queries: Arc<AtomicU64>,
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

/// Counts statements (not connection set-up) on every pooled connection.
fn counter_instrumentation(counter: Arc<AtomicU64>) -> impl Instrumentation {
    move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { .. } = event {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A pooled connection, or [`StoreError::Unavailable`] after [`CONNECT_TIMEOUT`].
macro_rules! checkout {
    ($pool:expr) => {
        match tokio::time::timeout(CONNECT_TIMEOUT, $pool.get()).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(StoreError::Unavailable(
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
            Backend::Postgres(pool) => {
                let mut pooled = checkout!(pool);
                let $conn: &mut AsyncPgConnection = &mut pooled;
                $body
            }
            Backend::Sqlite(pool) => {
                let mut pooled = checkout!(pool);
                let $conn: &mut SqliteConn = &mut pooled;
                $body
            }
        }
    };
}

/// The candidate query (DESIGN.md step 3): live root agents with this instance ID and auth
/// method, in the latest build of a live workspace. Driven by the partial index
/// `workspace_agents_instance`; the latest-build test is one primary-key probe of `workspaces`.
macro_rules! candidates_query {
    ($auth:expr, $instance_id:expr) => {
        workspace_agents::table
            .inner_join(
                workspaces::table.on(workspaces::id
                    .eq(workspace_agents::workspace_id)
                    .and(workspaces::latest_build_id.eq(workspace_agents::build_id.nullable()))),
            )
            .inner_join(
                workspace_resources::table
                    .on(workspace_resources::id.eq(workspace_agents::resource_id)),
            )
            .filter(workspace_agents::auth_instance_id.eq($instance_id))
            .filter(workspace_agents::parent_id.is_null())
            .filter(workspace_agents::deleted_at.is_null())
            .filter(workspace_agents::auth.eq($auth))
            .filter(workspaces::deleted_at.is_null())
            .select((
                workspace_agents::id,
                workspace_agents::name,
                workspace_agents::auth,
                workspace_resources::name,
                workspaces::id,
                workspaces::name,
                workspace_agents::session_generation,
            ))
    };
}

/// Live agents joined with what the agent API reports about them; the caller adds the filter
/// that identifies the agent (session or static token).
macro_rules! agent_context_query {
    ($from:expr) => {
        $from
            .inner_join(
                workspaces::table.on(workspaces::id
                    .eq(workspace_agents::workspace_id)
                    .and(workspaces::latest_build_id.eq(workspace_agents::build_id.nullable()))),
            )
            .inner_join(
                workspace_builds::table.on(workspace_builds::id.eq(workspace_agents::build_id)),
            )
            .inner_join(
                workspace_resources::table
                    .on(workspace_resources::id.eq(workspace_agents::resource_id)),
            )
            .filter(workspace_agents::deleted_at.is_null())
            .filter(workspaces::deleted_at.is_null())
            .select((
                workspace_agents::id,
                workspace_agents::name,
                workspaces::id,
                workspaces::name,
                workspace_builds::build_number,
                workspace_resources::name,
                workspace_resources::resource_type,
            ))
    };
}

diesel::define_sql_function! {
    /// SQL `COALESCE` for nullable timestamps.
    fn coalesce(x: diesel::sql_types::Nullable<diesel::sql_types::Timestamp>, y: diesel::sql_types::Nullable<diesel::sql_types::Timestamp>) -> diesel::sql_types::Nullable<diesel::sql_types::Timestamp>;
}

type CandidateRow = (String, String, String, String, String, String, i32);
type ContextRow = (String, String, String, String, i32, String, String);

fn parse_id(column: &'static str, value: &str) -> Result<Uuid> {
    Uuid::parse_str(value).map_err(|_| StoreError::Corrupt {
        column,
        value: value.to_owned(),
    })
}

fn parse_auth(value: &str) -> Result<AgentAuth> {
    AgentAuth::parse(value).ok_or_else(|| StoreError::Corrupt {
        column: "workspace_agents.auth",
        value: value.to_owned(),
    })
}

fn candidate(row: CandidateRow) -> Result<Candidate> {
    let (id, name, auth, resource, ws_id, ws_name, session_generation) = row;
    Ok(Candidate {
        agent_id: parse_id("workspace_agents.id", &id)?,
        agent_name: name,
        auth: parse_auth(&auth)?,
        resource_name: resource,
        workspace_id: parse_id("workspaces.id", &ws_id)?,
        workspace_name: ws_name,
        session_generation,
    })
}

fn context(row: ContextRow) -> Result<AgentContext> {
    let (id, name, ws_id, ws_name, build_number, resource_name, resource_type) = row;
    Ok(AgentContext {
        agent_id: parse_id("workspace_agents.id", &id)?,
        agent_name: name,
        workspace_id: parse_id("workspaces.id", &ws_id)?,
        workspace_name: ws_name,
        build_number,
        resource_name,
        resource_type,
    })
}

/// The current time as stored: UTC, truncated to microseconds (PostgreSQL's precision), so a
/// value reads back equal on both backends.
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

#[derive(Insertable)]
#[diesel(table_name = workspace_agents, treat_none_as_default_value = false)]
struct AgentInsert {
    id: String,
    resource_id: String,
    build_id: String,
    workspace_id: String,
    parent_id: Option<String>,
    name: String,
    auth: String,
    auth_instance_id: Option<String>,
    auth_token_hash: Option<Vec<u8>>,
    lifecycle_state: String,
    created_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = workspace_resources, treat_none_as_default_value = false)]
struct ResourceInsert {
    id: String,
    build_id: String,
    name: String,
    resource_type: String,
    created_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = audit_log, treat_none_as_default_value = false)]
struct AuditInsert {
    time: NaiveDateTime,
    provider: String,
    instance_id: String,
    agent_name: String,
    outcome: String,
    agent_id: Option<String>,
    remote_addr: String,
}

/// Rows per multi-row INSERT: well under PostgreSQL's 65535 and SQLite's 32766 bind limits.
const INSERT_CHUNK: usize = 1000;

type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Multi-row inserts. PostgreSQL takes multi-row INSERTs through the async connection; diesel's
/// SQLite multi-row INSERT exists only on the synchronous connection, so the SQLite side runs it on
/// the wrapper's blocking thread. Either way a chunk is one statement.
trait InsertMany {
    fn insert_resources(&mut self, rows: Vec<ResourceInsert>) -> BoxFut<'_, QueryResult<()>>;
    fn insert_agents(&mut self, rows: Vec<AgentInsert>) -> BoxFut<'_, QueryResult<()>>;
    fn insert_audit(&mut self, rows: Vec<AuditInsert>) -> BoxFut<'_, QueryResult<()>>;
}

macro_rules! pg_insert_many {
    ($conn:expr, $table:expr, $rows:expr) => {
        Box::pin(async move {
            for chunk in $rows.chunks(INSERT_CHUNK) {
                diesel::insert_into($table)
                    .values(chunk)
                    .execute($conn)
                    .await?;
            }
            Ok(())
        })
    };
}

macro_rules! sqlite_insert_many {
    ($conn:expr, $table:expr, $rows:expr) => {
        $conn.spawn_blocking(move |c| {
            for chunk in $rows.chunks(INSERT_CHUNK) {
                diesel::RunQueryDsl::execute(diesel::insert_into($table).values(chunk), c)?;
            }
            Ok(())
        })
    };
}

impl InsertMany for AsyncPgConnection {
    fn insert_resources(&mut self, rows: Vec<ResourceInsert>) -> BoxFut<'_, QueryResult<()>> {
        pg_insert_many!(self, workspace_resources::table, rows)
    }
    fn insert_agents(&mut self, rows: Vec<AgentInsert>) -> BoxFut<'_, QueryResult<()>> {
        pg_insert_many!(self, workspace_agents::table, rows)
    }
    fn insert_audit(&mut self, rows: Vec<AuditInsert>) -> BoxFut<'_, QueryResult<()>> {
        pg_insert_many!(self, audit_log::table, rows)
    }
}

impl InsertMany for SqliteConn {
    fn insert_resources(&mut self, rows: Vec<ResourceInsert>) -> BoxFut<'_, QueryResult<()>> {
        sqlite_insert_many!(self, workspace_resources::table, rows)
    }
    fn insert_agents(&mut self, rows: Vec<AgentInsert>) -> BoxFut<'_, QueryResult<()>> {
        sqlite_insert_many!(self, workspace_agents::table, rows)
    }
    fn insert_audit(&mut self, rows: Vec<AuditInsert>) -> BoxFut<'_, QueryResult<()>> {
        sqlite_insert_many!(self, audit_log::table, rows)
    }
}

/// The rows of a build to insert, parents before their sub-agents.
struct BuildRows {
    resources: Vec<ResourceInsert>,
    agents: Vec<AgentInsert>,
    created: Vec<CreatedAgent>,
}

fn build_rows(
    build: &NewBuild,
    build_id: &str,
    workspace_id: &str,
    at: NaiveDateTime,
) -> Result<BuildRows> {
    let mut resources = Vec::new();
    let mut ids: HashMap<&str, String> = HashMap::new();
    let mut pending = Vec::new();
    let mut created = Vec::new();
    for r in &build.resources {
        let resource_id = Uuid::new_v4().to_string();
        for a in &r.agents {
            let id = Uuid::new_v4();
            ids.insert(a.name.as_str(), id.to_string());
            created.push(CreatedAgent {
                id,
                name: a.name.clone(),
                auth: AgentAuth::parse(&a.auth).unwrap_or(AgentAuth::Token),
            });
            pending.push((resource_id.clone(), a));
        }
        resources.push(ResourceInsert {
            id: resource_id,
            build_id: build_id.to_owned(),
            name: r.name.clone(),
            resource_type: r.resource_type.clone(),
            created_at: at,
        });
    }
    // Topological order so that a chunked insert never references a parent not yet inserted.
    // Validation has already rejected unknown parents and cycles.
    let mut agents = Vec::with_capacity(pending.len());
    let mut inserted: std::collections::HashSet<&str> = Default::default();
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = Vec::new();
        for (resource_id, a) in pending {
            let ready = a.parent.as_deref().is_none_or(|p| inserted.contains(p));
            if !ready {
                rest.push((resource_id, a));
                continue;
            }
            inserted.insert(a.name.as_str());
            let parent_id = match a.parent.as_deref() {
                Some(p) => Some(ids.get(p).cloned().ok_or_else(|| {
                    StoreError::Validation(vec![FieldError {
                        field: "parent".into(),
                        detail: format!("unknown parent agent {p:?}"),
                    }])
                })?),
                None => None,
            };
            agents.push(AgentInsert {
                id: ids.get(a.name.as_str()).cloned().unwrap_or_default(),
                resource_id,
                build_id: build_id.to_owned(),
                workspace_id: workspace_id.to_owned(),
                parent_id,
                name: a.name.clone(),
                auth: a.auth.clone(),
                auth_instance_id: a.instance_id.clone().filter(|s| !s.is_empty()),
                auth_token_hash: a.token_hash.clone(),
                lifecycle_state: LifecycleState::Created.as_str().to_owned(),
                created_at: at,
            });
        }
        if rest.len() == before {
            return Err(StoreError::Validation(vec![FieldError {
                field: "parent".into(),
                detail: "parent chain forms a cycle".into(),
            }]));
        }
        pending = rest;
    }
    Ok(BuildRows {
        resources,
        agents,
        created,
    })
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Database(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _
        ))
    )
}

impl Store {
    /// Connects (creating the SQLite file and its directory if needed) without migrating.
    pub async fn connect(config: DatabaseConfig) -> Result<Store> {
        let queries = Arc::new(AtomicU64::new(0));
        let backend = match &config {
            DatabaseConfig::Postgres { url } => {
                let counter = queries.clone();
                let mut mc = ManagerConfig::<AsyncPgConnection>::default();
                // `Fast` recycling: the default (`Verified`) runs `SELECT 1` on every checkout,
                // an extra round trip per request.
                mc.recycling_method = RecyclingMethod::Fast;
                mc.custom_setup = Box::new(move |url| {
                    let counter = counter.clone();
                    let url = url.to_owned();
                    Box::pin(async move {
                        let mut conn = tokio::time::timeout(
                            CONNECT_TIMEOUT,
                            AsyncPgConnection::establish(&url),
                        )
                        .await
                        .map_err(|_| {
                            diesel::ConnectionError::BadConnection(
                                "timed out connecting to PostgreSQL".into(),
                            )
                        })??;
                        conn.set_instrumentation(counter_instrumentation(counter));
                        Ok(conn)
                    })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(url.clone(), mc);
                let pool = Pool::builder(manager)
                    .max_size(16)
                    .build()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Backend::Postgres(pool)
            }
            DatabaseConfig::Sqlite { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                    })?;
                }
                let counter = queries.clone();
                let mut mc = ManagerConfig::<SqliteConn>::default();
                mc.recycling_method = RecyclingMethod::Fast;
                mc.custom_setup = Box::new(move |url| {
                    let counter = counter.clone();
                    let url = url.to_owned();
                    Box::pin(async move {
                        let mut conn = SqliteConn::establish(&url).await?;
                        conn.batch_execute(SQLITE_PRAGMAS)
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        conn.set_instrumentation(counter_instrumentation(counter));
                        Ok(conn)
                    })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(
                    path.to_string_lossy().into_owned(),
                    mc,
                );
                let pool = Pool::builder(manager)
                    .max_size(8)
                    .build()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Backend::Sqlite(pool)
            }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                config,
                queries,
            }),
        })
    }

    /// Another store on the same database with its own pool of at most `max_size` connections
    /// and its own statement counter (the audit writer uses one, so its writes neither wait for
    /// nor are counted with request-path statements).
    pub async fn sibling(&self, max_size: usize) -> Result<Store> {
        let store = Store::connect(self.inner.config.clone()).await?;
        match &store.inner.backend {
            Backend::Postgres(p) => p.resize(max_size),
            Backend::Sqlite(p) => p.resize(max_size),
        }
        Ok(store)
    }

    /// Connects and applies pending migrations.
    pub async fn open(config: DatabaseConfig) -> Result<Store> {
        let store = Store::connect(config).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// The database this store uses.
    pub fn config(&self) -> &DatabaseConfig {
        &self.inner.config
    }

    /// Statements sent to the database since the store was created (all connections).
    pub fn queries_total(&self) -> u64 {
        AtomicU64::load(&self.inner.queries, Ordering::Relaxed)
    }

    /// Applies pending migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        let config = self.inner.config.clone();
        // diesel's migration harness is synchronous: run it on a blocking thread. For PostgreSQL
        // the async connection is wrapped (no libpq); it drives IO on the current runtime.
        let applied = tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let fail = |e: &dyn std::fmt::Display| StoreError::Migration(e.to_string());
            let versions = match config {
                DatabaseConfig::Postgres { url } => {
                    let mut conn = <diesel_async::async_connection_wrapper::AsyncConnectionWrapper<
                        AsyncPgConnection,
                    > as diesel::Connection>::establish(&url)
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    conn.run_pending_migrations(PG_MIGRATIONS)
                        .map_err(|e| fail(&e))?
                        .iter()
                        .map(|v| v.to_string())
                        .collect()
                }
                DatabaseConfig::Sqlite { path } => {
                    let mut conn = SqliteConnection::establish(&path.to_string_lossy())
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    diesel::connection::SimpleConnection::batch_execute(&mut conn, SQLITE_PRAGMAS)?;
                    conn.run_pending_migrations(SQLITE_MIGRATIONS)
                        .map_err(|e| fail(&e))?
                        .iter()
                        .map(|v| v.to_string())
                        .collect()
                }
            };
            Ok(versions)
        })
        .await
        .map_err(|e| StoreError::Migration(e.to_string()))??;
        Ok(applied)
    }

    /// Answers when the database does (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        with_conn!(self, |conn| {
            conn.batch_execute("SELECT 1").await?;
            Ok(())
        })
    }

    /// Creates a build of `workspace` (creating the workspace if needed) in one transaction;
    /// the new build becomes the latest, which retires the previous build's agents and sessions.
    pub async fn create_build(&self, workspace: &str, build: &NewBuild) -> Result<CreatedBuild> {
        validate::validate_build(workspace, build).map_err(StoreError::Validation)?;
        // Two first builds of a new workspace can race on the unique name; the loser retries
        // once and then finds the winner's row.
        match self.create_build_once(workspace, build).await {
            Err(e) if is_unique_violation(&e) => self.create_build_once(workspace, build).await,
            other => other,
        }
    }

    async fn create_build_once(&self, workspace: &str, build: &NewBuild) -> Result<CreatedBuild> {
        let at = now();
        with_conn!(self, |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                {
                    // Write first: it takes the row lock (PostgreSQL) or the write lock (SQLite)
                    // before anything is read, so concurrent builds of one workspace serialize.
                    let existing: Option<String> = diesel::update(
                        workspaces::table
                            .filter(workspaces::name.eq(workspace))
                            .filter(workspaces::deleted_at.is_null()),
                    )
                    .set(workspaces::name.eq(workspace))
                    .returning(workspaces::id)
                    .get_result(conn)
                    .await
                    .optional()?;
                    let workspace_id = match existing {
                        Some(id) => id,
                        None => {
                            let id = Uuid::new_v4().to_string();
                            diesel::insert_into(workspaces::table)
                                .values((
                                    workspaces::id.eq(&id),
                                    workspaces::name.eq(workspace),
                                    workspaces::created_at.eq(at),
                                ))
                                .execute(conn)
                                .await?;
                            id
                        }
                    };
                    let last: Option<i32> = workspace_builds::table
                        .filter(workspace_builds::workspace_id.eq(&workspace_id))
                        .select(diesel::dsl::max(workspace_builds::build_number))
                        .get_result(conn)
                        .await?;
                    let build_number = last.unwrap_or(0) + 1;
                    let build_id = Uuid::new_v4().to_string();
                    diesel::insert_into(workspace_builds::table)
                        .values((
                            workspace_builds::id.eq(&build_id),
                            workspace_builds::workspace_id.eq(&workspace_id),
                            workspace_builds::build_number.eq(build_number),
                            workspace_builds::created_at.eq(at),
                        ))
                        .execute(conn)
                        .await?;
                    let rows = build_rows(build, &build_id, &workspace_id, at)?;
                    conn.insert_resources(rows.resources).await?;
                    conn.insert_agents(rows.agents).await?;
                    diesel::update(workspaces::table.find(&workspace_id))
                        .set(workspaces::latest_build_id.eq(&build_id))
                        .execute(conn)
                        .await?;
                    // Sessions of the previous builds' agents end now.
                    diesel::delete(
                        agent_sessions::table.filter(
                            agent_sessions::agent_id.eq_any(
                                workspace_agents::table
                                    .filter(workspace_agents::workspace_id.eq(&workspace_id))
                                    .filter(workspace_agents::build_id.ne(&build_id))
                                    .select(workspace_agents::id),
                            ),
                        ),
                    )
                    .execute(conn)
                    .await?;
                    Ok(CreatedBuild {
                        workspace_id: parse_id("workspaces.id", &workspace_id)?,
                        build_number,
                        agents: rows.created,
                    })
                }
            })
            .await
        })
    }

    /// The candidates for an exchange, in ONE statement: live root agents with this instance ID
    /// and auth method whose build is the latest build of a live workspace, sorted by name.
    pub async fn candidates(&self, auth: AgentAuth, instance_id: &str) -> Result<Vec<Candidate>> {
        let rows: Vec<CandidateRow> = with_conn!(self, |conn| {
            candidates_query!(auth.as_str(), instance_id)
                .order((workspace_agents::name, workspaces::name))
                .load(conn)
                .await?
        });
        rows.into_iter().map(candidate).collect()
    }

    /// The candidates of one name (may be several: the same instance ID can appear in several
    /// workspaces), in one statement.
    pub async fn candidates_named(
        &self,
        auth: AgentAuth,
        instance_id: &str,
        name: &str,
    ) -> Result<Vec<Candidate>> {
        let rows: Vec<CandidateRow> = with_conn!(self, |conn| {
            candidates_query!(auth.as_str(), instance_id)
                .filter(workspace_agents::name.eq(name))
                .order(workspaces::name)
                .load(conn)
                .await?
        });
        rows.into_iter().map(candidate).collect()
    }

    /// The database's plan for the candidate query (PostgreSQL `EXPLAIN`, SQLite
    /// `EXPLAIN QUERY PLAN`), for operators and for the test that keeps it index-driven.
    pub async fn explain_candidates(&self, auth: AgentAuth, instance_id: &str) -> Result<String> {
        #[derive(QueryableByName)]
        struct PgPlan {
            #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        #[derive(QueryableByName)]
        struct SqlitePlan {
            #[diesel(sql_type = diesel::sql_types::Text)]
            detail: String,
        }
        let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let bind_literals = |sql: String, binds: [&str; 2]| {
            // debug_query renders "<sql> -- binds: [...]"; inline the two text binds.
            let sql = sql
                .split(" -- binds:")
                .next()
                .unwrap_or_default()
                .to_owned();
            sql.replacen("$1", &lit(binds[0]), 1)
                .replacen("$2", &lit(binds[1]), 1)
                .replacen('?', &lit(binds[0]), 1)
                .replacen('?', &lit(binds[1]), 1)
        };
        match &self.inner.backend {
            Backend::Postgres(pool) => {
                let q = candidates_query!(auth.as_str(), instance_id);
                let sql = diesel::debug_query::<diesel::pg::Pg, _>(&q).to_string();
                let sql = bind_literals(sql, [instance_id, auth.as_str()]);
                let mut conn = checkout!(pool);
                let rows: Vec<PgPlan> = diesel::sql_query(format!("EXPLAIN {sql}"))
                    .load(&mut conn)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| r.line)
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
            Backend::Sqlite(pool) => {
                let q = candidates_query!(auth.as_str(), instance_id);
                let sql = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&q).to_string();
                let sql = bind_literals(sql, [instance_id, auth.as_str()]);
                let mut conn = checkout!(pool);
                let rows: Vec<SqlitePlan> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
                    .load(&mut conn)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| r.detail)
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        }
    }

    /// Live workspaces with their latest build's agents, by name.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        self.load_workspaces(None).await
    }

    /// One live workspace by name.
    pub async fn get_workspace(&self, name: &str) -> Result<Option<Workspace>> {
        Ok(self.load_workspaces(Some(name)).await?.into_iter().next())
    }

    async fn load_workspaces(&self, name: Option<&str>) -> Result<Vec<Workspace>> {
        type WsRow = (String, String, String, i32);
        type AgentRow = (
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            Option<NaiveDateTime>,
            Option<NaiveDateTime>,
        );
        type ResourceRow = (String, String, String);
        let (ws, resources, agents): (Vec<WsRow>, Vec<ResourceRow>, Vec<AgentRow>) =
            with_conn!(self, |conn| {
                let mut q = workspaces::table
                    .inner_join(
                        workspace_builds::table
                            .on(workspaces::latest_build_id.eq(workspace_builds::id.nullable())),
                    )
                    .filter(workspaces::deleted_at.is_null())
                    .select((
                        workspaces::id,
                        workspaces::name,
                        workspace_builds::id,
                        workspace_builds::build_number,
                    ))
                    .order(workspaces::name)
                    .into_boxed();
                if let Some(n) = name {
                    q = q.filter(workspaces::name.eq(n));
                }
                let ws: Vec<WsRow> = q.load(conn).await?;
                let build_ids: Vec<&String> = ws.iter().map(|w| &w.2).collect();
                let resources = workspace_resources::table
                    .filter(workspace_resources::build_id.eq_any(&build_ids))
                    .select((
                        workspace_resources::build_id,
                        workspace_resources::name,
                        workspace_resources::resource_type,
                    ))
                    .order(workspace_resources::name)
                    .load(conn)
                    .await?;
                let agents = workspace_agents::table
                    .inner_join(
                        workspace_resources::table
                            .on(workspace_resources::id.eq(workspace_agents::resource_id)),
                    )
                    .filter(workspace_agents::build_id.eq_any(&build_ids))
                    .filter(workspace_agents::deleted_at.is_null())
                    .select((
                        workspace_agents::build_id,
                        workspace_agents::id,
                        workspace_agents::name,
                        workspace_resources::name,
                        workspace_agents::auth,
                        workspace_agents::auth_instance_id,
                        workspace_agents::parent_id,
                        workspace_agents::lifecycle_state,
                        workspace_agents::first_connected_at,
                        workspace_agents::last_connected_at,
                    ))
                    .order(workspace_agents::name)
                    .load(conn)
                    .await?;
                (ws, resources, agents)
            });
        let names: HashMap<&str, &str> = agents
            .iter()
            .map(|a| (a.1.as_str(), a.2.as_str()))
            .collect();
        let mut out = Vec::with_capacity(ws.len());
        for (id, name, build_id, build_number) in &ws {
            let mut w = Workspace {
                id: parse_id("workspaces.id", id)?,
                name: name.clone(),
                build_number: *build_number,
                resources: Vec::new(),
                agents: Vec::new(),
            };
            for (b, rname, rtype) in &resources {
                if b == build_id {
                    w.resources.push(Resource {
                        name: rname.clone(),
                        resource_type: rtype.clone(),
                    });
                }
            }
            for a in agents.iter().filter(|a| &a.0 == build_id) {
                w.agents.push(Agent {
                    id: parse_id("workspace_agents.id", &a.1)?,
                    name: a.2.clone(),
                    resource_name: a.3.clone(),
                    auth: parse_auth(&a.4)?,
                    instance_id: a.5.clone(),
                    parent: a
                        .6
                        .as_deref()
                        .and_then(|p| names.get(p))
                        .map(|s| (*s).to_owned()),
                    lifecycle_state: LifecycleState::parse(&a.7).ok_or_else(|| {
                        StoreError::Corrupt {
                            column: "workspace_agents.lifecycle_state",
                            value: a.7.clone(),
                        }
                    })?,
                    first_connected_at: a.8,
                    last_connected_at: a.9,
                });
            }
            out.push(w);
        }
        Ok(out)
    }

    /// Deletes a workspace: its agents can no longer authenticate and their sessions end.
    /// Returns false if no live workspace has that name.
    pub async fn delete_workspace(&self, name: &str) -> Result<bool> {
        let at = now();
        with_conn!(self, |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                let id: Option<String> = diesel::update(
                    workspaces::table
                        .filter(workspaces::name.eq(name))
                        .filter(workspaces::deleted_at.is_null()),
                )
                .set(workspaces::deleted_at.eq(at))
                .returning(workspaces::id)
                .get_result(conn)
                .await
                .optional()?;
                let Some(id) = id else { return Ok(false) };
                diesel::delete(
                    agent_sessions::table.filter(
                        agent_sessions::agent_id.eq_any(
                            workspace_agents::table
                                .filter(workspace_agents::workspace_id.eq(&id))
                                .select(workspace_agents::id),
                        ),
                    ),
                )
                .execute(conn)
                .await?;
                diesel::update(
                    workspace_agents::table
                        .filter(workspace_agents::workspace_id.eq(&id))
                        .filter(workspace_agents::deleted_at.is_null()),
                )
                .set(workspace_agents::deleted_at.eq(at))
                .execute(conn)
                .await?;
                Ok(true)
            })
            .await
        })
    }

    /// Stores a session by the hash of its token.
    pub async fn create_session(
        &self,
        token_hash: &[u8],
        agent_id: Uuid,
        expires_at: NaiveDateTime,
    ) -> Result<()> {
        let at = now();
        with_conn!(self, |conn| {
            diesel::insert_into(agent_sessions::table)
                .values((
                    agent_sessions::token_hash.eq(token_hash),
                    agent_sessions::agent_id.eq(agent_id.to_string()),
                    agent_sessions::created_at.eq(at),
                    agent_sessions::expires_at.eq(expires_at),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// The agent a live, unexpired session belongs to, if its agent is still in the latest
    /// build of a live workspace. One statement.
    pub async fn session_agent(
        &self,
        token_hash: &[u8],
        at: NaiveDateTime,
    ) -> Result<Option<AgentContext>> {
        let row: Option<ContextRow> = with_conn!(self, |conn| {
            agent_context_query!(agent_sessions::table.inner_join(
                workspace_agents::table.on(workspace_agents::id.eq(agent_sessions::agent_id))
            ))
            .filter(agent_sessions::token_hash.eq(token_hash))
            .filter(agent_sessions::expires_at.gt(at))
            .first(conn)
            .await
            .optional()?
        });
        row.map(context).transpose()
    }

    /// The agent a static agent token (by hash) belongs to, if it is live. One statement.
    pub async fn token_agent(&self, token_hash: &[u8]) -> Result<Option<AgentContext>> {
        let row: Option<ContextRow> = with_conn!(self, |conn| {
            agent_context_query!(workspace_agents::table)
                .filter(workspace_agents::auth_token_hash.eq(token_hash))
                .first(conn)
                .await
                .optional()?
        });
        row.map(context).transpose()
    }

    /// The agent behind a signed session token, if it is live, in the latest build of a live
    /// workspace, and its session generation still matches. One primary-key read.
    pub async fn session_agent_by_id(
        &self,
        agent_id: Uuid,
        session_generation: i32,
    ) -> Result<Option<AgentContext>> {
        let row: Option<ContextRow> = with_conn!(self, |conn| {
            agent_context_query!(workspace_agents::table)
                .filter(workspace_agents::id.eq(agent_id.to_string()))
                .filter(workspace_agents::session_generation.eq(session_generation))
                .first(conn)
                .await
                .optional()?
        });
        row.map(context).transpose()
    }

    /// Revokes every signed session of an agent by bumping its session generation. Returns
    /// false if the agent does not exist.
    pub async fn revoke_agent_sessions(&self, agent_id: Uuid) -> Result<bool> {
        with_conn!(self, |conn| {
            let n = diesel::update(workspace_agents::table.find(agent_id.to_string()))
                .set(
                    workspace_agents::session_generation
                        .eq(workspace_agents::session_generation + 1),
                )
                .execute(conn)
                .await?;
            Ok(n > 0)
        })
    }

    /// The named server secret, created from `generate()` on first use. Every replica gets the
    /// same value: the first insert wins and everyone reads it back.
    pub async fn server_secret(
        &self,
        name: &str,
        generate: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        let fresh = generate();
        let at = now();
        with_conn!(self, |conn| {
            diesel::insert_into(schema::server_keys::table)
                .values((
                    schema::server_keys::name.eq(name),
                    schema::server_keys::secret.eq(&fresh),
                    schema::server_keys::created_at.eq(at),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            Ok(schema::server_keys::table
                .find(name)
                .select(schema::server_keys::secret)
                .first(conn)
                .await?)
        })
    }

    /// Ends one session. Returns whether it existed.
    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<bool> {
        with_conn!(self, |conn| {
            let n = diesel::delete(agent_sessions::table.find(token_hash))
                .execute(conn)
                .await?;
            Ok(n > 0)
        })
    }

    /// Ends every session of an agent; returns how many.
    pub async fn delete_agent_sessions(&self, agent_id: Uuid) -> Result<usize> {
        with_conn!(self, |conn| {
            Ok(diesel::delete(
                agent_sessions::table.filter(agent_sessions::agent_id.eq(agent_id.to_string())),
            )
            .execute(conn)
            .await?)
        })
    }

    /// Removes sessions that expired before `at`; returns how many.
    pub async fn delete_expired_sessions(&self, at: NaiveDateTime) -> Result<usize> {
        with_conn!(self, |conn| {
            Ok(
                diesel::delete(agent_sessions::table.filter(agent_sessions::expires_at.le(at)))
                    .execute(conn)
                    .await?,
            )
        })
    }

    /// Records a heartbeat: lifecycle state, first (once) and last connection time.
    pub async fn record_heartbeat(
        &self,
        agent_id: Uuid,
        state: LifecycleState,
        at: NaiveDateTime,
    ) -> Result<bool> {
        with_conn!(self, |conn| {
            let n = diesel::update(workspace_agents::table.find(agent_id.to_string()))
                .set((
                    workspace_agents::lifecycle_state.eq(state.as_str()),
                    workspace_agents::first_connected_at
                        .eq(coalesce(workspace_agents::first_connected_at, Some(at))),
                    workspace_agents::last_connected_at.eq(at),
                ))
                .execute(conn)
                .await?;
            Ok(n > 0)
        })
    }

    /// Writes audit records in as few statements as the bind limits allow.
    pub async fn insert_audit(&self, records: &[NewAuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let rows: Vec<AuditInsert> = records
            .iter()
            .map(|r| AuditInsert {
                time: r.time,
                provider: r.provider.clone(),
                instance_id: r.instance_id.clone(),
                agent_name: r.agent_name.clone(),
                outcome: r.outcome.clone(),
                agent_id: r.agent_id.map(|id| id.to_string()),
                remote_addr: r.remote_addr.clone(),
            })
            .collect();
        with_conn!(self, |conn| Ok(conn.insert_audit(rows).await?))
    }

    /// The newest `limit` audit records, newest first.
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditRecord>> {
        type Row = (
            i64,
            NaiveDateTime,
            String,
            String,
            String,
            String,
            Option<String>,
            String,
        );
        let rows: Vec<Row> = with_conn!(self, |conn| {
            audit_log::table
                .order(audit_log::id.desc())
                .limit(limit.max(0))
                .select((
                    audit_log::id,
                    audit_log::time,
                    audit_log::provider,
                    audit_log::instance_id,
                    audit_log::agent_name,
                    audit_log::outcome,
                    audit_log::agent_id,
                    audit_log::remote_addr,
                ))
                .load(conn)
                .await?
        });
        rows.into_iter()
            .map(
                |(id, time, provider, instance_id, agent_name, outcome, agent_id, remote_addr)| {
                    Ok(AuditRecord {
                        id,
                        record: NewAuditRecord {
                            time,
                            provider,
                            instance_id,
                            agent_name,
                            outcome,
                            agent_id: agent_id
                                .as_deref()
                                .map(|s| parse_id("audit_log.agent_id", s))
                                .transpose()?,
                            remote_addr,
                        },
                    })
                },
            )
            .collect()
    }
}

/// The default SQLite path: `<data-dir>/instauth.db`.
pub fn sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("instauth.db")
}
