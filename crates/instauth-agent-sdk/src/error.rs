//! Errors of the SDK: one enum for metadata services, one for everything else.
//!
//! Variants name the endpoint and, for HTTP failures, the status; they never carry a session
//! token, an identity document, a signature or a JWT.

use std::path::PathBuf;
use std::time::Duration;

/// A failure talking to a cloud metadata service (IMDS).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// The request did not complete (connection refused, timeout, ...).
    #[error("metadata request to {endpoint} failed: {source}")]
    Request {
        /// The URL requested.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// The metadata service answered with a non-success status.
    #[error("metadata service at {endpoint} answered HTTP {status}: {body}")]
    Status {
        /// The URL requested.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (at most 200 characters).
        body: String,
    },
    /// The response could not be understood.
    #[error("metadata service at {endpoint} returned an unusable response: {detail}")]
    Body {
        /// The URL requested.
        endpoint: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// A failure of the SDK: exchanging a proof, calling the agent API, or reading configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the instance identity proof failed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// A request to the instauth server did not complete.
    #[error("request to {endpoint} failed: {source}")]
    Request {
        /// The URL requested.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the credentials (HTTP 401): a bad proof or an expired token.
    #[error("{endpoint} answered HTTP 401: {message}{}", detail_suffix(.detail))]
    Unauthorized {
        /// The URL requested.
        endpoint: String,
        /// The server's message.
        message: String,
        /// The server's detail (which check failed), if any.
        detail: Option<String>,
    },
    /// Several agents match this instance (HTTP 409): set `CODER_AGENT_NAME`.
    #[error("{message} (set CODER_AGENT_NAME to one of: {})", .agent_names.join(", "))]
    Conflict {
        /// The server's message.
        message: String,
        /// The candidate agent names, sorted.
        agent_names: Vec<String>,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// No agent matches this instance (and name) (HTTP 404 on exchange).
    #[error("{message}{}", names_suffix(.agent_names))]
    NotFound {
        /// The server's message.
        message: String,
        /// Agent names that do exist for this instance, sorted (may be empty).
        agent_names: Vec<String>,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// Any other non-success status.
    #[error("{endpoint} answered HTTP {status}: {message}{}", detail_suffix(.detail))]
    Status {
        /// The URL requested.
        endpoint: String,
        /// The HTTP status code.
        status: u16,
        /// The server's message (or the start of the body when it was not JSON).
        message: String,
        /// The server's detail, if any.
        detail: Option<String>,
        /// The server's `Retry-After`, if any (429, 503).
        retry_after: Option<Duration>,
    },
    /// A success response could not be decoded.
    #[error("{endpoint} returned an unusable response: {detail}")]
    Decode {
        /// The URL requested.
        endpoint: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The token file could not be read or is empty.
    #[error("agent token file {}: {detail}", .path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A configured header is malformed.
    #[error("invalid agent header {header:?}: {detail}")]
    Header {
        /// The offending header's name (never its value, which may be secret).
        header: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The agent key file cannot be read, created or parsed.
    #[error("agent key file {}: {detail}", .path.display())]
    AgentKey {
        /// The file (or directory) at fault.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Configuration that cannot work (e.g. an unparsable URL).
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(d) if !d.is_empty() => format!(" ({d})"),
        _ => String::new(),
    }
}

fn names_suffix(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" (agents on this instance: {})", names.join(", "))
    }
}

impl Error {
    /// True for a 401 from the server.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, Error::Unauthorized { .. })
    }

    /// True for the server's 401 "Invalid agent key." (SPEC §2.1): the agent key is missing,
    /// not the bound one, or its signature is wrong. A new exchange with the same key will not
    /// help until an admin resets the binding.
    pub fn is_agent_key_refusal(&self) -> bool {
        matches!(self, Error::Unauthorized { message, .. }
            if message == instauth_types::agent_key::REFUSED_MESSAGE)
    }

    /// The candidate agent names of a 409 or 404 exchange response.
    pub fn agent_names(&self) -> Option<&[String]> {
        match self {
            Error::Conflict { agent_names, .. } | Error::NotFound { agent_names, .. } => {
                Some(agent_names)
            }
            _ => None,
        }
    }

    /// The server's `Retry-After`, when it sent one (429, 503, and 404/409 of an exchange).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. }
            | Error::Conflict { retry_after, .. }
            | Error::NotFound { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Short for `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At most `max` characters of `s`, for error messages.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}
