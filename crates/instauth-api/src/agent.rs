//! The agent API (SPEC.md §3), authenticated by `Coder-Session-Token`: a signed session token
//! from an exchange, or a static agent token of an `auth: "token"` agent.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use instauth_store::{AgentContext, LifecycleState};
use instauth_types::{HeartbeatRequest, Manifest, ValidationError, SESSION_TOKEN_HEADER};
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::session::{SessionClaims, TokenError, LEGACY_TOKEN_PREFIX, SESSION_TOKEN_PREFIX};
use crate::{token_hash, AppState};

/// What a request's `Coder-Session-Token` proves, before the agent's liveness is checked.
enum Credential {
    /// A signed session token with a valid MAC, unexpired: its agent and generation.
    Session(SessionClaims),
    /// Any other token: the SHA-256 of a static agent token, or of garbage.
    Static([u8; 32]),
}

const INVALID: ApiError = ApiError::Unauthorized("Session token is invalid or expired.");

/// Reads and checks the token itself (no database read unless a key rotated elsewhere).
async fn credential(parts: &Parts, state: &AppState) -> Result<Option<Credential>, ApiError> {
    let token = parts
        .headers
        .get(SESSION_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized(
            "Session token required in header Coder-Session-Token.",
        ))?;
    if token.len() > 512 {
        return Err(INVALID);
    }
    if !(token.starts_with(SESSION_TOKEN_PREFIX) || token.starts_with(LEGACY_TOKEN_PREFIX)) {
        return Ok(Some(Credential::Static(token_hash(token))));
    }
    let now = chrono::Utc::now();
    let mut checked = state.inner.sessions.check(token, now);
    // Signed by a key rotated in by another process: read the keys and try once more.
    if let Err(TokenError::UnknownKey(_)) = checked {
        if state.reload_session_keys().await? {
            checked = state.inner.sessions.check(token, now);
        }
    }
    Ok(checked.ok().map(Credential::Session))
}

/// The agent a request is authenticated as, with what the manifest reports (one read).
pub struct AuthedAgent(pub AgentContext);

impl FromRequestParts<AppState> for AuthedAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let store = &state.inner.store;
        let agent = match credential(parts, state).await? {
            Some(Credential::Session(c)) => {
                store.session_agent_by_id(c.agent_id, c.generation).await?
            }
            Some(Credential::Static(hash)) => store.token_agent(&hash).await?,
            None => None,
        };
        agent.map(AuthedAgent).ok_or(INVALID)
    }
}

/// The id of the live agent a request is authenticated as, from the liveness cache: the
/// heartbeat's check, with no database read while the agent's entry is cached.
pub struct LiveAgent(pub Uuid);

impl FromRequestParts<AppState> for LiveAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let store = &state.inner.store;
        let agent = match credential(parts, state).await? {
            Some(Credential::Session(c)) => store
                .session_live(c.agent_id, c.generation)
                .await?
                .then_some(c.agent_id),
            Some(Credential::Static(hash)) => store.token_live(&hash).await?,
            None => None,
        };
        agent.map(LiveAgent).ok_or(INVALID)
    }
}

/// `GET /api/v2/workspaceagents/me/manifest`
pub(crate) async fn manifest(AuthedAgent(a): AuthedAgent) -> Json<Manifest> {
    Json(Manifest {
        agent_id: a.agent_id,
        agent_name: a.agent_name,
        workspace_id: a.workspace_id,
        workspace_name: a.workspace_name,
        build_number: a.build_number,
        resource_name: a.resource_name,
        resource_type: a.resource_type,
    })
}

/// `POST /api/v2/workspaceagents/me/heartbeat` → 204
pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    LiveAgent(agent_id): LiveAgent,
    JsonBody(body): JsonBody<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    let lifecycle = match body.lifecycle_state.known() {
        Some(LifecycleState::Created) | None => {
            return Err(ApiError::Validation(vec![ValidationError {
                field: "lifecycle_state".into(),
                detail: "must be one of starting, ready, shutting_down, off".into(),
            }]))
        }
        Some(s) => s,
    };
    state
        .inner
        .store
        .record_heartbeat(agent_id, lifecycle)
        .await?;
    state.inner.metrics.heartbeat();
    Ok(StatusCode::NO_CONTENT.into_response())
}
