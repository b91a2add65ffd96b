//! Public data types of the store API. Rows are read straight into these structs: ids and
//! vocabulary values go through `crate::text`, so no caller parses a stored string.

use chrono::NaiveDateTime;
use diesel::Queryable;
use instauth_types::{AgentAuth, LifecycleState, Provider};
use serde::Serialize;
use uuid::Uuid;

use crate::text::{MaybeTextual, Textual};

/// One validation problem, named by its JSON field path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Field path, e.g. `resources[0].agents[1].name`.
    pub field: String,
    /// What is wrong.
    pub detail: String,
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
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct Candidate {
    /// Agent id.
    #[diesel(deserialize_as = Textual<Uuid>)]
    pub agent_id: Uuid,
    /// Agent name.
    pub agent_name: String,
    /// The agent's authentication method.
    #[diesel(deserialize_as = Textual<AgentAuth>)]
    pub auth: AgentAuth,
    /// The workspace's id.
    #[diesel(deserialize_as = Textual<Uuid>)]
    pub workspace_id: Uuid,
    /// The workspace's name.
    pub workspace_name: String,
    /// The agent's session generation, signed into its session tokens.
    pub session_generation: i32,
    /// The Ed25519 public key bound to the agent, if any (SPEC §2.1).
    pub agent_public_key: Option<Vec<u8>>,
    /// The build declared that the agent must sign its exchanges.
    pub require_agent_key: bool,
    /// The name of the resource the agent runs on, when the resource has an `expect` (the
    /// expectation is copied onto the agent's row when its build is created).
    pub expect_resource: Option<String>,
    /// The cloud named by the resource's `expect`, if it has one.
    #[diesel(deserialize_as = MaybeTextual<Provider>)]
    pub expect_provider: Option<Provider>,
    /// The resource's expected account-like claim.
    pub expect_account: Option<String>,
    /// The resource's expected location-like claim.
    pub expect_location: Option<String>,
}

impl Candidate {
    /// The resource's name and expectation, if it has one.
    pub fn expect(&self) -> Option<(&str, ResourceExpect)> {
        let provider = self.expect_provider?;
        Some((
            self.expect_resource.as_deref().unwrap_or_default(),
            ResourceExpect {
                provider,
                account: self.expect_account.clone(),
                location: self.expect_location.clone(),
            },
        ))
    }
}

/// A resource's `expect` (SPEC §4): what the verified identity of its agents must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceExpect {
    /// The cloud whose claims are named (that of the resource's root agents).
    pub provider: Provider,
    /// Expected AWS `account_id`, Azure `subscription_id` or GCP `project_id`.
    pub account: Option<String>,
    /// Expected AWS `region`, Azure `location` or GCP `zone`.
    pub location: Option<String>,
}

impl ResourceExpect {
    /// The expectation as the build declared it: claim name → value.
    pub fn claims(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::with_capacity(2);
        if let Some(a) = &self.account {
            out.push((self.provider.account_claim(), a.as_str()));
        }
        if let Some(l) = &self.location {
            out.push((self.provider.location_claim(), l.as_str()));
        }
        out
    }
}

/// An agent's bound key, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundKey {
    /// The raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// When the agent's first signed exchange bound it.
    pub bound_at: NaiveDateTime,
}

/// Everything the agent API needs to know about an authenticated agent.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct AgentContext {
    /// Agent id.
    #[diesel(deserialize_as = Textual<Uuid>)]
    pub agent_id: Uuid,
    /// Agent name.
    pub agent_name: String,
    /// Workspace id.
    #[diesel(deserialize_as = Textual<Uuid>)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Name.
    pub name: String,
    /// Type.
    pub resource_type: String,
    /// Its `expect`, if it has one.
    pub expect: Option<ResourceExpect>,
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
    /// The build declared that the agent must sign its exchanges.
    pub require_agent_key: bool,
    /// The key bound to the agent, if any.
    pub agent_key: Option<BoundKey>,
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
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct NewAuditRecord {
    /// When the attempt happened (UTC).
    pub time: NaiveDateTime,
    /// The cloud whose endpoint was called.
    #[diesel(deserialize_as = Textual<Provider>)]
    pub provider: Provider,
    /// The instance ID claimed or verified (may be empty when the proof did not parse).
    pub instance_id: String,
    /// The requested agent name (trimmed; may be empty).
    pub agent_name: String,
    /// `ok`, `bad_request`, `unauthorized`, `not_found`, `conflict`, ...
    pub outcome: String,
    /// The selected agent, on success.
    #[diesel(deserialize_as = MaybeTextual<Uuid>)]
    pub agent_id: Option<Uuid>,
    /// The client's address.
    pub remote_addr: String,
    /// Why the attempt failed (the check that failed; never proof material).
    pub reason: Option<String>,
    /// How many attempts the record stands for (rate-limited attempts of one client in one
    /// minute share a record); 1 otherwise.
    pub count: i32,
    /// Made when the attempt was answered: a retried insert never stores a record twice.
    #[diesel(deserialize_as = Textual<Uuid>)]
    pub uid: Uuid,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct AuditRecord {
    /// Monotonic id.
    pub id: i64,
    /// The stored fields.
    pub record: NewAuditRecord,
}
