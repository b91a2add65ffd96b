//! Wire types shared by the instauth server, its admin CLI and the agent.
//!
//! Field names follow Coder's agent-auth API (`/api/v2/...`) so that Coder-style templates and
//! agents work unchanged. This crate performs no IO.

use serde::{Deserialize, Serialize};

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
