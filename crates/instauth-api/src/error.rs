//! The one place where errors become HTTP responses (SPEC.md §2–§5 status table).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use instauth_types::{ErrorResponse, ValidationError};

use crate::verifiers::VerifyError;

/// An API failure; `into_response` gives its status and stable JSON body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The body is not JSON of the expected shape.
    #[error("request body must be valid JSON")]
    BadJson,
    /// Fields missing, empty, malformed or over their limits.
    #[error("validation failed")]
    Validation(Vec<ValidationError>),
    /// A form body (the dashboard's POSTs) is not a form of the expected fields.
    #[error("request body must be a valid form")]
    BadForm,
    /// The body is over the limit.
    #[error("request body too large")]
    TooLarge,
    /// The body did not arrive within the body read timeout.
    #[error("request body read timed out")]
    BodyTimeout,
    /// A path segment is not valid percent-encoded UTF-8.
    #[error("undecodable path: {0}")]
    BadPath(String),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The cloud proof did not verify.
    #[error("invalid {provider} identity: {detail}")]
    InvalidProof {
        /// `AWS`, `Azure` or `GCP`.
        provider: &'static str,
        /// Which check failed (no secret material).
        detail: String,
    },
    /// The proof is valid but the identity is outside an allow-list or a resource's `expect`.
    #[error("identity not allowed: {0}")]
    Forbidden(instauth_policy::NotAllowed),
    /// The agent key check of SPEC §2.1 failed.
    #[error("invalid agent key: {detail}")]
    AgentKey {
        /// Which way it failed (the audit outcome).
        refusal: KeyRefusal,
        /// What was wrong, naming keys by fingerprint only.
        detail: String,
    },
    /// The cloud proof cannot be checked now: the cloud's keys or an Azure issuing CA cannot
    /// be fetched and none is cached, or every verification slot stayed busy. The proof may
    /// be good: 503 with `Retry-After`.
    #[error("cannot verify {provider} identity now: {detail}")]
    ProofUnavailable {
        /// `AWS`, `Azure` or `GCP`.
        provider: &'static str,
        /// What is unavailable (no secret material).
        detail: String,
        /// Seconds for the `Retry-After` header.
        retry_after: u64,
    },
    /// No candidate agent.
    #[error("no candidate agent")]
    NoCandidate {
        /// The verified instance ID.
        instance_id: String,
        /// The requested (trimmed) name.
        requested: Option<String>,
        /// All candidates' names, sorted.
        names: Vec<String>,
        /// Seconds for the `Retry-After` header (`--retry-after`).
        retry_after: u64,
    },
    /// Several candidate agents.
    #[error("several candidate agents")]
    Conflict {
        /// The verified instance ID.
        instance_id: String,
        /// Candidates' names, sorted and de-duplicated.
        names: Vec<String>,
        /// Seconds for the `Retry-After` header (`--retry-after`).
        retry_after: u64,
    },
    /// Missing or bad credentials on the agent or admin API.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A dashboard POST without its CSRF token, or sent from another site.
    #[error("cross-site request refused: {0}")]
    CrossSite(&'static str),
    /// A named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The client sends too fast.
    #[error("rate limited")]
    RateLimited {
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The database is unavailable.
    #[error("database unavailable")]
    Unavailable,
    /// Anything else: logged once with its cause, a generic message to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why an exchange's agent key was refused (SPEC §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyRefusal {
    /// No key in the request, but the agent has one bound or must present one.
    Required,
    /// A key was presented but it is not the bound one, or its signature or time is wrong.
    Mismatch,
}

impl ApiError {
    /// The audit outcome word for this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::BadJson
            | ApiError::BadForm
            | ApiError::Validation(_)
            | ApiError::BadPath(_)
            | ApiError::BodyTimeout
            | ApiError::MethodNotAllowed => "bad_request",
            ApiError::TooLarge => "too_large",
            ApiError::InvalidProof { .. } | ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::AgentKey {
                refusal: KeyRefusal::Required,
                ..
            } => "key_required",
            ApiError::AgentKey {
                refusal: KeyRefusal::Mismatch,
                ..
            } => "key_mismatch",
            ApiError::CrossSite(_) => "cross_site",
            ApiError::NoCandidate { .. } | ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable | ApiError::ProofUnavailable { .. } => "unavailable",
            ApiError::Internal(_) => "error",
        }
    }
}

impl ApiError {
    /// Why an exchange failed, for the audit log: the failed check, never proof material.
    pub fn reason(&self) -> Option<String> {
        match self {
            ApiError::BadJson => Some("body is not valid JSON".into()),
            // The count only: field names such as `signature` read like proof material in an
            // audit listing, and the client already got the details in its 400.
            ApiError::Validation(v) => Some(format!("{} invalid field(s)", v.len())),
            ApiError::TooLarge => Some("body over the limit".into()),
            ApiError::BodyTimeout => Some("body not received in time".into()),
            ApiError::BadPath(_)
            | ApiError::MethodNotAllowed
            | ApiError::BadForm
            | ApiError::CrossSite(_) => None,
            ApiError::InvalidProof { detail, .. }
            | ApiError::AgentKey { detail, .. }
            | ApiError::ProofUnavailable { detail, .. } => Some(detail.clone()),
            ApiError::Forbidden(why) => Some(why.to_string()),
            ApiError::NoCandidate {
                requested, names, ..
            } => Some(match requested {
                Some(n) => format!(
                    "no candidate named {n:?} (candidates: {})",
                    names.join(", ")
                ),
                None => "no candidate for the instance".into(),
            }),
            ApiError::Conflict { names, .. } => {
                Some(format!("several candidates: {}", names.join(", ")))
            }
            ApiError::Unavailable => Some("database unavailable".into()),
            ApiError::Unauthorized(_)
            | ApiError::NotFound(_)
            | ApiError::RateLimited { .. }
            | ApiError::Internal(_) => None,
        }
    }
}

