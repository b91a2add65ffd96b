//! A client for the instauth admin API (SPEC.md §4): builds, workspaces and the audit log, with
//! typed errors that carry the server's JSON error body, renderers that turn the answers into
//! tables for people ([`render`]), and the import of a Terraform state into a build
//! ([`terraform`]).
//!
//! Architecture invariant: URLs come only from [`instauth_types::routes`]; this crate knows no
//! path of its own. It reads no files and no environment: the caller passes the URL and token.

pub mod render;
pub mod terraform;

use std::fmt::Write as _;
use std::time::Duration;

use instauth_types::{
    routes, AuditEntry, BuildRequest, BuildResponse, ErrorResponse, WorkspaceInfo,
};
use serde::de::DeserializeOwned;

/// Largest successful response read (a list of every workspace with its agents).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest error response read; the rest is dropped.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server URL is unusable.
    #[error("server URL {url:?}: {detail}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it is unusable.
        detail: String,
    },
    /// A name cannot be sent as a path segment (empty, `.` or `..`).
    #[error("{what} name {name:?} is not valid")]
    Name {
        /// `workspace`, `agent`, ...
        what: &'static str,
        /// The name as given.
        name: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Setup(String),
    /// No answer: connection refused, timeout, TLS failure, ...
    #[error("cannot reach {endpoint}")]
    Request {
        /// The URL called.
        endpoint: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status; `body` is its JSON error body (or, from
    /// something that is not instauth, the start of its text as `message`).
    #[error("{}", api_message(*status, body))]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body.
        body: ErrorResponse,
    },
    /// A success status with a body that is not what the API documents.
    #[error("unexpected answer from {endpoint}: {detail}")]
    Decode {
        /// The URL called.
        endpoint: String,
        /// What did not fit.
        detail: String,
    },
}

impl ClientError {
    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `404 Not Found: message (detail)` and one indented line per validation, as the CLI prints.
fn api_message(status: u16, body: &ErrorResponse) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!("{status} {reason}: {}", body.message)
        .trim_end()
        .to_owned();
    if let Some(detail) = body.detail.as_deref().filter(|d| !d.is_empty()) {
        let _ = write!(out, " ({detail})");
    }
    for v in &body.validations {
        let _ = write!(out, "\n  {}: {}", v.field, v.detail);
    }
    render::escape_controls(&out)
}

/// A result of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// An admin API client for one server. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client").field("url", &self.base).finish()
    }
}

