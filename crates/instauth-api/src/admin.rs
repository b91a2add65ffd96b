//! The admin API (SPEC.md §4), authenticated by `Authorization: Bearer <admin token>`.

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{NaiveDateTime, Utc};
use instauth_store::{validate_build, AgentAuth, AuditRecord, StoreError, Workspace};
use instauth_types::{
    agent_key, AgentKeyInfo, AgentStatus, AuditEntry, BuildRequest, BuildResponse,
    ConnectionStatus, CreatedAgent, ResourceInfo, ValidationError, WorkspaceInfo,
};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{JsonBody, PathParam};
use crate::{token_hash, AppState};

/// Proof that the request carried the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized(
                "Admin token required: send Authorization: Bearer <token>.",
            ))?;
        // Compare digests in constant time: neither the token's length nor a prefix leaks.
        if bool::from(token_hash(given).ct_eq(&state.inner.admin_token_hash)) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("Admin token is invalid."))
        }
    }
}

fn new_agent_token() -> String {
    format!(
        "iat_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::session::random_secret())
    )
}

/// `POST /api/v2/workspaces/{workspace}/builds` → 201
pub(crate) async fn create_build(
    State(state): State<AppState>,
    _: Admin,
    PathParam(workspace): PathParam<String>,
    JsonBody(body): JsonBody<BuildRequest>,
) -> Result<Response, ApiError> {
    let mut build = validate_build(&workspace, body).map_err(StoreError::Validation)?;
    // Static agent tokens are shown once, in this response; the store keeps their hashes.
    let tokens: Vec<Option<String>> = build
        .agents_mut()
        .iter_mut()
        .map(|a| {
            (a.auth() == AgentAuth::Token).then(|| {
                let token = new_agent_token();
                a.set_token_hash(token_hash(&token).to_vec());
                token
            })
        })
        .collect();
    let created = state.inner.store.create_build(&build).await?;
    let agents = created
        .agents
        .into_iter()
        .zip(tokens)
        .map(|(a, token)| CreatedAgent {
            id: a.id,
            name: a.name,
            token,
        })
        .collect();
    tracing::info!(workspace = %workspace, build_number = created.build_number, "Build created.");
    Ok((
        StatusCode::CREATED,
        Json(BuildResponse {
            workspace,
            build_number: created.build_number,
            agents,
        }),
    )
        .into_response())
}

fn utc(t: Option<NaiveDateTime>) -> Option<chrono::DateTime<Utc>> {
    t.map(|t| t.and_utc())
}

/// A stored workspace as the admin API (and the dashboard) shows it, with each agent's status.
pub(crate) fn info(state: &AppState, w: Workspace, with_resources: bool) -> WorkspaceInfo {
    let fresh_after = Utc::now().naive_utc() - state.inner.heartbeat_interval * 3;
    WorkspaceInfo {
        name: w.name,
        build_number: w.build_number,
        resources: with_resources.then(|| {
            w.resources
                .into_iter()
                .map(|r| ResourceInfo {
                    expect: r.expect.map(|e| {
                        e.claims()
                            .into_iter()
                            .map(|(claim, value)| (claim.to_owned(), value.to_owned()))
                            .collect()
                    }),
                    name: r.name,
                    resource_type: r.resource_type,
                })
                .collect()
        }),
        agents: w
            .agents
            .into_iter()
            .map(|a| AgentStatus {
                id: a.id,
                name: a.name,
                resource_name: a.resource_name,
                auth: a.auth,
                instance_id: a.instance_id,
                parent: a.parent,
                status: match a.last_connected_at {
                    None => ConnectionStatus::Connecting,
                    Some(t) if t > fresh_after => ConnectionStatus::Connected,
                    Some(_) => ConnectionStatus::Disconnected,
                },
                lifecycle_state: a.lifecycle_state,
                first_connected_at: utc(a.first_connected_at),
                last_connected_at: utc(a.last_connected_at),
                require_agent_key: a.require_agent_key,
                agent_key: a.agent_key.map(|k| AgentKeyInfo {
                    public_key: agent_key::encode(&k.public_key),
                    fingerprint: agent_key::fingerprint(&k.public_key),
                    bound_at: k.bound_at.and_utc(),
                }),
            })
            .collect(),
    }
}

/// `GET /api/v2/workspaces`
pub(crate) async fn list_workspaces(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<Vec<WorkspaceInfo>>, ApiError> {
    let all = state.inner.store.list_workspaces().await?;
    Ok(Json(
        all.into_iter().map(|w| info(&state, w, false)).collect(),
    ))
}

/// A workspace name from the path: one that no workspace can have is not found, and one with
/// control characters is refused outright (it must not reach the database or a log).
fn workspace_param(name: String) -> Result<String, ApiError> {
    if instauth_store::validate::has_control(&name) {
        return Err(ApiError::Validation(vec![ValidationError {
            field: "workspace".into(),
            detail: "must not contain control characters".into(),
        }]));
    }
    if !instauth_store::validate::is_valid_workspace_name(&name) {
        return Err(workspace_not_found(&name));
    }
    Ok(name)
}

fn workspace_not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "Workspace \"{}\" not found.",
        name.chars().take(64).collect::<String>()
    ))
}

