//! Issuing CA certificates fetched from AIA URLs, shared by every replica (`aia_cache`).
//!
//! The store keeps them as opaque bytes by URL: it neither parses nor trusts them. The server
//! puts only certificates its verifier admitted, and checks what it reads back again.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::schema::aia_cache;
use crate::{now, Result, Store, StoreError};

/// Longest URL stored (the verifier reads no longer ones).
pub const MAX_AIA_URL_LEN: usize = 512;
/// Largest certificate stored (the verifier admits none larger).
pub const MAX_AIA_DER_LEN: usize = 16 * 1024;

fn check(url: &str, der: Option<&[u8]>) -> Result<()> {
    let invalid = |field: &str, detail: String| {
        StoreError::Validation(vec![crate::model::FieldError {
            field: field.into(),
            detail,
        }])
    };
    if url.is_empty() || url.len() > MAX_AIA_URL_LEN {
        return Err(invalid(
            "url",
            format!("must be 1 to {MAX_AIA_URL_LEN} bytes"),
        ));
    }
    if let Some(der) = der {
        if der.is_empty() || der.len() > MAX_AIA_DER_LEN {
            return Err(invalid(
                "der",
                format!("must be 1 to {MAX_AIA_DER_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

impl Store {
    /// The certificate stored for `url`, if any.
    pub async fn aia_certificate(&self, url: &str) -> Result<Option<Vec<u8>>> {
        check(url, None)?;
        with_conn!(self, |conn| {
            Ok(aia_cache::table
                .find(url)
                .select(aia_cache::der)
                .first::<Vec<u8>>(conn)
                .await
                .optional()?)
        })
    }

    /// Stores `der` for `url`, replacing what was there.
    pub async fn put_aia_certificate(&self, url: &str, der: &[u8]) -> Result<()> {
        check(url, Some(der))?;
        let at = now();
        with_conn!(self, |conn| {
            diesel::insert_into(aia_cache::table)
                .values((
                    aia_cache::url.eq(url),
                    aia_cache::der.eq(der),
                    aia_cache::stored_at.eq(at),
                ))
                .on_conflict(aia_cache::url)
                .do_update()
                .set((aia_cache::der.eq(der), aia_cache::stored_at.eq(at)))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// Every stored `(url, certificate)`, by URL (for `instauth trust list`).
    pub async fn aia_certificates(&self) -> Result<Vec<(String, Vec<u8>)>> {
        with_conn!(self, |conn| {
            Ok(aia_cache::table
                .select((aia_cache::url, aia_cache::der))
                .order(aia_cache::url)
                .load(conn)
                .await?)
        })
    }
}
