//! instauth HTTP API: the axum router, its handlers and the one place where errors become HTTP
//! statuses.
//!
//! Architecture invariant: only this crate knows HTTP status codes; the store, the policy and the
//! verifiers return typed errors that are mapped here.

mod ops;

use axum::Router;
use instauth_store::Store;

/// Shared state of every handler; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The database.
    pub store: Store,
}

impl AppState {
    /// State over a store.
    pub fn new(store: Store) -> Self {
        AppState { store }
    }
}

/// The complete router.
pub fn router(state: AppState) -> Router {
    Router::new().merge(ops::routes()).with_state(state)
}
