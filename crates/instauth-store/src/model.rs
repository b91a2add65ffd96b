//! Public data types of the store API.

use chrono::NaiveDateTime;
use serde::Serialize;
use uuid::Uuid;

/// How an agent authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentAuth {
    /// A static agent token issued when the build is created.
    Token,
    /// AWS instance identity document.
    AwsInstanceIdentity,
    /// Azure attested data.
    AzureInstanceIdentity,
    /// Google instance identity JWT.
    GoogleInstanceIdentity,
}

impl AgentAuth {
    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentAuth::Token => "token",
            AgentAuth::AwsInstanceIdentity => "aws-instance-identity",
            AgentAuth::AzureInstanceIdentity => "azure-instance-identity",
            AgentAuth::GoogleInstanceIdentity => "google-instance-identity",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "token" => AgentAuth::Token,
            "aws-instance-identity" => AgentAuth::AwsInstanceIdentity,
            "azure-instance-identity" => AgentAuth::AzureInstanceIdentity,
            "google-instance-identity" => AgentAuth::GoogleInstanceIdentity,
            _ => return None,
        })
    }

    /// True for the three cloud instance identity methods.
    pub fn is_instance_identity(self) -> bool {
        !matches!(self, AgentAuth::Token)
    }
}

pub use instauth_types::LifecycleState;

/// One validation problem, named by its JSON field path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Field path, e.g. `resources[0].agents[1].name`.
    pub field: String,
    /// What is wrong.
    pub detail: String,
}

/// A build to create.
#[derive(Debug, Clone, Default)]
pub struct NewBuild {
    /// The build's resources with their agents.
    pub resources: Vec<NewResource>,
}

/// A resource of a new build.
#[derive(Debug, Clone, Default)]
pub struct NewResource {
    /// Resource name, e.g. `dev`.
    pub name: String,
    /// Resource type, e.g. `aws_instance`.
    pub resource_type: String,
    /// Agents running on this resource.
    pub agents: Vec<NewAgent>,
}

/// An agent of a new build.
#[derive(Debug, Clone)]
pub struct NewAgent {
    /// Unique within the build.
    pub name: String,
    /// Authentication method (wire spelling, validated by the store).
    pub auth: String,
    /// The cloud instance ID, required for instance identity auth.
    pub instance_id: Option<String>,
    /// Name of the parent agent in the same build (makes this a sub-agent).
    pub parent: Option<String>,
    /// Hash of the static agent token, for `token` agents. Never the token itself.
    pub token_hash: Option<Vec<u8>>,
}

/// The result of creating a build.
#[derive(Debug, Clone)]
pub struct CreatedBuild {
    /// The workspace's id.
    pub workspace_id: Uuid,
    /// The new build's number (1, 2, ...).
    pub build_number: i32,
    /// The new agents, in request order.
    pub agents: Vec<CreatedAgent>,
}

/// An agent created by [`crate::Store::create_build`].
#[derive(Debug, Clone)]
pub struct CreatedAgent {
    /// New agent id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its authentication method.
    pub auth: AgentAuth,
}

/// A root agent that may authenticate with an instance ID: the row the exchange decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Agent id.
    pub agent_id: Uuid,
    /// Agent name.
    pub agent_name: String,
    /// The agent's authentication method.
    pub auth: AgentAuth,
    /// The resource the agent runs on.
    pub resource_name: String,
    /// The workspace's id.
    pub workspace_id: Uuid,
    /// The workspace's name.
    pub workspace_name: String,
    /// The agent's session generation, signed into its session tokens.
    pub session_generation: i32,
}

/// Everything the agent API needs to know about an authenticated agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentContext {
    /// Agent id.
    pub agent_id: Uuid,
    /// Agent name.
    pub agent_name: String,
    /// Workspace id.
    pub workspace_id: Uuid,
    /// Workspace name.
    pub workspace_name: String,
    /// Build number of the agent's build (the latest one).
    pub build_number: i32,
    /// Resource name.
    pub resource_name: String,
    /// Resource type.
    pub resource_type: String,
}

/// A resource in a workspace listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// Name.
    pub name: String,
    /// Type.
    #[serde(rename = "type")]
    pub resource_type: String,
}

/// An agent in a workspace listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Agent id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The resource it runs on.
    pub resource_name: String,
    /// Authentication method.
    pub auth: AgentAuth,
    /// Cloud instance ID, if any.
    pub instance_id: Option<String>,
    /// Parent agent's name, for sub-agents.
    pub parent: Option<String>,
    /// Last reported lifecycle state.
    pub lifecycle_state: LifecycleState,
    /// First heartbeat.
    pub first_connected_at: Option<NaiveDateTime>,
    /// Latest heartbeat.
    pub last_connected_at: Option<NaiveDateTime>,
}

/// A workspace with its latest build's resources and agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// Workspace id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Latest build number.
    pub build_number: i32,
    /// Resources of the latest build, by name.
    pub resources: Vec<Resource>,
    /// Agents of the latest build, by name.
    pub agents: Vec<Agent>,
}

/// An audit record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditRecord {
    /// When the attempt happened (UTC).
    pub time: NaiveDateTime,
    /// `aws`, `azure` or `gcp`.
    pub provider: String,
    /// The instance ID claimed or verified (may be empty when the proof did not parse).
    pub instance_id: String,
    /// The requested agent name (trimmed; may be empty).
    pub agent_name: String,
    /// `ok`, `bad_request`, `unauthorized`, `not_found`, `conflict`, ...
    pub outcome: String,
    /// The selected agent, on success.
    pub agent_id: Option<Uuid>,
    /// The client's address.
    pub remote_addr: String,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Monotonic id.
    pub id: i64,
    /// The stored fields.
    pub record: NewAuditRecord,
}
