//! The HTTP client for the instauth server: token exchange and the agent API.

use std::time::Duration;

use instauth_types::{
    routes, AgentKeyFields, AuthenticateResponse, ErrorResponse, HeartbeatRequest, Manifest, Proof,
    Provider, SESSION_TOKEN_HEADER,
};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::{truncate, Error, Result};

/// The exchange path for a proof of `provider`.
pub fn exchange_path(provider: Provider) -> &'static str {
    match provider {
        Provider::Aws => routes::AWS_INSTANCE_IDENTITY,
        Provider::Azure => routes::AZURE_INSTANCE_IDENTITY,
        Provider::Gcp => routes::GOOGLE_INSTANCE_IDENTITY,
    }
}

/// `name` trimmed of surrounding white space; `None` when that leaves nothing.
pub fn normalize_agent_name(name: Option<&str>) -> Option<String> {
    name.map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

pub use instauth_types::LifecycleState;

/// Parses a `key=value` header as given to `--agent-header`.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue)> {
    let Some((key, value)) = s.split_once('=') else {
        // Name only what precedes a `:` or a space: the rest may be a secret.
        let key = s.split([':', ' ']).next().unwrap_or_default();
        return Err(Error::Header {
            header: truncate(key, 40),
            detail: "expected key=value".into(),
        });
    };
    let key = key.trim();
    let name = HeaderName::from_bytes(key.as_bytes()).map_err(|e| Error::Header {
        header: key.to_owned(),
        detail: format!("bad header name: {e}"),
    })?;
    let value = HeaderValue::from_str(value.trim()).map_err(|e| Error::Header {
        header: key.to_owned(),
        detail: format!("bad header value: {e}"),
    })?;
    Ok((name, value))
}

/// Runs `command` with `sh -c` and parses each non-empty output line as `key=value`
/// (`--agent-header-command`).
pub async fn header_command(command: &str) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| Error::Config(format!("agent header command: cannot run sh: {e}")))?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "agent header command exited with {}",
            out.status
        )));
    }
    let stdout = String::from_utf8(out.stdout)
        .map_err(|_| Error::Config("agent header command printed invalid UTF-8".into()))?;
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(parse_header)
        .collect()
}

/// Options for [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Headers sent with every request (`--agent-header`, `--agent-header-command`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            headers: Vec::new(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A client for one instauth (or Coder) server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client for the server at `url` (e.g. `https://coder.example.com`).
    pub fn new(url: &str, options: ClientOptions) -> Result<Self> {
        let parsed = reqwest::Url::parse(url.trim())
            .map_err(|e| Error::Config(format!("agent URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "agent URL {url:?}: scheme must be http or https"
            )));
        }
        let mut headers = HeaderMap::new();
        for (k, v) in options.headers {
            headers.append(k, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: parsed.as_str().trim_end_matches('/').to_owned(),
        })
    }

    /// The server URL, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Exchanges `proof` for a session token.
    pub async fn exchange(&self, proof: &Proof) -> Result<String> {
        self.exchange_with_key(proof, &AgentKeyFields::default())
            .await
    }

    /// Exchanges `proof`, with the agent key fields `key` beside it (none when empty), for a
    /// session token.
    pub async fn exchange_with_key(&self, proof: &Proof, key: &AgentKeyFields) -> Result<String> {
        let endpoint = self.endpoint(exchange_path(proof.provider()));
        let post = |body: &dyn erased::Body| body.post(&self.http, &endpoint, key);
        let req = match proof {
            Proof::Aws(b) => post(b),
            Proof::Azure(b) => post(b),
            Proof::Gcp(b) => post(b),
        };
        let resp: AuthenticateResponse = json(send(req, &endpoint).await?, &endpoint).await?;
        if resp.session_token.is_empty() {
            return Err(Error::Decode {
                endpoint,
                detail: "empty session_token".into(),
            });
        }
        Ok(resp.session_token)
    }

    /// `GET /api/v2/workspaceagents/me/manifest`.
    pub async fn manifest(&self, token: &str) -> Result<Manifest> {
        let endpoint = self.endpoint(routes::AGENT_MANIFEST);
        let req = self.http.get(&endpoint).header(SESSION_TOKEN_HEADER, token);
        json(send(req, &endpoint).await?, &endpoint).await
    }

    /// `POST /api/v2/workspaceagents/me/heartbeat`.
    pub async fn heartbeat(&self, token: &str, state: LifecycleState) -> Result<()> {
        let endpoint = self.endpoint(routes::AGENT_HEARTBEAT);
        let req = self
            .http
            .post(&endpoint)
            .header(SESSION_TOKEN_HEADER, token)
            .json(&HeartbeatRequest {
                lifecycle_state: state.into(),
            });
        send(req, &endpoint).await.map(drop)
    }
}

