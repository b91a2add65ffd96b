//! Test databases: a temporary SQLite file, or a fresh PostgreSQL database per test so tests
//! run in parallel. PostgreSQL tests fail (never skip) when the server is unreachable.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

use crate::{DatabaseConfig, Store};

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

    /// A fresh, empty PostgreSQL database. Panics with instructions when PostgreSQL is
    /// unreachable: these tests must run for real.
    pub async fn postgres() -> TestDb {
        TestDb::postgres_at(&admin_url()).await
    }

    /// A fresh database on the server at `admin` (a URL of an existing database).
    pub async fn postgres_at(admin: &str) -> TestDb {
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
        conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin}: {e}"));
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
