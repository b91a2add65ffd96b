//! Wire types shared by the instauth server, its admin CLI and the agent.
//!
//! Field names follow Coder's agent-auth API (`/api/v2/...`) so that Coder-style templates and
//! agents work unchanged. This crate performs no IO. Beyond serde it holds one piece of logic,
//! the agent key message and fingerprint ([`agent_key`]), which server and agent must share.

use std::collections::BTreeMap;

pub mod routes;

use serde::{Deserialize, Serialize};

pub mod agent_key;
mod vocabulary;

pub use agent_key::{AgentKeyFields, ExchangeBody, ExchangeRequest};
pub use vocabulary::{
    AgentAuth, ConnectionStatus, LifecycleState, Proof, Provider, UnknownValue, Wire,
};

/// Body of `POST /api/v2/workspaceagents/aws-instance-identity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsInstanceIdentityRequest {
    /// The instance identity document exactly as IMDS returns it.
    #[serde(default)]
    pub document: String,
    /// Base64 of `/latest/dynamic/instance-identity/signature`.
    #[serde(default)]
    pub signature: String,
    /// Base64 body of `/latest/dynamic/instance-identity/rsa2048` (PKCS#7), preferred when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs7: Option<String>,
    /// The agent's name, when several root agents share the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
}

/// Body of `POST /api/v2/workspaceagents/azure-instance-identity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureInstanceIdentityRequest {
    /// Base64 DER PKCS#7 from `/metadata/attested/document`.
    #[serde(default)]
    pub signature: String,
    /// Always `pkcs7`.
    #[serde(default)]
    pub encoding: String,
    /// The agent's name, when several root agents share the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
}

/// Body of `POST /api/v2/workspaceagents/google-instance-identity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoogleInstanceIdentityRequest {
    /// RS256 JWT from the metadata server's `identity` endpoint (`format=full`).
    #[serde(default)]
    pub json_web_token: String,
    /// The agent's name, when several root agents share the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
}

/// Successful exchange response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthenticateResponse {
    /// Opaque session token, sent later as header `Coder-Session-Token`.
    pub session_token: String,
}

/// One field-level validation problem in an error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    /// The JSON field at fault (dotted path for nested fields).
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

/// The JSON body of every error response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// A sentence for humans; stable for a given condition.
    pub message: String,
    /// Which check failed, when that helps (never secret material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Field problems for 400 responses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validations: Vec<ValidationError>,
    /// Candidate agent names for 404/409 exchange responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_names: Option<Vec<String>>,
}

/// The header that carries an agent's session token.
pub const SESSION_TOKEN_HEADER: &str = "Coder-Session-Token";

/// `GET /api/v2/workspaceagents/me/manifest` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The agent's id.
    pub agent_id: uuid::Uuid,
    /// The agent's name.
    pub agent_name: String,
    /// The workspace's id.
    pub workspace_id: uuid::Uuid,
    /// The workspace's name.
    pub workspace_name: String,
    /// The build the agent belongs to (the latest).
    pub build_number: i32,
    /// The resource the agent runs on.
    pub resource_name: String,
    /// That resource's type, e.g. `aws_instance`.
    pub resource_type: String,
}

/// `POST /api/v2/workspaceagents/me/heartbeat` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// `starting`, `ready`, `shutting_down` or `off`; an unknown spelling is kept so that the
    /// server can name the field in its validation error.
    pub lifecycle_state: Wire<LifecycleState>,
}

/// An agent of a build to create (`POST /api/v2/workspaces/{workspace}/builds`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Unique within the build: `[a-zA-Z0-9_-]{1,64}`.
    pub name: String,
    /// `token`, `aws-instance-identity`, `azure-instance-identity` or `google-instance-identity`;
    /// an unknown spelling is kept so that validation can name the field.
    pub auth: Wire<AgentAuth>,
    /// The cloud's instance ID, for instance identity auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The parent agent's name, for a sub-agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Every exchange for this agent must be signed with its agent key (SPEC §2.1).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_agent_key: bool,
}