/// One way to POST any of the three proof bodies with the agent key fields beside it.
mod erased {
    use instauth_types::{AgentKeyFields, ExchangeRequest};
    use serde::Serialize;

    pub(super) trait Body {
        fn post(
            &self,
            http: &reqwest::Client,
            endpoint: &str,
            key: &AgentKeyFields,
        ) -> reqwest::RequestBuilder;
    }

    impl<R: Serialize> Body for R {
        fn post(
            &self,
            http: &reqwest::Client,
            endpoint: &str,
            key: &AgentKeyFields,
        ) -> reqwest::RequestBuilder {
            http.post(endpoint).json(&ExchangeRequest {
                body: self,
                agent_key: key.clone(),
            })
        }
    }
}

/// Sends `req`; a non-success status becomes the matching [`Error`].
async fn send(req: reqwest::RequestBuilder, endpoint: &str) -> Result<reqwest::Response> {
    let resp = req.send().await.map_err(|source| Error::Request {
        endpoint: endpoint.to_owned(),
        source,
    })?;
    if resp.status().is_success() {
        return Ok(resp);
    }
    Err(error_from(resp, endpoint).await)
}

async fn json<T: DeserializeOwned>(resp: reqwest::Response, endpoint: &str) -> Result<T> {
    let bytes = resp.bytes().await.map_err(|source| Error::Request {
        endpoint: endpoint.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
        endpoint: endpoint.to_owned(),
        detail: e.to_string(),
    })
}

async fn error_from(resp: reqwest::Response, endpoint: &str) -> Error {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str::<ErrorResponse>(&text).unwrap_or_else(|_| ErrorResponse {
        message: truncate(text.trim(), 200),
        ..ErrorResponse::default()
    });
    let mut names = body.agent_names.clone();
    if let Some(n) = names.as_mut() {
        n.sort();
        n.dedup();
    }
    match (status, names) {
        (StatusCode::UNAUTHORIZED, _) => Error::Unauthorized {
            endpoint: endpoint.to_owned(),
            message: body.message,
            detail: body.detail,
        },
        (StatusCode::CONFLICT, names) => Error::Conflict {
            message: body.message,
            agent_names: names.unwrap_or_default(),
            retry_after,
        },
        (StatusCode::NOT_FOUND, Some(agent_names)) => Error::NotFound {
            message: body.message,
            agent_names,
            retry_after,
        },
        _ => Error::Status {
            endpoint: endpoint.to_owned(),
            status: status.as_u16(),
            message: body.message,
            detail: body.detail,
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_are_trimmed_and_empty_means_absent() {
        assert_eq!(normalize_agent_name(Some("  dev \n")), Some("dev".into()));
        assert_eq!(normalize_agent_name(Some("   ")), None);
        assert_eq!(normalize_agent_name(None), None);
    }

    #[test]
    fn headers_parse() {
        let (k, v) = parse_header("X-Forwarded-Host = coder.example.com").unwrap();
        assert_eq!(k.as_str(), "x-forwarded-host");
        assert_eq!(v, "coder.example.com");
        let (_, v) = parse_header("Authorization=Bearer a=b").unwrap();
        assert_eq!(v, "Bearer a=b");
        assert!(parse_header("no-equals-sign").is_err());
        assert!(parse_header("bad name=x").is_err());
    }

    #[test]
    fn urls_are_checked() {
        assert!(Client::new("ftp://x", ClientOptions::default()).is_err());
        assert!(Client::new("not a url", ClientOptions::default()).is_err());
        let c = Client::new("http://127.0.0.1:3000/", ClientOptions::default()).unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:3000");
    }
}
