//! Test databases: a temporary SQLite file, or a fresh PostgreSQL database per test so tests
//! run in parallel. PostgreSQL tests fail (never skip) when the server is unreachable.
//!
//! A fresh PostgreSQL database is a copy of a template database that holds the migrated schema
//! (`CREATE DATABASE ... TEMPLATE`), so a test does not replay every migration. The template is
//! named after a hash of `migrations/postgres`, built once under an advisory lock by whichever
//! test process needs it first, and reused by every later run until a migration changes.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sqlite::Sqlite;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use instauth_types::AgentAuth;

use crate::agents::{candidate_columns, candidates_batch_query, candidates_query, live_agents};
use crate::schema::{workspace_agents, workspaces};
use crate::text::text;
use crate::{Backend, DatabaseConfig, Result, Store};

/// Environment variable naming the PostgreSQL server used by tests (a URL to an existing
/// database the tests may `CREATE DATABASE` from).
pub const POSTGRES_URL_ENV: &str = "INSTAUTH_TEST_POSTGRES_URL";
/// Used when [`POSTGRES_URL_ENV`] is unset.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    /// A temporary SQLite file.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// A database that exists for one test and is removed afterwards.
pub struct TestDb {
    /// How to connect to it.
    pub config: DatabaseConfig,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

fn admin_url() -> String {
    std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

/// `url` with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl TestDb {
    /// A new database on `backend`.
    pub async fn new(backend: TestBackend) -> TestDb {
        match backend {
            TestBackend::Sqlite => TestDb::sqlite(),
            TestBackend::Postgres => TestDb::postgres().await,
        }
    }

    /// A temporary SQLite database file.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create temporary directory");
        TestDb {
            config: DatabaseConfig::Sqlite {
                path: crate::sqlite_path(dir.path()),
            },
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A fresh PostgreSQL database with the current schema. Panics with instructions when
    /// PostgreSQL is unreachable: these tests must run for real.
    pub async fn postgres() -> TestDb {
        TestDb::postgres_at(&admin_url()).await
    }

    /// A fresh PostgreSQL database with no schema at all (for migration tests).
    pub async fn postgres_unmigrated() -> TestDb {
        TestDb::create(&admin_url(), false).await
    }

    /// A fresh database with the current schema on the server at `admin` (a URL of an
    /// existing database).
    pub async fn postgres_at(admin: &str) -> TestDb {
        TestDb::create(admin, true).await
    }

    async fn create(admin: &str, migrated: bool) -> TestDb {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let admin = admin.to_owned();
        let name = format!(
            "instauth_test_{}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        );
        let mut conn = match AsyncPgConnection::establish(&admin).await {
            Ok(c) => c,
            Err(e) => panic!(
                "PostgreSQL is unreachable at {admin} ({e}). Start it (on this project's machines: \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) or point \
                 the tests at another server with {POSTGRES_URL_ENV}=postgres://user@host:port/db"
            ),
        };
        let template = if migrated {
            ensure_template(&mut conn, &admin).await
        } else {
            "template0".to_owned()
        };
        // A clone fails while another session is connected to the template (only ever the
        // brief moment another process renames a freshly built one): try again.
        let mut attempt = 0;
        loop {
            match conn
                .batch_execute(&format!(
                    "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
                ))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 50 && e.to_string().contains("being accessed") => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("CREATE DATABASE {name} TEMPLATE {template} on {admin}: {e}"),
            }
        }
        TestDb {
            config: DatabaseConfig::Postgres {
                url: with_database(&admin, &name),
            },
            _dir: None,
            pg: Some((admin, name)),
        }
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Store {
        Store::open(self.config.clone())
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.config.describe()))
    }
}

/// A hash of every file under `migrations/postgres`, so the template follows the migrations.
fn migrations_hash() -> u64 {
    fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, files);
                } else {
                    files.push(p);
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/postgres");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.strip_prefix(&root).unwrap_or(&f).hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

async fn template_exists(conn: &mut AsyncPgConnection, template: &str) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let found: Found =
        diesel::sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
            .bind::<diesel::sql_types::Text, _>(template)
            .get_result(conn)
            .await
            .unwrap_or_else(|e| panic!("looking up the template database: {e}"));
    found.n > 0
}

/// The name of a migrated template database on the server, building it if missing.
async fn ensure_template(conn: &mut AsyncPgConnection, admin: &str) -> String {
    let template = format!("instauth_template_{:016x}", migrations_hash());
    if template_exists(conn, &template).await {
        return template;
    }
    // One process builds it; the others wait on the lock and then find it.
    const LOCK: i64 = 0x696e_7374_746d_706c;
    conn.batch_execute(&format!("SELECT pg_advisory_lock({LOCK})"))
        .await
        .unwrap_or_else(|e| panic!("advisory lock: {e}"));
    if !template_exists(conn, &template).await {
        let building = format!("{template}_{}", std::process::id());
        conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{building}\""))
            .await
            .unwrap_or_else(|e| panic!("DROP DATABASE {building}: {e}"));
        conn.batch_execute(&format!("CREATE DATABASE \"{building}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {building}: {e}"));
        // `migrate` uses a connection of its own and closes it; the pool stays empty, so nothing
        // is connected to the database when it is renamed and cloned.
        let config = DatabaseConfig::Postgres {
            url: with_database(admin, &building),
        };
        Store::connect(config)
            .await
            .and_then_migrate()
            .await
            .unwrap_or_else(|e| panic!("migrating the template database {building}: {e}"));
        conn.batch_execute(&format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{template}\""
        ))
        .await
        .unwrap_or_else(|e| panic!("renaming the template database: {e}"));
    }
    conn.batch_execute(&format!("SELECT pg_advisory_unlock({LOCK})"))
        .await
        .unwrap_or_else(|e| panic!("advisory unlock: {e}"));
    template
}

