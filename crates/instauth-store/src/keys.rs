//! Server secrets shared by every replica: the session signing keys.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::schema::session_keys;
use crate::{now, Result, Store, StoreError};

/// Key of the PostgreSQL advisory lock a key rotation holds until it commits (arbitrary,
/// fixed: "rotation").
const ROTATION_LOCK: i64 = 0x726f_7461_7469_6f6e;

/// A session signing key.
#[derive(Clone, PartialEq, Eq, Queryable)]
pub struct SessionKey {
    /// Named in every token it signs.
    pub id: i32,
    /// The HMAC secret.
    pub secret: Vec<u8>,
    /// When it was created.
    pub created_at: NaiveDateTime,
    /// When a newer key replaced it (it still verifies the tokens it signed until they expire).
    pub retired_at: Option<NaiveDateTime>,
}

/// Never prints the secret.
impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Every session key, newest (the signing one) first. Creates key 1 from `generate()` when
    /// there is none; every replica ends up with the same keys (the first insert wins).
    pub async fn session_keys(
        &self,
        generate: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<SessionKey>> {
        let fresh = generate();
        let at = now();
        with_conn!(self, |conn| {
            let keys: Vec<SessionKey> = session_keys::table
                .order(session_keys::id.desc())
                .load(conn)
                .await?;
            if !keys.is_empty() {
                return Ok(keys);
            }
            diesel::insert_into(session_keys::table)
                .values((
                    session_keys::id.eq(1),
                    session_keys::secret.eq(&fresh),
                    session_keys::created_at.eq(at),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            Ok(session_keys::table
                .order(session_keys::id.desc())
                .load(conn)
                .await?)
        })
    }

    /// Adds a new signing key and retires the others; returns its id. Tokens signed before keep
    /// verifying until [`Store::drop_retired_session_keys`] removes their key.
    pub async fn rotate_session_key(&self, secret: Vec<u8>) -> Result<i32> {
        let at = now();
        let postgres = self.is_postgres();
        with_conn!(self, |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                // Concurrent rotations take turns from their first statement on, so each
                // retires the key the one before it made and picks the next id. On SQLite the
                // first statement is a write, which takes the database's write lock (a read
                // first would have to become a write after another connection committed, and
                // that fails at once, busy timeout or not). On PostgreSQL a row lock would not
                // cover the key another rotation is inserting; a lock on the rotation does.
                if postgres {
                    diesel::sql_query(format!("SELECT pg_advisory_xact_lock({ROTATION_LOCK})"))
                        .execute(conn)
                        .await?;
                }
                diesel::update(session_keys::table.filter(session_keys::retired_at.is_null()))
                    .set(session_keys::retired_at.eq(at))
                    .execute(conn)
                    .await?;
                let last: Option<i32> = session_keys::table
                    .select(diesel::dsl::max(session_keys::id))
                    .get_result(conn)
                    .await?;
                let id = last.unwrap_or(0) + 1;
                diesel::insert_into(session_keys::table)
                    .values((
                        session_keys::id.eq(id),
                        session_keys::secret.eq(&secret),
                        session_keys::created_at.eq(at),
                    ))
                    .execute(conn)
                    .await?;
                Ok(id)
            })
            .await
        })
    }

    /// Deletes the keys retired before `before` (no unexpired token can name them); returns
    /// how many.
    pub async fn drop_retired_session_keys(&self, before: NaiveDateTime) -> Result<usize> {
        with_conn!(self, |conn| {
            Ok(
                diesel::delete(session_keys::table.filter(session_keys::retired_at.lt(before)))
                    .execute(conn)
                    .await?,
            )
        })
    }
}
