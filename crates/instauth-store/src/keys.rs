//! Server secrets shared by every replica (the session signing key).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::schema::server_keys;
use crate::{now, Result, Store};

impl Store {
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
            diesel::insert_into(server_keys::table)
                .values((
                    server_keys::name.eq(name),
                    server_keys::secret.eq(&fresh),
                    server_keys::created_at.eq(at),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            Ok(server_keys::table
                .find(name)
                .select(server_keys::secret)
                .first(conn)
                .await?)
        })
    }
}