impl From<instauth_store::StoreError> for ApiError {
    fn from(e: instauth_store::StoreError) -> Self {
        match e {
            instauth_store::StoreError::Validation(errs) => ApiError::Validation(
                errs.into_iter()
                    .map(|e| ValidationError {
                        field: e.field,
                        detail: e.detail,
                    })
                    .collect(),
            ),
            e if e.is_unavailable() => ApiError::Unavailable,
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// Seconds until a retry of a proof that could not be checked may succeed: Google's keys and an
/// Azure issuing CA are fetched again at most once a minute after a failure; a saturated pool
/// frees up in seconds.
fn proof_retry_after(e: &VerifyError) -> u64 {
    match e {
        VerifyError::Gcp(_) => instauth_verify_gcp::MIN_REFETCH_INTERVAL.as_secs(),
        VerifyError::Azure(_) => instauth_verify_azure::aia::AIA_NEGATIVE_TTL.as_secs(),
        _ => 5,
    }
}

/// A proof that failed is a 401; one that could not be checked now a 503; a verification that
/// crashed a 500.
impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        let provider = e.provider().label();
        if e.is_unavailable() {
            ApiError::ProofUnavailable {
                provider,
                retry_after: proof_retry_after(&e).max(1),
                detail: e.to_string(),
            }
        } else if e.is_internal() {
            ApiError::Internal(e.to_string())
        } else {
            ApiError::InvalidProof {
                provider,
                detail: e.to_string(),
            }
        }
    }
}

fn body(message: impl Into<String>) -> ErrorResponse {
    ErrorResponse {
        message: message.into(),
        ..Default::default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut retry_after = None;
        let (status, body) = match self {
            ApiError::BadJson => (
                StatusCode::BAD_REQUEST,
                body("Request body must be valid JSON."),
            ),
            ApiError::Validation(validations) => (
                StatusCode::BAD_REQUEST,
                ErrorResponse {
                    validations,
                    ..body("Validation failed.")
                },
            ),
            ApiError::BadForm => (
                StatusCode::BAD_REQUEST,
                body("Request body must be a valid form."),
            ),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                body("Request body is too large."),
            ),
            ApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                body("Request body was not received in time."),
            ),
            ApiError::BadPath(detail) => (
                StatusCode::BAD_REQUEST,
                ErrorResponse {
                    detail: Some(detail),
                    ..body("Invalid request path.")
                },
            ),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, body("Method not allowed."))
            }
            ApiError::InvalidProof { provider, detail } => (
                StatusCode::UNAUTHORIZED,
                ErrorResponse {
                    detail: Some(detail),
                    ..body(format!("Invalid {provider} identity."))
                },
            ),
            ApiError::Forbidden(why) => (
                StatusCode::FORBIDDEN,
                ErrorResponse {
                    detail: Some(why.to_string()),
                    ..body("Identity not allowed.")
                },
            ),
            ApiError::AgentKey { detail, .. } => (
                StatusCode::UNAUTHORIZED,
                ErrorResponse {
                    detail: Some(detail),
                    ..body(instauth_types::agent_key::REFUSED_MESSAGE)
                },
            ),
            ApiError::ProofUnavailable {
                provider,
                detail,
                retry_after: after,
            } => {
                retry_after = Some(after);
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorResponse {
                        detail: Some(detail),
                        ..body(format!("{provider} identity cannot be verified now."))
                    },
                )
            }
            ApiError::NoCandidate {
                instance_id,
                requested,
                names,
                retry_after: after,
            } => {
                retry_after = Some(after);
                (
                    StatusCode::NOT_FOUND,
                    ErrorResponse {
                        agent_names: Some(names),
                        ..body(match requested {
                            Some(name) => format!(
                                "No agent found with instance ID \"{instance_id}\" and name \"{name}\"."
                            ),
                            None => format!("Instance with id \"{instance_id}\" not found."),
                        })
                    },
                )
            }
            ApiError::Conflict {
                instance_id,
                names,
                retry_after: after,
            } => {
                retry_after = Some(after);
                (
                    StatusCode::CONFLICT,
                    ErrorResponse {
                        message: format!(
                            "Multiple agents found with instance ID \"{instance_id}\". Set CODER_AGENT_NAME to one of: {}",
                            names.join(", ")
                        ),
                        agent_names: Some(names),
                        ..Default::default()
                    },
                )
            }
            ApiError::Unauthorized(why) => (StatusCode::UNAUTHORIZED, body(why)),
            ApiError::CrossSite(why) => (
                StatusCode::FORBIDDEN,
                ErrorResponse {
                    detail: Some(why.into()),
                    ..body("Cross-site request refused.")
                },
            ),
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, body(what)),
            ApiError::RateLimited { retry_after: after } => {
                retry_after = Some(after);
                (StatusCode::TOO_MANY_REQUESTS, body("Rate limit exceeded."))
            }
            ApiError::Unavailable => {
                retry_after = Some(5);
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    body("Database unavailable."),
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "Request failed with an internal error.");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    body("An internal error occurred."),
                )
            }
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}