/// A resource of a build to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// Resource name.
    pub name: String,
    /// Resource type, e.g. `aws_instance`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Its agents.
    #[serde(default)]
    pub agents: Vec<AgentSpec>,
    /// What the verified identity of the resource's agents must say (SPEC §4): `account_id` and
    /// `region` (AWS), `subscription_id` and `location` (Azure), `project_id` and `zone` (GCP),
    /// each optional. Values are kept as sent so that validation can name a wrong key or a
    /// value that is not a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<BTreeMap<String, serde_json::Value>>,
}

/// Body of `POST /api/v2/workspaces/{workspace}/builds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// The build's resources.
    pub resources: Vec<ResourceSpec>,
}

/// An agent created by a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedAgent {
    /// New agent id.
    pub id: uuid::Uuid,
    /// Its name.
    pub name: String,
    /// The agent token, for `auth: "token"` agents only; shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Response of `POST /api/v2/workspaces/{workspace}/builds` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildResponse {
    /// Workspace name.
    pub workspace: String,
    /// The new build's number.
    pub build_number: i32,
    /// The new build's agents.
    pub agents: Vec<CreatedAgent>,
}

/// An agent's status in the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Agent id.
    pub id: uuid::Uuid,
    /// Name.
    pub name: String,
    /// Resource it runs on.
    pub resource_name: String,
    /// Authentication method.
    pub auth: AgentAuth,
    /// Cloud instance ID, if any.
    pub instance_id: Option<String>,
    /// Parent agent's name, for sub-agents.
    pub parent: Option<String>,
    /// `connecting` (never seen), `connected` (heartbeat younger than 3 intervals) or
    /// `disconnected`.
    pub status: ConnectionStatus,
    /// Last reported lifecycle state (`created` before the first report).
    pub lifecycle_state: LifecycleState,
    /// First heartbeat (RFC 3339, UTC).
    pub first_connected_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Latest heartbeat (RFC 3339, UTC).
    pub last_connected_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Declared with `"require_agent_key": true`.
    #[serde(default)]
    pub require_agent_key: bool,
    /// The agent key bound to the agent, if any (SPEC §2.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_key: Option<AgentKeyInfo>,
}

/// An agent's bound key in the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentKeyInfo {
    /// base64url (no padding) of the Ed25519 public key.
    pub public_key: String,
    /// [`agent_key::fingerprint`] of it: what `workspaces show` prints.
    pub fingerprint: String,
    /// When the agent's first signed exchange bound it (RFC 3339, UTC).
    pub bound_at: chrono::DateTime<chrono::Utc>,
}

/// A resource in the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceInfo {
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The resource's expectations, as declared (claim name → value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<BTreeMap<String, String>>,
}

/// A workspace in `GET /api/v2/workspaces` and `GET /api/v2/workspaces/{workspace}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    /// Name.
    pub name: String,
    /// Latest build number.
    pub build_number: i32,
    /// Resources of the latest build (always present in `show`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<ResourceInfo>>,
    /// Agents of the latest build.
    pub agents: Vec<AgentStatus>,
}

/// One record of `GET /api/v2/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing record id: the cursor of `GET /api/v2/audit?after=ID`.
    pub id: i64,
    /// When (RFC 3339, UTC).
    pub time: chrono::DateTime<chrono::Utc>,
    /// `aws`, `azure` or `gcp`.
    pub provider: Provider,
    /// The instance ID (empty when the proof did not verify).
    pub instance_id: String,
    /// The requested agent name (trimmed, may be empty).
    pub agent_name: String,
    /// `ok`, `bad_request`, `unauthorized`, `forbidden`, `key_required`, `key_mismatch`,
    /// `not_found`, `conflict`, `too_large`, `rate_limited` or `unavailable`.
    pub outcome: String,
    /// The selected agent, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<uuid::Uuid>,
    /// The client's address.
    pub remote_addr: String,
    /// Why the attempt failed: the check that failed (never proof material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