/// `connect` then `migrate`, keeping no pooled connection open.
trait AndThenMigrate {
    async fn and_then_migrate(self) -> Result<()>;
}

impl AndThenMigrate for Result<Store> {
    async fn and_then_migrate(self) -> Result<()> {
        self?.migrate().await.map(|_| ())
    }
}

/// `EXPLAIN` (PostgreSQL) or `EXPLAIN QUERY PLAN` (SQLite) of a query, with its bind parameters
/// sent as parameters, never pasted into the SQL text.
#[derive(Debug, Clone, Copy, QueryId)]
struct Explain<Q>(Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Explain<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.push_sql("EXPLAIN ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q: QueryFragment<Sqlite>> QueryFragment<Sqlite> for Explain<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> diesel::QueryResult<()> {
        out.push_sql("EXPLAIN QUERY PLAN ");
        self.0.walk_ast(out.reborrow())
    }
}

/// PostgreSQL's plan: one text column per line.
#[derive(Debug, Clone, Copy, QueryId)]
struct PgExplain<Q>(Explain<Q>);
/// SQLite's plan: `(id, parent, notused, detail)` per line.
#[derive(Debug, Clone, Copy, QueryId)]
struct SqliteExplain<Q>(Explain<Q>);

impl<Q> Query for PgExplain<Q> {
    type SqlType = diesel::sql_types::Text;
}
impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for PgExplain<Q> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        self.0.walk_ast(out)
    }
}
impl<Q> Query for SqliteExplain<Q> {
    type SqlType = (
        diesel::sql_types::Integer,
        diesel::sql_types::Integer,
        diesel::sql_types::Integer,
        diesel::sql_types::Text,
    );
}
impl<Q: QueryFragment<Sqlite>> QueryFragment<Sqlite> for SqliteExplain<Q> {
    fn walk_ast<'b>(&'b self, out: AstPass<'_, 'b, Sqlite>) -> diesel::QueryResult<()> {
        self.0.walk_ast(out)
    }
}

/// The plan of `$query` on `$store`'s backend, one line per plan node.
macro_rules! explain {
    ($store:expr, $query:expr) => {{
        use diesel::prelude::*;
        match &$store.inner.backend {
            Backend::Postgres(pool) => {
                let mut conn = checkout!(pool);
                let lines: Vec<String> = PgExplain(Explain($query)).load(&mut conn).await?;
                Ok(lines.join("\n"))
            }
            Backend::Sqlite(pool) => {
                let mut conn = checkout!(pool);
                let rows: Vec<(i32, i32, i32, String)> =
                    SqliteExplain(Explain($query)).load(&mut conn).await?;
                Ok(rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n"))
            }
        }
    }};
}

impl Store {
    /// The database's plan for the exchange's candidate query, for the test that keeps it
    /// index-driven (and for docs/OPERATIONS.md).
    pub async fn explain_candidates(&self, auth: AgentAuth, instance_id: &str) -> Result<String> {
        explain!(self, candidates_query!(auth, instance_id))
    }

    /// The plan for the statement that answers several concurrent candidate lookups at once.
    pub async fn explain_candidate_batch(&self, instance_ids: &[&str]) -> Result<String> {
        explain!(self, candidates_batch_query!(instance_ids.to_vec()))
    }

    /// What autovacuum does in time on a live database: fresh statistics for the planner.
    pub async fn vacuum_analyze(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Postgres(pool) => checkout!(pool).batch_execute("VACUUM (ANALYZE)").await?,
            Backend::Sqlite(pool) => checkout!(pool).batch_execute("ANALYZE").await?,
        }
        Ok(())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime: use a thread with its own runtime. FORCE ends
        // the pool's connections that may still be open.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok(mut conn) = AsyncPgConnection::establish(&admin).await {
                        let _ = conn
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Defines a test module with one `#[tokio::test]` per backend running the same body:
///
/// ```text
/// backend_test!(two_agents_share_an_instance, |store| async move { ... });
/// ```
#[macro_export]
macro_rules! backend_test {
    ($name:ident, |$store:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($store: $crate::Store) {
                $body.await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::testing::TestDb::new($crate::testing::TestBackend::Sqlite).await;
                run(db.store().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = $crate::testing::TestDb::new($crate::testing::TestBackend::Postgres).await;
                run(db.store().await).await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_database_name() {
        assert_eq!(
            super::with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            super::with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(super::with_database("postgres://h", "x"), "postgres://h/x");
    }
}
