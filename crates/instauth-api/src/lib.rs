//! instauth HTTP API: the axum router, its handlers and the one place where errors become HTTP
//! statuses ([`error`]).
//!
//! Architecture invariant: only this crate knows HTTP status codes; the store, the policy and the
//! verifiers return typed errors that are mapped in `error.rs`.

pub mod access;
pub mod admin;
pub mod agent;
pub mod aia_cache;
pub mod audit;
pub mod error;
pub mod exchange;
pub mod extract;
pub mod metrics;
mod ops;
mod pool;
pub mod ratelimit;
pub mod serve;
pub mod session;
pub mod ui;
pub mod verifiers;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use instauth_store::{Store, StoreError};
use instauth_types::routes;
use instauth_verify::Clock;

pub use audit::{AuditSink, AuditWriter};
pub use error::ApiError;
pub use instauth_policy::{AllowLists, NotAllowed};
pub use verifiers::{TrustFiles, Verifiers, VerifyError, VerifyPool};

/// Largest exchange request body (SPEC.md §2).
pub const EXCHANGE_BODY_LIMIT: usize = 64 * 1024;
/// Largest admin request body (a build with thousands of agents).
pub const ADMIN_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Largest agent API request body.
pub const AGENT_BODY_LIMIT: usize = 16 * 1024;

/// Server settings the handlers need.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How long a session token is valid (`--session-ttl`).
    pub session_ttl: Duration,
    /// Expected heartbeat interval; agents are `connected` for 3 intervals after a heartbeat.
    pub heartbeat_interval: Duration,
    /// The admin token (only its hash is kept).
    pub admin_token: String,
    /// Exchange requests per second per client address (bursts of twice that); 0 disables.
    pub exchange_rate_limit: u32,
    /// `Retry-After` of 404 and 409 exchange answers (`--retry-after`).
    pub retry_after: Duration,
    /// Audit records older than this are deleted (`--audit-retention`).
    pub audit_retention: Duration,
    /// Proxies whose `X-Forwarded-For` names the client (`--trusted-proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Accounts, subscriptions and projects allowed to exchange (`--aws-accounts`, ...).
    pub allow_lists: AllowLists,
    /// Every exchange must carry an agent key (`--require-agent-keys`, SPEC §2.1).
    pub require_agent_keys: bool,
    /// The clock `agent_key_time` is checked against (the system clock outside tests).
    pub clock: Arc<dyn Clock>,
}

impl Default for ApiConfig {
    /// The server's defaults (SPEC §6), with an empty admin token (no admin request passes).
    fn default() -> Self {
        ApiConfig {
            session_ttl: Duration::from_secs(24 * 3600),
            heartbeat_interval: Duration::from_secs(15),
            admin_token: String::new(),
            exchange_rate_limit: 50,
            retry_after: Duration::from_secs(5),
            audit_retention: Duration::from_secs(30 * 24 * 3600),
            trusted_proxies: Vec::new(),
            allow_lists: AllowLists::default(),
            require_agent_keys: false,
            clock: Arc::new(instauth_verify::SystemClock),
        }
    }
}

struct Shared {
    store: Store,
    verifiers: Arc<Verifiers>,
    sessions: session::SessionSigner,
    admin_token_hash: [u8; 32],
    /// An admin token was configured (an empty one never authenticates the dashboard).
    admin_token_configured: bool,
    session_ttl: chrono::Duration,
    heartbeat_interval: chrono::Duration,
    metrics: Arc<metrics::Metrics>,
    audit: AuditSink,
    audit_store: Store,
    limiter: ratelimit::RateLimiter,
    /// Seconds of `Retry-After` on 404/409 exchange answers.
    retry_after: u64,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// When a token naming an unknown key last made us read the keys (throttles reloads).
    keys_reloaded: std::sync::Mutex<Option<std::time::Instant>>,
    allow_lists: AllowLists,
    require_agent_keys: bool,
    clock: Arc<dyn Clock>,
    /// Dashboard sessions and sign-in limits.
    ui: ui::UiState,
}

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.inner.store)
            .finish()
    }
}

