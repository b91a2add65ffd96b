//! The persistent cache of admitted issuing CAs, and an in-memory one.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use super::lock;

/// A boxed future, so that [`AiaCache`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A persistent-cache failure; the fetcher then behaves as on a miss.
#[derive(Debug, thiserror::Error)]
#[error("AIA cache: {0}")]
pub struct AiaCacheError(pub Box<dyn std::error::Error + Send + Sync>);

/// Persistent storage of admitted issuing CAs, by URL, shared by replicas and restarts (the
/// server implements it on its database). Only certificates the verifier admitted (they
/// chained to a pinned root and issued a signer) are put; what comes back is checked again.
pub trait AiaCache: Send + Sync + fmt::Debug {
    /// The DER stored for `url`, if any.
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, AiaCacheError>>;
    /// Stores `der` for `url` (replacing what was there).
    fn put<'a>(&'a self, url: &'a str, der: &'a [u8]) -> BoxFuture<'a, Result<(), AiaCacheError>>;
}

/// An [`AiaCache`] in memory, for tests and single-process use.
#[derive(Debug, Default)]
pub struct MemoryAiaCache {
    entries: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryAiaCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The URLs stored, sorted.
    pub fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = lock(&self.entries).keys().cloned().collect();
        urls.sort();
        urls
    }
}

impl AiaCache for MemoryAiaCache {
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, AiaCacheError>> {
        let found = lock(&self.entries).get(url).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn put<'a>(&'a self, url: &'a str, der: &'a [u8]) -> BoxFuture<'a, Result<(), AiaCacheError>> {
        lock(&self.entries).insert(url.to_string(), der.to_vec());
        Box::pin(async { Ok(()) })
    }
}
