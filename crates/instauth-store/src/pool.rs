//! Connections and migrations: the pools of both backends, statement counting, and the schema
//! migrations run at start.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::QueueMode;
use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::prelude::*;
use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::{Backend, Inner, Result, SqliteConn, Store, StoreError};

const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");
const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// Key of the PostgreSQL advisory lock held while migrating (arbitrary, fixed: "instauth").
const MIGRATION_LOCK: i64 = 0x696e_7374_6175_7468;

/// How long a caller waits for a pooled connection (or a new one) before the store reports
/// [`StoreError::Unavailable`] and the API answers 503.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite settings applied to every connection. WAL lets readers run beside the one writer;
/// busy_timeout makes a second writer wait instead of failing at once. It comes first: setting
/// the journal mode reads the database, and a connection opened while another one writes must
/// wait there too, or the pool fails to grow with "database is locked".
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;";

/// Which database to use.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseConfig {
    /// The embedded SQLite database file.
    Sqlite {
        /// Path of the database file; its directory is created if missing.
        path: PathBuf,
    },
    /// A PostgreSQL server (`postgres://user@host:port/db`, or `host=... dbname=...`).
    Postgres {
        /// Connection URL or key=value connection string.
        url: String,
    },
}

/// Never prints the URL: it may hold a password.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl DatabaseConfig {
    /// A short description for logs: backend, host, port and database, never a user name,
    /// password or query parameter (which may carry `password=`).
    pub fn describe(&self) -> String {
        match self {
            DatabaseConfig::Sqlite { path } => format!("sqlite {}", path.display()),
            DatabaseConfig::Postgres { url } => format!("postgres {}", describe_postgres(url)),
        }
    }
}

/// `host:port/db` of a PostgreSQL URL or key=value connection string.
fn describe_postgres(url: &str) -> String {
    if let Some((_, rest)) = url.split_once("://") {
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // The user info ends at the authority's last '@' (a password may itself hold '@').
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        return format!("{host}{path}");
    }
    // key=value form: keep only where it points.
    let mut host = "";
    let mut port = "";
    let mut db = "";
    for pair in url.split_whitespace() {
        match pair.split_once('=') {
            Some(("host", v)) => host = v,
            Some(("port", v)) => port = v,
            Some(("dbname", v)) => db = v,
            _ => {}
        }
    }
    let port = if port.is_empty() {
        String::new()
    } else {
        format!(":{port}")
    };
    format!("{host}{port}/{db}")
}

