//! The watch that keeps a process's liveness cache in step with other processes' changes:
//! LISTEN on PostgreSQL, polling `liveness_changes` on SQLite. While it is not running the
//! cache is off, and the cache is dropped whenever it (re)starts.

use std::sync::{Arc, Weak};
use std::time::Duration;

use uuid::Uuid;

use super::Liveness;

/// Channel the PostgreSQL triggers notify (migration `liveness`).
pub const LIVENESS_CHANNEL: &str = "instauth_liveness";
/// How often a SQLite process looks for other processes' changes.
const SQLITE_POLL: Duration = Duration::from_millis(250);
/// How often the PostgreSQL listener proves its connection is alive (a silently dropped
/// connection would otherwise keep the cache on without notifications).
const LISTEN_PROBE: Duration = Duration::from_secs(5);
/// Longest wait between attempts to re-establish the watch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Applies a change notification (a workspace id); anything else drops the whole cache.
fn apply(cache: &Liveness, payload: &str) {
    match Uuid::try_parse(payload.trim()) {
        Ok(ws) => cache.invalidate(ws),
        Err(_) => cache.reset(),
    }
}

/// Keeps `cache` in step with the PostgreSQL database at `url` for as long as the cache lives:
/// LISTEN on a dedicated connection, drop the cache whenever that connection is lost, and
/// reconnect with backoff.
pub(crate) async fn listen_postgres(cache: Weak<Liveness>, url: String) {
    use std::future::poll_fn;
    use tokio_postgres::AsyncMessage;

    let mut backoff = Duration::from_millis(100);
    loop {
        let config = match url.parse::<tokio_postgres::Config>() {
            Ok(mut c) => {
                c.connect_timeout(crate::pool::CONNECT_TIMEOUT);
                c
            }
            // The pool would refuse this URL too; stay off (every check reads the database).
            Err(_) => return,
        };
        if let Ok((client, mut connection)) = config.connect(tokio_postgres::NoTls).await {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let driver = tokio::spawn(async move {
                while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                    if let AsyncMessage::Notification(n) = message {
                        if tx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                }
            });
            let listening = tokio::time::timeout(
                crate::pool::CONNECT_TIMEOUT,
                client.batch_execute(&format!("LISTEN {LIVENESS_CHANNEL}")),
            )
            .await;
            if matches!(listening, Ok(Ok(()))) {
                let Some(c) = cache.upgrade() else { return };
                c.activate();
                drop(c);
                backoff = Duration::from_millis(100);
                let mut probe = tokio::time::interval(LISTEN_PROBE);
                probe.tick().await;
                loop {
                    tokio::select! {
                        n = rx.recv() => match (n, cache.upgrade()) {
                            (Some(payload), Some(c)) => apply(&c, &payload),
                            (_, None) => return,
                            (None, Some(_)) => break,
                        },
                        _ = probe.tick() => {
                            if cache.strong_count() == 0 {
                                return;
                            }
                            let alive = tokio::time::timeout(
                                crate::pool::CONNECT_TIMEOUT,
                                client.batch_execute(""),
                            )
                            .await;
                            if !matches!(alive, Ok(Ok(()))) {
                                break;
                            }
                        }
                    }
                }
            }
            driver.abort();
            match cache.upgrade() {
                Some(c) => c.deactivate(),
                None => return,
            }
        }
        if cache.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps `cache` in step with the SQLite file at `path` (other processes' changes) for as long
/// as the cache lives. Runs on its own thread with its own connection, uncounted: polling is
/// not request work.
pub(crate) fn poll_sqlite(cache: Weak<Liveness>, path: std::path::PathBuf) {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};

    #[derive(QueryableByName)]
    struct Change {
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = Text)]
        workspace_id: String,
    }
    #[derive(QueryableByName)]
    struct Newest {
        #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
        hi: Option<i64>,
    }

    let mut backoff = Duration::from_millis(100);
    loop {
        let session = (|| -> QueryResult<()> {
            let mut conn = SqliteConnection::establish(&path.to_string_lossy())
                .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
            diesel::connection::SimpleConnection::batch_execute(
                &mut conn,
                "PRAGMA busy_timeout = 5000;",
            )?;
            let start: Newest = diesel::sql_query("SELECT max(seq) AS hi FROM liveness_changes")
                .get_result(&mut conn)?;
            let mut last = start.hi.unwrap_or(0);
            match cache.upgrade() {
                Some(c) => c.activate(),
                None => return Ok(()),
            }
            backoff = Duration::from_millis(100);
            let mut polls = 0u64;
            loop {
                std::thread::sleep(SQLITE_POLL);
                let Some(c) = cache.upgrade() else {
                    return Ok(());
                };
                let changes: Vec<Change> = diesel::sql_query(
                    "SELECT seq, workspace_id FROM liveness_changes WHERE seq > ? \
                     ORDER BY seq LIMIT 10000",
                )
                .bind::<BigInt, _>(last)
                .load(&mut conn)?;
                if let Some(first) = changes.first() {
                    if first.seq != last + 1 {
                        // Rows after `last` were pruned before this process read them.
                        c.reset();
                    }
                }
                for ch in &changes {
                    apply(&c, &ch.workspace_id);
                    last = ch.seq;
                }
                polls += 1;
                // Prune once a minute: rows every process has long read.
                if polls % 240 == 0 {
                    diesel::sql_query(
                        "DELETE FROM liveness_changes \
                         WHERE created_at < datetime('now', '-10 minutes')",
                    )
                    .execute(&mut conn)?;
                }
            }
        })();
        let Some(c) = cache.upgrade() else { return };
        c.deactivate();
        drop(c);
        if session.is_ok() {
            return;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Starts the watch of `cache` for the database of `config` (once per cache).
pub(crate) fn start_watch(cache: &Arc<Liveness>, config: &crate::DatabaseConfig) {
    if !cache.claim_watch() {
        return;
    }
    let weak = Arc::downgrade(cache);
    match config {
        crate::DatabaseConfig::Postgres { url } => {
            tokio::spawn(listen_postgres(weak, url.clone()));
        }
        crate::DatabaseConfig::Sqlite { path } => {
            let path = path.clone();
            // A thread that cannot start leaves the cache off: correct, only slower.
            let _ = std::thread::Builder::new()
                .name("instauth-liveness".into())
                .spawn(move || poll_sqlite(weak, path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::liveness::tests::live;

    #[test]
    fn notifications_name_a_workspace_or_drop_everything() {
        let c = Liveness::new(100);
        c.activate();
        let (a, ws) = (Uuid::new_v4(), Uuid::new_v4());
        c.insert(a, live(ws, 0), c.begin_read(), None);
        apply(&c, &ws.to_string());
        assert_eq!(c.agent(a), None);
        c.insert(a, live(ws, 0), c.begin_read(), None);
        apply(&c, "not a workspace");
        assert_eq!(c.agent(a), None);
        assert_eq!(c.stats().resets, 2);
    }
}