impl Client {
    /// A client for the server at `url` (`http` or `https`) authenticating with `admin_token`.
    pub fn new(url: &str, admin_token: &str) -> Result<Client> {
        let parsed = reqwest::Url::parse(url.trim()).map_err(|e| ClientError::Url {
            url: url.to_owned(),
            detail: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::Url {
                url: url.to_owned(),
                detail: "scheme must be http or https".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Client {
            http,
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            token: admin_token.trim().to_owned(),
        })
    }

    /// The server URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// `POST /api/v2/workspaces/{workspace}/builds`: a new build, which becomes the latest.
    pub async fn apply_build(
        &self,
        workspace: &str,
        build: &BuildRequest,
    ) -> Result<BuildResponse> {
        let path = routes::workspace_builds(usable("workspace", workspace)?);
        let endpoint = self.endpoint(&path);
        self.json(self.http.post(&endpoint).json(build), &endpoint)
            .await
    }

    /// `GET /api/v2/workspaces`.
    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceInfo>> {
        let endpoint = self.endpoint(routes::WORKSPACES);
        self.json(self.http.get(&endpoint), &endpoint).await
    }

    /// `GET /api/v2/workspaces/{workspace}`: the latest build with its agents' status.
    pub async fn workspace(&self, workspace: &str) -> Result<WorkspaceInfo> {
        let endpoint = self.endpoint(&routes::workspace(usable("workspace", workspace)?));
        self.json(self.http.get(&endpoint), &endpoint).await
    }

    /// `DELETE /api/v2/workspaces/{workspace}`.
    pub async fn delete_workspace(&self, workspace: &str) -> Result<()> {
        let endpoint = self.endpoint(&routes::workspace(usable("workspace", workspace)?));
        self.send(self.http.delete(&endpoint), &endpoint)
            .await
            .map(drop)
    }

    /// `DELETE /api/v2/workspaces/{workspace}/agents/{agent}/key`: forgets the key bound to the
    /// agent and ends its sessions; its next signed exchange binds again.
    pub async fn reset_agent_key(&self, workspace: &str, agent: &str) -> Result<()> {
        let endpoint = self.endpoint(&routes::agent_key(
            usable("workspace", workspace)?,
            usable("agent", agent)?,
        ));
        self.send(self.http.delete(&endpoint), &endpoint)
            .await
            .map(drop)
    }

    /// `DELETE /api/v2/workspaceagents/{agent_id}/sessions`: ends every session of an agent.
    pub async fn revoke_sessions(&self, agent_id: uuid::Uuid) -> Result<()> {
        let endpoint = self.endpoint(&routes::agent_sessions(&agent_id.to_string()));
        self.send(self.http.delete(&endpoint), &endpoint)
            .await
            .map(drop)
    }

    /// `GET /api/v2/audit?limit=N`: the newest records, newest first.
    pub async fn audit(&self, limit: Option<u32>) -> Result<Vec<AuditEntry>> {
        let endpoint = self.endpoint(&routes::audit(limit, None));
        self.json(self.http.get(&endpoint), &endpoint).await
    }

    /// `GET /api/v2/audit?after=ID&limit=N`: the records after `after`, oldest first.
    pub async fn audit_after(&self, after: i64, limit: Option<u32>) -> Result<Vec<AuditEntry>> {
        let endpoint = self.endpoint(&routes::audit(limit, Some(after)));
        self.json(self.http.get(&endpoint), &endpoint).await
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ClientError::Request {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = read_capped(resp, MAX_ERROR_BYTES, endpoint).await?;
        let body = serde_json::from_slice::<ErrorResponse>(&bytes).unwrap_or_else(|_| {
            // Not instauth (a proxy's page?): keep the start of its text.
            let text = String::from_utf8_lossy(&bytes);
            ErrorResponse {
                message: text.trim().chars().take(200).collect(),
                ..ErrorResponse::default()
            }
        });
        Err(ClientError::Api { status, body })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        endpoint: &str,
    ) -> Result<T> {
        let resp = self.send(req, endpoint).await?;
        let bytes = read_capped(resp, MAX_RESPONSE_BYTES, endpoint).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            endpoint: endpoint.to_owned(),
            detail: e.to_string(),
        })
    }
}

fn usable<'a>(what: &'static str, name: &'a str) -> Result<&'a str> {
    if routes::is_usable_segment(name) {
        Ok(name)
    } else {
        Err(ClientError::Name {
            what,
            name: name.to_owned(),
        })
    }
}

/// Reads at most `cap` bytes of the body; a longer success body is an error, a longer error body
/// is cut (its start says what went wrong).
async fn read_capped(mut resp: reqwest::Response, cap: usize, endpoint: &str) -> Result<Vec<u8>> {
    let is_error = !resp.status().is_success();
    let mut out = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|source| ClientError::Request {
            endpoint: endpoint.to_owned(),
            source,
        })?;
        let Some(chunk) = chunk else {
            return Ok(out);
        };
        let room = cap - out.len();
        if chunk.len() > room {
            if is_error {
                out.extend_from_slice(&chunk[..room]);
                return Ok(out);
            }
            return Err(ClientError::Decode {
                endpoint: endpoint.to_owned(),
                detail: format!("answer larger than {cap} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use instauth_types::ValidationError;

    #[test]
    fn api_errors_render_message_detail_and_validations() {
        let e = ClientError::Api {
            status: 400,
            body: ErrorResponse {
                message: "Validation failed.".into(),
                detail: Some("two problems".into()),
                validations: vec![
                    ValidationError {
                        field: "resources[0].agents[1].name".into(),
                        detail: "duplicate agent name \"dev\"".into(),
                    },
                    ValidationError {
                        field: "workspace".into(),
                        detail: "must match [a-z0-9][a-z0-9-]{0,63}".into(),
                    },
                ],
                agent_names: None,
            },
        };
        assert_eq!(
            e.to_string(),
            "400 Bad Request: Validation failed. (two problems)\n  \
             resources[0].agents[1].name: duplicate agent name \"dev\"\n  \
             workspace: must match [a-z0-9][a-z0-9-]{0,63}"
        );
        assert_eq!(e.status(), Some(400));
    }

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        let e = ClientError::Api {
            status: 404,
            body: ErrorResponse {
                message: "Workspace \"\u{1b}[31mx\" not found.".into(),
                ..ErrorResponse::default()
            },
        };
        let text = e.to_string();
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("\\u{1b}[31mx"), "{text:?}");
    }

    #[test]
    fn urls_and_names_are_checked() {
        assert!(matches!(
            Client::new("ftp://x", "t"),
            Err(ClientError::Url { .. })
        ));
        assert!(Client::new("not a url", "t").is_err());
        let c = Client::new("http://127.0.0.1:3000/", "iadm_secret").unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:3000");
        assert!(!format!("{c:?}").contains("iadm_secret"));
        for bad in ["", ".", ".."] {
            assert!(matches!(
                usable("workspace", bad),
                Err(ClientError::Name { .. })
            ));
        }
    }
}