/// `GET /api/v2/workspaces/{workspace}`
pub(crate) async fn show_workspace(
    State(state): State<AppState>,
    _: Admin,
    PathParam(name): PathParam<String>,
) -> Result<Json<WorkspaceInfo>, ApiError> {
    let name = workspace_param(name)?;
    match state.inner.store.get_workspace(&name).await? {
        Some(w) => Ok(Json(info(&state, w, true))),
        None => Err(workspace_not_found(&name)),
    }
}

/// `DELETE /api/v2/workspaces/{workspace}` → 204
pub(crate) async fn delete_workspace(
    State(state): State<AppState>,
    _: Admin,
    PathParam(name): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let name = workspace_param(name)?;
    if state.inner.store.delete_workspace(&name).await? {
        tracing::info!(workspace = %name, "Workspace deleted.");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(workspace_not_found(&name))
    }
}

/// `DELETE /api/v2/workspaces/{workspace}/agents/{agent}/key` → 204: forgets the agent's bound
/// key (after its VM was rebuilt in place) and ends its sessions; its next signed exchange binds
/// again.
pub(crate) async fn reset_agent_key(
    State(state): State<AppState>,
    _: Admin,
    PathParam((workspace, agent)): PathParam<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if state
        .inner
        .store
        .reset_agent_key(&workspace, &agent)
        .await?
    {
        tracing::info!(workspace = %workspace, agent.name = %agent, "Agent key binding reset.");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(agent_not_found(&workspace, &agent))
    }
}

/// 404 for an agent name that the latest build of a live workspace does not have.
pub(crate) fn agent_not_found(workspace: &str, agent: &str) -> ApiError {
    let short = |s: &str| s.chars().take(64).collect::<String>();
    ApiError::NotFound(format!(
        "Agent \"{}\" not found in workspace \"{}\".",
        short(agent),
        short(workspace)
    ))
}

/// `DELETE /api/v2/workspaceagents/{agent_id}/sessions` → 204: ends every session of an agent;
/// the agent exchanges its proof again.
pub(crate) async fn revoke_sessions(
    State(state): State<AppState>,
    _: Admin,
    PathParam(agent_id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&agent_id).map_err(|_| {
        ApiError::Validation(vec![ValidationError {
            field: "agent_id".into(),
            detail: "must be a UUID".into(),
        }])
    })?;
    if state.inner.store.revoke_agent_sessions(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("Agent \"{id}\" not found.")))
    }
}

/// Query of `GET /api/v2/audit`, kept as text so each bad parameter is named in the 400.
#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// Default and largest `limit` of `GET /api/v2/audit`.
pub const AUDIT_LIMIT: (i64, i64) = (100, 1000);

/// `GET /api/v2/audit?limit=N` → newest first; with `after=ID`, the records with a larger id,
/// oldest first (a cursor for following the log).
pub(crate) async fn audit(
    State(state): State<AppState>,
    _: Admin,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let (limit, after) = match query {
        Ok(Query(q)) => (q.limit, q.after),
        Err(_) => (Some(String::new()), None),
    };
    let limit = match limit {
        None => Some(AUDIT_LIMIT.0),
        Some(l) => l.parse().ok().filter(|l| (1..=AUDIT_LIMIT.1).contains(l)),
    };
    let after = match after {
        None => Ok(None),
        Some(a) => a
            .parse::<i64>()
            .ok()
            .filter(|a| *a >= 0)
            .map(Some)
            .ok_or(()),
    };
    let mut problems = Vec::new();
    if limit.is_none() {
        problems.push(ValidationError {
            field: "limit".into(),
            detail: "must be a whole number from 1 to 1000".into(),
        });
    }
    if after.is_err() {
        problems.push(ValidationError {
            field: "after".into(),
            detail: "must be a whole number, the id of an audit record".into(),
        });
    }
    let (Some(limit), Ok(after)) = (limit, after) else {
        return Err(ApiError::Validation(problems));
    };
    let records = match after {
        None => state.inner.store.list_audit(limit).await?,
        Some(after) => state.inner.store.list_audit_after(after, limit).await?,
    };
    Ok(Json(records.into_iter().map(audit_entry).collect()))
}

/// A stored audit record as the admin API (and the dashboard) shows it.
pub(crate) fn audit_entry(r: AuditRecord) -> AuditEntry {
    AuditEntry {
        id: r.id,
        time: r.record.time.and_utc(),
        provider: r.record.provider,
        instance_id: r.record.instance_id,
        agent_name: r.record.agent_name,
        outcome: r.record.outcome,
        agent_id: r.record.agent_id,
        remote_addr: r.record.remote_addr,
        reason: r.record.reason,
    }
}