/// SHA-256 of a token: what is compared and stored instead of the token.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl AppState {
    /// Builds the state: loads (or creates) the session key and starts the audit writer.
    pub async fn new(
        store: Store,
        verifiers: Verifiers,
        config: ApiConfig,
    ) -> Result<(AppState, AuditWriter), StoreError> {
        let keys = store.session_keys(session::random_secret).await?;
        let sessions = session::SessionSigner::new(&keys).ok_or_else(|| {
            StoreError::Corrupt("the database holds no session signing key".into())
        })?;
        let audit_store = store.sibling(2).await?;
        let counted = store.clone();
        let metrics = Arc::new(metrics::Metrics::new(move || (&counted).into()));
        let (sink, writer) = audit::start(audit_store.clone(), {
            let metrics = metrics.clone();
            move || metrics.audit_dropped()
        });
        tokio::spawn(audit::prune(audit_store.clone(), config.audit_retention));
        let state = AppState {
            inner: Arc::new(Shared {
                store,
                verifiers: Arc::new(verifiers),
                sessions,
                admin_token_hash: token_hash(&config.admin_token),
                admin_token_configured: !config.admin_token.trim().is_empty(),
                session_ttl: chrono_duration(config.session_ttl),
                heartbeat_interval: chrono_duration(config.heartbeat_interval),
                metrics,
                audit: sink,
                audit_store,
                limiter: ratelimit::RateLimiter::new(config.exchange_rate_limit),
                retry_after: config.retry_after.as_secs().max(1),
                keys_reloaded: std::sync::Mutex::new(None),
                trusted_proxies: config.trusted_proxies,
                allow_lists: config.allow_lists,
                require_agent_keys: config.require_agent_keys,
                clock: config.clock,
                ui: ui::UiState::new(),
            }),
        };
        tokio::spawn(maintain_session_keys(Arc::downgrade(&state.inner)));
        state.refresh_trust_metrics();
        Ok((state, writer))
    }

    /// Reads the session keys again, unless that was done less than a second ago (a token naming
    /// an unknown key cannot make every request hit the database). Returns whether it read.
    pub async fn reload_session_keys(&self) -> Result<bool, StoreError> {
        {
            let Ok(mut last) = self.inner.keys_reloaded.lock() else {
                return Ok(false);
            };
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Ok(false);
            }
            *last = Some(std::time::Instant::now());
        }
        let keys = self
            .inner
            .store
            .session_keys(session::random_secret)
            .await?;
        self.inner.sessions.reload(&keys);
        Ok(true)
    }

    /// The verifiers.
    pub fn verifiers(&self) -> &Arc<Verifiers> {
        &self.inner.verifiers
    }

    /// Exports the expiry of every trusted certificate whose validity matters (see
    /// [`metrics::Metrics::set_trust_certificates`]); called at start and after a reload.
    pub fn refresh_trust_metrics(&self) {
        self.inner.metrics.set_trust_certificates(
            &self.inner.verifiers.trust_certificates(),
            chrono::Utc::now(),
        );
    }

    /// Re-reads the trust files (SIGHUP) and puts them in place, then refreshes the expiry
    /// metric and warns about still-needed certificates close to expiry. On failure the old
    /// material stays in use and the error says which file is wrong.
    pub fn reload_trust(
        &self,
        files: &TrustFiles,
    ) -> Result<(), instauth_verify::trust::TrustError> {
        let material = files.load()?;
        self.inner.verifiers.replace_trust(material);
        self.refresh_trust_metrics();
        verifiers::warn_expiring(
            &self.inner.verifiers.trust_certificates(),
            chrono::Utc::now(),
        );
        Ok(())
    }

    /// Proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.inner.trusted_proxies
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The metrics served on `/metrics`.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// Statements sent by the audit writer (separate from [`Store::queries_total`] of
    /// [`AppState::store`], which counts the request path).
    pub fn audit_queries_total(&self) -> u64 {
        self.inner.audit_store.queries_total()
    }

    /// Waits until queued audit records are written.
    pub async fn flush_audit(&self) {
        self.inner.audit.flush().await
    }
}

/// Every minute: picks up keys rotated by another process, and deletes retired keys once no
/// token they signed can still be unexpired. Ends when the state is dropped.
async fn maintain_session_keys(state: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = state.upgrade() else {
            return;
        };
        let before = instauth_store::now() - shared.session_ttl;
        match shared.store.drop_retired_session_keys(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "Dropped retired session keys."),
            Err(e) => tracing::warn!(error = %e, "Dropping retired session keys failed."),
        }
        match shared.store.session_keys(session::random_secret).await {
            Ok(keys) => shared.sessions.reload(&keys),
            Err(e) => tracing::warn!(error = %e, "Reloading session keys failed."),
        }
    }
}

/// Every route as (method, path), in the order of docs/API.md; the router registers exactly these
/// (checked by `tests/api_doc.rs`). The paths live in [`instauth_types::routes`], shared with the
/// clients.
pub const ROUTES: &[(&str, &str)] = routes::ALL;

/// The complete router.
pub fn router(state: AppState) -> Router {
    let exchange = Router::new()
        .route(routes::AWS_INSTANCE_IDENTITY, post(exchange::aws))
        .route(routes::AZURE_INSTANCE_IDENTITY, post(exchange::azure))
        .route(routes::GOOGLE_INSTANCE_IDENTITY, post(exchange::google))
        .layer(DefaultBodyLimit::max(EXCHANGE_BODY_LIMIT));
    let agent = Router::new()
        .route(routes::AGENT_MANIFEST, get(agent::manifest))
        .route(routes::AGENT_HEARTBEAT, post(agent::heartbeat))
        .layer(DefaultBodyLimit::max(AGENT_BODY_LIMIT));
    let admin = Router::new()
        .route(routes::WORKSPACES, get(admin::list_workspaces))
        .route(
            routes::WORKSPACE,
            get(admin::show_workspace).delete(admin::delete_workspace),
        )
        .route(routes::WORKSPACE_BUILDS, post(admin::create_build))
        .route(routes::AGENT_KEY, delete(admin::reset_agent_key))
        .route(routes::AGENT_SESSIONS, delete(admin::revoke_sessions))
        .route(routes::AUDIT, get(admin::audit))
        .layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT));
    Router::new()
        .merge(exchange)
        .merge(agent)
        .merge(admin)
        .merge(ops::routes())
        .merge(ui::routes())
        .fallback(|| async { ApiError::NotFound("No such endpoint.".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}