/// Counts statements (not connection set-up) on every pooled connection.
fn counter_instrumentation(counter: Arc<AtomicU64>) -> impl Instrumentation {
    move |event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { .. } = event {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn postgres_pool(url: &str, counter: Arc<AtomicU64>) -> Result<Pool<AsyncPgConnection>> {
    let mut mc = ManagerConfig::<AsyncPgConnection>::default();
    // `Fast` recycling: the default (`Verified`) runs `SELECT 1` on every checkout, an extra
    // round trip per request.
    mc.recycling_method = RecyclingMethod::Fast;
    mc.custom_setup = Box::new(move |url| {
        let counter = counter.clone();
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn =
                tokio::time::timeout(CONNECT_TIMEOUT, AsyncPgConnection::establish(&url))
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
    let manager = AsyncDieselConnectionManager::new_with_config(url.to_owned(), mc);
    Pool::builder(manager)
        .max_size(16)
        .queue_mode(QueueMode::Lifo)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

fn sqlite_pool(path: &std::path::Path, counter: Arc<AtomicU64>) -> Result<Pool<SqliteConn>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
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
    let manager =
        AsyncDieselConnectionManager::new_with_config(path.to_string_lossy().into_owned(), mc);
    Pool::builder(manager)
        .max_size(8)
        .queue_mode(QueueMode::Lifo)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

impl Store {
    /// Connects (creating the SQLite file and its directory if needed) without migrating.
    pub async fn connect(config: DatabaseConfig) -> Result<Store> {
        let queries = Arc::new(AtomicU64::new(0));
        let backend = match &config {
            DatabaseConfig::Postgres { url } => {
                Backend::Postgres(postgres_pool(url, queries.clone())?)
            }
            DatabaseConfig::Sqlite { path } => Backend::Sqlite(sqlite_pool(path, queries.clone())?),
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                config,
                queries,
                liveness: Arc::new(crate::liveness::Liveness::new(
                    crate::liveness::DEFAULT_CAPACITY,
                )),
                heartbeats: Default::default(),
                lookups: Default::default(),
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

    /// True when the store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.backend, Backend::Postgres(_))
    }

    /// Statements sent to the database since the store was created (all connections).
    pub fn queries_total(&self) -> u64 {
        self.inner.queries.load(Ordering::Relaxed)
    }

    /// Applies pending migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        let config = self.inner.config.clone();
        // diesel's migration harness is synchronous: run it on a blocking thread. For PostgreSQL
        // the async connection is wrapped (no libpq); it drives IO on the current runtime.
        tokio::task::spawn_blocking(move || migrate_blocking(config))
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?
    }

    /// Answers when the database does (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        with_conn!(self, |conn| {
            conn.batch_execute("SELECT 1").await?;
            Ok(())
        })
    }
}

fn migrate_blocking(config: DatabaseConfig) -> Result<Vec<String>> {
    let fail = |e: &dyn std::fmt::Display| StoreError::Migration(e.to_string());
    let versions = match config {
        DatabaseConfig::Postgres { url } => {
            let mut conn = <diesel_async::async_connection_wrapper::AsyncConnectionWrapper<
                AsyncPgConnection,
            > as diesel::Connection>::establish(&url)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            // Replicas that start together would race to create diesel's bookkeeping table and
            // apply the same migration twice; a session-level advisory lock lets one migrate
            // while the others wait, then find nothing pending. The lock ends with the session.
            diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                .execute(&mut conn)?;
            let applied = conn
                .run_pending_migrations(PG_MIGRATIONS)
                .map_err(|e| fail(&e))
                .map(|v| v.iter().map(|v| v.to_string()).collect());
            diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
                .execute(&mut conn)?;
            applied?
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_never_shows_credentials() {
        let pg = |url: &str| DatabaseConfig::Postgres { url: url.into() }.describe();
        assert_eq!(pg("postgres://u:p@ss@db:5432/app"), "postgres db:5432/app");
        assert_eq!(
            pg("postgres://db/app?user=u&password=secret"),
            "postgres db/app"
        );
        assert_eq!(pg("postgresql://u@db"), "postgres db");
        assert_eq!(
            pg("host=db port=5433 user=u password=secret dbname=app"),
            "postgres db:5433/app"
        );
        let d = format!(
            "{:?}",
            DatabaseConfig::Postgres {
                url: "postgres://u:secret@h/d".into()
            }
        );
        assert!(!d.contains("secret"), "{d}");
    }

    /// The pool hands out the connection returned last: under load the statements keep landing
    /// on the same warm PostgreSQL backend instead of going round every idle one (measured:
    /// about a sixth less PostgreSQL CPU per exchange, docs/BENCHMARKS.md).
    #[tokio::test]
    async fn the_pool_reuses_the_connection_returned_last() {
        async fn pid(conn: &mut AsyncPgConnection) -> i32 {
            let query = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "pg_backend_pid()",
            ));
            diesel_async::RunQueryDsl::get_result(query, conn)
                .await
                .unwrap()
        }
        let db = crate::testing::TestDb::postgres().await;
        let store = db.store().await;
        let Backend::Postgres(pool) = &store.inner.backend else {
            unreachable!("a PostgreSQL test database")
        };
        // Three connections open at once, returned in this order.
        let (mut a, mut b, mut c) = (
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
            pool.get().await.unwrap(),
        );
        let pids = [pid(&mut a).await, pid(&mut b).await, pid(&mut c).await];
        drop(a);
        drop(b);
        drop(c);
        for _ in 0..5 {
            let mut conn = pool.get().await.unwrap();
            assert_eq!(pid(&mut conn).await, pids[2], "returned last: {pids:?}");
        }
    }

    // A new pooled connection must wait for a writer like every statement does. Here another
    // connection holds the file exclusively while the pool grows; it lets go while the new
    // connection waits, which takes far less than the busy timeout.
    #[tokio::test]
    async fn a_new_sqlite_connection_waits_for_a_writer() {
        use diesel::connection::SimpleConnection;
        let db = crate::testing::TestDb::sqlite();
        let config = db.store().await.config().clone();
        // A store with no connection yet, so the ping below opens one.
        let store = Store::connect(config.clone()).await.unwrap();
        let DatabaseConfig::Sqlite { path } = config else {
            unreachable!("a SQLite test database")
        };
        let (held, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let holder = std::thread::spawn(move || {
            let mut conn = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
            conn.batch_execute(
                "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; \
                 DELETE FROM audit_log; COMMIT;",
            )
            .unwrap();
            held.0.send(()).unwrap();
            release.1.recv().unwrap();
            // Dropping the connection ends its exclusive lock.
        });
        held.1.recv().unwrap();
        let opening = tokio::spawn({
            let store = store.clone();
            async move { store.ping().await }
        });
        // Let the new connection reach the lock before it is released.
        tokio::time::sleep(Duration::from_millis(300)).await;
        release.0.send(()).unwrap();
        holder.join().unwrap();
        opening.await.unwrap().expect("the new connection waited");
    }

    /// Reverts migrations, newest first, through `version` (their `down.sql`, as an operator
    /// rolling back would); returns the versions reverted.
    fn revert_through_blocking(config: DatabaseConfig, version: &str) -> Vec<String> {
        fn revert<C: MigrationHarness<B>, B: diesel::backend::Backend>(
            conn: &mut C,
            migrations: fn() -> EmbeddedMigrations,
            version: &str,
        ) -> Vec<String> {
            let mut reverted = Vec::new();
            while reverted.last().map(String::as_str) != Some(version) {
                reverted.push(
                    conn.revert_last_migration(migrations())
                        .unwrap()
                        .to_string(),
                );
                assert!(reverted.len() < 50, "no migration {version}: {reverted:?}");
            }
            reverted
        }
        match config {
            DatabaseConfig::Postgres { url } => revert(
                &mut <diesel_async::async_connection_wrapper::AsyncConnectionWrapper<
                    AsyncPgConnection,
                > as diesel::Connection>::establish(&url)
                .unwrap(),
                || PG_MIGRATIONS,
                version,
            ),
            DatabaseConfig::Sqlite { path } => revert(
                &mut SqliteConnection::establish(&path.to_string_lossy()).unwrap(),
                || SQLITE_MIGRATIONS,
                version,
            ),
        }
    }

    /// The agents' heartbeat columns as a rollback of their move left them.
    fn old_columns_blocking(config: DatabaseConfig) -> Vec<OldColumns> {
        let old = diesel::sql_query(
            "SELECT name, lifecycle_state, first_connected_at FROM workspace_agents ORDER BY name",
        );
        match config {
            DatabaseConfig::Postgres { url } => old
                .load(
                    &mut <diesel_async::async_connection_wrapper::AsyncConnectionWrapper<
                        AsyncPgConnection,
                    > as diesel::Connection>::establish(&url)
                    .unwrap(),
                )
                .unwrap(),
            DatabaseConfig::Sqlite { path } => old
                .load(&mut SqliteConnection::establish(&path.to_string_lossy()).unwrap())
                .unwrap(),
        }
    }

    #[derive(QueryableByName, Debug, PartialEq)]
    struct OldColumns {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        lifecycle_state: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamp>)]
        first_connected_at: Option<chrono::NaiveDateTime>,
    }

    // The heartbeat state moved from the agent rows to `agent_heartbeats`: rolling that
    // migration back and applying it again keeps every agent's state on both backends.
    crate::backend_test!(heartbeat_state_survives_its_migration, |store| async move {
        use instauth_types::{
            AgentAuth, AgentSpec, BuildRequest, LifecycleState, ResourceSpec, Wire,
        };
        let agent = |name: &str| AgentSpec {
            name: name.into(),
            auth: Wire::Known(AgentAuth::Token),
            instance_id: None,
            parent: None,
            require_agent_key: false,
        };
        let build = BuildRequest {
            resources: vec![ResourceSpec {
                name: "vm".into(),
                resource_type: "aws_instance".into(),
                agents: vec![agent("dev"), agent("main")],
                expect: None,
            }],
        };
        let created = store
            .create_build(&crate::validate_build("ws", build).unwrap())
            .await
            .unwrap();
        let main = created.agents.iter().find(|a| a.name == "main").unwrap().id;
        store
            .record_heartbeat(main, LifecycleState::Ready)
            .await
            .unwrap();
        let before = store.get_workspace("ws").await.unwrap().unwrap();
        let first = before.agents[1].first_connected_at;
        assert!(first.is_some());

        let config = store.config().clone();
        let (reverted, old) = tokio::task::spawn_blocking(move || {
            let reverted = revert_through_blocking(config.clone(), "20261128000001");
            (reverted, old_columns_blocking(config))
        })
        .await
        .unwrap();
        assert_eq!(reverted, ["20261129000001", "20261128000001"]);
        let want = |name: &str, state: &str, first| OldColumns {
            name: name.into(),
            lifecycle_state: state.into(),
            first_connected_at: first,
        };
        assert_eq!(
            old,
            [want("dev", "created", None), want("main", "ready", first)]
        );

        let applied = store.migrate().await.unwrap();
        assert_eq!(applied, ["20261128000001", "20261129000001"]);
        assert_eq!(store.get_workspace("ws").await.unwrap().unwrap(), before);
    });

    // Resource expectations are copied onto agent rows: applying that migration to a database
    // with expectations already declared copies them, onto the agents of those resources only.
    crate::backend_test!(
        expectations_are_copied_by_their_migration,
        |store| async move {
            use instauth_types::{AgentAuth, AgentSpec, BuildRequest, ResourceSpec, Wire};
            let agent = |name: &str, instance: &str| AgentSpec {
                name: name.into(),
                auth: Wire::Known(AgentAuth::AwsInstanceIdentity),
                instance_id: Some(instance.into()),
                parent: None,
                require_agent_key: false,
            };
            let resource = |name: &str, agents, expect: serde_json::Value| ResourceSpec {
                name: name.into(),
                resource_type: "aws_instance".into(),
                agents,
                expect: serde_json::from_value(expect).unwrap(),
            };
            let build = BuildRequest {
                resources: vec![
                    resource(
                        "vm",
                        vec![agent("main", "i-1"), agent("dev", "i-1")],
                        serde_json::json!({"account_id": "123456789012", "region": "eu-west-1"}),
                    ),
                    resource("other", vec![agent("solo", "i-2")], serde_json::Value::Null),
                ],
            };
            store
                .create_build(&crate::validate_build("ws", build).unwrap())
                .await
                .unwrap();
            let candidates = |store: Store| async move {
                let mut all = store
                    .candidates(AgentAuth::AwsInstanceIdentity, "i-1")
                    .await
                    .unwrap();
                all.extend(
                    store
                        .candidates(AgentAuth::AwsInstanceIdentity, "i-2")
                        .await
                        .unwrap(),
                );
                all
            };
            let before = candidates(store.clone()).await;
            assert_eq!(before.len(), 3);
            let expected = crate::ResourceExpect {
                provider: instauth_types::Provider::Aws,
                account: Some("123456789012".into()),
                location: Some("eu-west-1".into()),
            };
            assert_eq!(before[0].expect(), Some(("vm", expected.clone())));
            assert_eq!(before[1].expect(), Some(("vm", expected)));
            assert_eq!(before[2].expect(), None);

            let config = store.config().clone();
            let reverted = tokio::task::spawn_blocking(move || {
                revert_through_blocking(config, "20261129000001")
            })
            .await
            .unwrap();
            assert_eq!(reverted, ["20261129000001"]);
            assert_eq!(store.migrate().await.unwrap(), ["20261129000001"]);
            // A fresh store: the first one's statements were prepared against the old columns.
            let again = Store::connect(store.config().clone()).await.unwrap();
            assert_eq!(candidates(again).await, before);
        }
    );
}
