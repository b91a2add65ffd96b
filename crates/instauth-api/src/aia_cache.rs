//! The database as the persistent cache of the Azure AIA fetcher: an issuing CA one replica
//! fetched and admitted is found by the others, and after a restart, without a download.
//!
//! A small adapter so that neither side knows the other: the store keeps opaque bytes by URL,
//! the verifier crate defines the [`AiaCache`] trait and re-checks whatever comes back.

use instauth_store::Store;
use instauth_verify_azure::aia::{AiaCache, AiaCacheError, BoxFuture};

/// [`AiaCache`] on the `aia_cache` table of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreAiaCache {
    store: Store,
}

impl StoreAiaCache {
    /// The cache on `store`'s database.
    pub fn new(store: Store) -> Self {
        StoreAiaCache { store }
    }
}

fn cache_error(e: instauth_store::StoreError) -> AiaCacheError {
    AiaCacheError(Box::new(e))
}

impl AiaCache for StoreAiaCache {
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, AiaCacheError>> {
        Box::pin(async move { self.store.aia_certificate(url).await.map_err(cache_error) })
    }

    fn put<'a>(&'a self, url: &'a str, der: &'a [u8]) -> BoxFuture<'a, Result<(), AiaCacheError>> {
        Box::pin(async move {
            self.store
                .put_aia_certificate(url, der)
                .await
                .map_err(cache_error)
        })
    }
}
