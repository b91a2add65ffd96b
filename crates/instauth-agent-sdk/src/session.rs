//! The session token provider: a static token, a token file, or an instance identity proof
//! (signed with the agent's key, when it has one) exchanged for a session token, refreshed when
//! the server answers 401.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use instauth_types::Manifest;
use tokio::sync::Mutex;

use instauth_types::Provider;

use crate::agent_key::AgentKey;
use crate::client::{normalize_agent_name, Client, LifecycleState};
use crate::error::{Error, Result};
use crate::metadata::{GoogleIdentity, MetadataClient};
use crate::metrics::Metrics;

/// Where the session token comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Credentials {
    /// A fixed agent token (`--agent-token`).
    Token(String),
    /// A file holding the agent token (`--agent-token-file`), re-read after a 401.
    TokenFile(PathBuf),
    /// An instance identity proof read from the metadata service and exchanged.
    InstanceIdentity {
        /// Which cloud.
        provider: Provider,
        /// The metadata service client.
        metadata: MetadataClient,
        /// Which Google identity token to request (GCP only).
        google: GoogleIdentity,
    },
}

/// A session token and the generation it belongs to. Generations let concurrent callers that
/// saw the same stale token share one refresh.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken {
    generation: u64,
    value: String,
}

impl SessionToken {
    /// The token, for the `Coder-Session-Token` header.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for SessionToken {
    // Never print the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionToken")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Holds the agent's session token and makes agent API calls with it.
///
/// A 401 from any call triggers one refresh (a new exchange, or re-reading the token file)
/// and one retry. Refreshes are single-flight: callers that hit 401 with the same token wait
/// for one exchange and then all use its result.
#[derive(Debug)]
pub struct Session {
    client: Client,
    credentials: Credentials,
    agent_name: Option<String>,
    current: Mutex<Option<SessionToken>>,
    metrics: Arc<Metrics>,
    agent_key: Option<AgentKey>,
}

/// The current time in Unix seconds, for `agent_key_time`.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or_default()
}

impl Session {
    /// A session against `client` with `credentials`. `agent_name` is trimmed; an empty name
    /// is not sent.
    pub fn new(client: Client, credentials: Credentials, agent_name: Option<&str>) -> Self {
        Session {
            client,
            credentials,
            agent_name: normalize_agent_name(agent_name),
            current: Mutex::new(None),
            metrics: Arc::new(Metrics::default()),
            agent_key: None,
        }
    }

    /// Signs every exchange with `key` (SPEC §2.1): the server binds it to the agent on the
    /// first exchange and refuses the agent's name to any other key afterwards.
    pub fn with_agent_key(mut self, key: AgentKey) -> Self {
        self.agent_key = Some(key);
        self
    }

    /// The key exchanges are signed with, if any.
    pub fn agent_key(&self) -> Option<&AgentKey> {
        self.agent_key.as_ref()
    }

    /// Counts exchanges and heartbeats into `metrics` instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters this session updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The requested agent name, if any.
    pub fn agent_name(&self) -> Option<&str> {
        self.agent_name.as_deref()
    }

    /// The HTTP client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The current session token, obtaining one first if there is none.
    pub async fn token(&self) -> Result<SessionToken> {
        let mut current = self.current.lock().await;
        if let Some(t) = &*current {
            return Ok(t.clone());
        }
        let value = self.obtain().await?;
        let t = SessionToken {
            generation: 1,
            value,
        };
        *current = Some(t.clone());
        Ok(t)
    }

    /// Replaces `stale` (a token the server refused) with a fresh one. If another caller has
    /// already replaced it, returns that caller's token without a new exchange.
    pub async fn refresh(&self, stale: &SessionToken) -> Result<SessionToken> {
        let mut current = self.current.lock().await;
        if let Some(t) = &*current {
            if t.generation != stale.generation {
                return Ok(t.clone());
            }
        }
        let value = self.obtain().await?;
        let t = SessionToken {
            generation: stale.generation + 1,
            value,
        };
        *current = Some(t.clone());
        Ok(t)
    }

    /// Reads the proof and exchanges it, or reads the static token.
    async fn obtain(&self) -> Result<String> {
        match &self.credentials {
            Credentials::Token(t) => {
                let t = t.trim();
                if t.is_empty() {
                    return Err(Error::Config("the agent token is empty".into()));
                }
                Ok(t.to_owned())
            }
            Credentials::TokenFile(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| Error::TokenFile {
                        path: path.clone(),
                        detail: e.to_string(),
                    })?;
                let t = text.trim();
                if t.is_empty() {
                    return Err(Error::TokenFile {
                        path: path.clone(),
                        detail: "the file is empty".into(),
                    });
                }
                Ok(t.to_owned())
            }
            Credentials::InstanceIdentity {
                provider,
                metadata,
                google,
            } => {
                let mut proof = metadata.proof(*provider, google).await?;
                proof.set_agent_name(self.agent_name.as_deref());
                let signed = self
                    .agent_key
                    .as_ref()
                    .map(|k| k.sign(&proof, unix_now()))
                    .unwrap_or_default();
                let result = self.client.exchange_with_key(&proof, &signed).await;
                self.metrics.count_exchange(&result);
                match &result {
                    Ok(_) => tracing::info!(
                        provider = %provider,
                        agent.name = self.agent_name.as_deref().unwrap_or(""),
                        "Exchanged the instance identity for a session token."
                    ),
                    Err(e) => {
                        tracing::debug!(provider = %provider, error = %e, "Exchange failed.")
                    }
                }
                result
            }
        }
    }

    /// Runs `call` with the session token; on 401, refreshes the token once and retries.
    pub async fn with_token<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let token = self.token().await?;
        match call(token.value.clone()).await {
            Err(e) if e.is_unauthorized() => {
                if matches!(self.credentials, Credentials::Token(_)) {
                    // Nothing to refresh: a fixed token stays refused.
                    return Err(e);
                }
                tracing::info!("The server refused the session token; obtaining a new one.");
                let fresh = self.refresh(&token).await?;
                if fresh.value == token.value {
                    return Err(e);
                }
                call(fresh.value).await
            }
            other => other,
        }
    }

    /// `GET /api/v2/workspaceagents/me/manifest`, refreshing the token on 401.
    pub async fn manifest(&self) -> Result<Manifest> {
        self.with_token(|t| async move { self.client.manifest(&t).await })
            .await
    }

    /// `POST /api/v2/workspaceagents/me/heartbeat`, refreshing the token on 401.
    pub async fn heartbeat(&self, state: LifecycleState) -> Result<()> {
        let result = self
            .with_token(|t| async move { self.client.heartbeat(&t, state).await })
            .await;
        self.metrics.count_heartbeat(result.is_ok());
        result
    }
}
