//! Multi-row inserts on both backends. PostgreSQL takes multi-row INSERTs through the async
//! connection; diesel's SQLite multi-row INSERT exists only on the synchronous connection, so the
//! SQLite side runs it on the wrapper's blocking thread. Either way a chunk is one statement.

use diesel::QueryResult;

/// Rows per multi-row INSERT: well under PostgreSQL's 65535 and SQLite's 32766 bind limits.
pub(crate) const INSERT_CHUNK: usize = 1000;

pub(crate) type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// `rows` split into owned chunks of at most [`INSERT_CHUNK`] (rows whose columns convert on
/// insert, `serialize_as`, are insertable by value only).
pub(crate) fn chunks<R>(mut rows: Vec<R>) -> Vec<Vec<R>> {
    let mut out = Vec::with_capacity(rows.len().div_ceil(INSERT_CHUNK));
    while rows.len() > INSERT_CHUNK {
        let rest = rows.split_off(INSERT_CHUNK);
        out.push(std::mem::replace(&mut rows, rest));
    }
    if !rows.is_empty() {
        out.push(rows);
    }
    out
}

/// Inserts rows of type `R` in chunks of [`INSERT_CHUNK`].
pub(crate) trait InsertMany<R: Send + 'static> {
    /// One statement per chunk.
    fn insert_many(&mut self, rows: Vec<R>) -> BoxFut<'_, QueryResult<()>>;
}

/// Implements [`InsertMany`] for one row type on both backends; with `ignore_conflicts`, rows
/// that would violate a unique index are skipped (`ON CONFLICT DO NOTHING`).
macro_rules! insert_many {
    ($row:ty, $table:expr) => {
        $crate::insert::insert_many!($row, $table, |q| q);
    };
    ($row:ty, $table:expr, ignore_conflicts) => {
        $crate::insert::insert_many!($row, $table, |q| q.on_conflict_do_nothing());
    };
    ($row:ty, $table:expr, |$q:ident| $finish:expr) => {
        impl $crate::insert::InsertMany<$row> for diesel_async::AsyncPgConnection {
            fn insert_many(
                &mut self,
                rows: Vec<$row>,
            ) -> $crate::insert::BoxFut<'_, diesel::QueryResult<()>> {
                Box::pin(async move {
                    for chunk in $crate::insert::chunks(rows) {
                        let $q = diesel::insert_into($table).values(chunk);
                        diesel_async::RunQueryDsl::execute($finish, self).await?;
                    }
                    Ok(())
                })
            }
        }

        impl $crate::insert::InsertMany<$row> for $crate::SqliteConn {
            fn insert_many(
                &mut self,
                rows: Vec<$row>,
            ) -> $crate::insert::BoxFut<'_, diesel::QueryResult<()>> {
                self.spawn_blocking(move |c| {
                    for chunk in $crate::insert::chunks(rows) {
                        let $q = diesel::insert_into($table).values(chunk);
                        diesel::RunQueryDsl::execute($finish, c)?;
                    }
                    Ok(())
                })
            }
        }
    };
}
pub(crate) use insert_many;
