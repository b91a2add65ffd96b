//! The three token exchange endpoints (SPEC.md §2): verify the proof, find the candidates in one
//! statement, let the policy decide, issue a signed session. Every attempt is counted and audited.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use instauth_policy::{decide, requested_name, Decision, Named};
use instauth_store::validate::has_control;
use instauth_store::{Candidate, NewAuditRecord};
use instauth_types::{
    AuthenticateResponse, AwsInstanceIdentityRequest, AzureInstanceIdentityRequest,
    GoogleInstanceIdentityRequest, Provider, ValidationError,
};
use instauth_verify::{Identity, Verified};

use crate::audit::Escaped;
use crate::error::ApiError;
use crate::extract::{ClientAddr, JsonBody};
use crate::AppState;

/// Longest accepted AWS identity document (real ones are about 500 bytes).
pub const MAX_DOCUMENT: usize = 8 * 1024;
/// Longest accepted detached signature (base64).
pub const MAX_SIGNATURE: usize = 4 * 1024;
/// Longest accepted PKCS#7 body (base64); real AWS ones are about 2 KB, Azure's about 7 KB.
pub const MAX_PKCS7: usize = 32 * 1024;
/// Longest accepted JWT; real ones are about 1 KB.
pub const MAX_JWT: usize = 16 * 1024;
/// Longest accepted agent name (SPEC.md §1).
pub const MAX_AGENT_NAME: usize = 64;

struct Named_(Candidate);
impl Named for Named_ {
    fn name(&self) -> &str {
        &self.0.agent_name
    }
}

fn check(out: &mut Vec<ValidationError>, field: &str, ok: bool, detail: &str) {
    if !ok {
        out.push(ValidationError {
            field: field.into(),
            detail: detail.into(),
        });
    }
}

fn is_base64(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .is_ok()
}

/// Checks a required base64 field: present, within `max`, decodable.
fn check_base64(out: &mut Vec<ValidationError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        check(out, field, false, "required");
    } else if value.len() > max {
        check(out, field, false, &format!("must be at most {max} bytes"));
    } else {
        check(out, field, is_base64(value), "must be base64");
    }
}

fn check_name(out: &mut Vec<ValidationError>, name: Option<&str>) {
    if let Some(n) = requested_name(name) {
        if n.len() > MAX_AGENT_NAME {
            check(out, "agent_name", false, "must be at most 64 characters");
        } else {
            check(
                out,
                "agent_name",
                !has_control(n),
                "must not contain control characters",
            );
        }
    }
}

/// A verified identity whose claims hold control characters is not one a cloud issues: refuse
/// it (401) before it reaches the database or a log.
fn check_identity(identity: &Identity) -> Result<(), String> {
    let claims = serde_json::to_value(identity).unwrap_or_default();
    let bad = claims
        .as_object()
        .into_iter()
        .flatten()
        .find(|(_, v)| v.as_str().is_some_and(has_control));
    match bad {
        Some((name, _)) => Err(format!("identity claim {name} holds control characters")),
        None => Ok(()),
    }
}

fn validate_aws(r: &AwsInstanceIdentityRequest) -> Vec<ValidationError> {
    let mut out = Vec::new();
    match r.pkcs7.as_deref().filter(|p| !p.trim().is_empty()) {
        Some(p7) => {
            check_base64(&mut out, "pkcs7", p7, MAX_PKCS7);
            if !r.signature.trim().is_empty() {
                check_base64(&mut out, "signature", &r.signature, MAX_SIGNATURE);
            }
        }
        None => {
            check(
                &mut out,
                "document",
                !r.document.trim().is_empty(),
                "required",
            );
            check_base64(&mut out, "signature", &r.signature, MAX_SIGNATURE);
        }
    }
    check(
        &mut out,
        "document",
        r.document.len() <= MAX_DOCUMENT,
        "must be at most 8192 bytes",
    );
    check_name(&mut out, r.agent_name.as_deref());
    out
}

fn validate_azure(r: &AzureInstanceIdentityRequest) -> Vec<ValidationError> {
    let mut out = Vec::new();
    check_base64(&mut out, "signature", &r.signature, MAX_PKCS7);
    check(
        &mut out,
        "encoding",
        r.encoding == "pkcs7",
        "must be \"pkcs7\"",
    );
    check_name(&mut out, r.agent_name.as_deref());
    out
}

fn validate_gcp(r: &GoogleInstanceIdentityRequest) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let t = r.json_web_token.trim();
    check(&mut out, "json_web_token", !t.is_empty(), "required");
    check(
        &mut out,
        "json_web_token",
        t.len() <= MAX_JWT,
        "must be at most 16384 bytes",
    );
    check_name(&mut out, r.agent_name.as_deref());
    out
}

/// Runs one exchange and records it (metrics, audit, log) whatever the outcome.
async fn exchange<R>(
    state: &AppState,
    provider: Provider,
    client: ClientAddr,
    body: Result<JsonBody<R>, ApiError>,
    validate: fn(&R) -> Vec<ValidationError>,
    name_of: fn(&R) -> Option<&str>,
    verify: impl AsyncFnOnce(&R) -> Result<Verified<Identity>, String>,
) -> Response {
    let started = Instant::now();
    let limited = client
        .ip
        .map(|ip| state.inner.limiter.check(ip))
        .unwrap_or(Ok(()));
    let remote = client.text;
    let mut audit = NewAuditRecord {
        time: instauth_store::now(),
        provider,
        instance_id: String::new(),
        agent_name: String::new(),
        outcome: String::new(),
        agent_id: None,
        remote_addr: remote,
        reason: None,
        count: 1,
    };
    let result: Result<Candidate, ApiError> = async {
        limited.map_err(|retry_after| ApiError::RateLimited { retry_after })?;
        let JsonBody(req) = body?;
        let requested = requested_name(name_of(&req));
        audit.agent_name = requested
            .unwrap_or_default()
            .chars()
            .take(MAX_AGENT_NAME)
            .collect();
        let problems = validate(&req);
        if !problems.is_empty() {
            return Err(ApiError::Validation(problems));
        }
        let identity = verify(&req)
            .await
            .and_then(|identity| check_identity(&identity).map(|()| identity))
            .map_err(|detail| ApiError::InvalidProof {
                provider: provider.label(),
                detail,
            })?
            .into_inner();
        let instance_id = identity.instance_id().to_owned();
        audit.instance_id.clone_from(&instance_id);
        let candidates = state
            .inner
            .store
            .candidates(provider.auth(), &instance_id)
            .await?;
        match decide(requested, candidates.into_iter().map(Named_).collect()) {
            Decision::Select(c) => Ok(c.0),
            Decision::NotFound { requested, names } => Err(ApiError::NoCandidate {
                instance_id,
                requested,
                names,
                retry_after: state.inner.retry_after,
            }),
            Decision::Conflict { names } => Err(ApiError::Conflict {
                instance_id,
                names,
                retry_after: state.inner.retry_after,
            }),
        }
    }
    .await;

    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    let took = started.elapsed();
    state.inner.metrics.exchange(provider, outcome, took);
    audit.outcome = outcome.into();
    audit.agent_id = result.as_ref().ok().map(|c| c.agent_id);
    audit.reason = result.as_ref().err().and_then(ApiError::reason);
    tracing::info!(
        provider = provider.as_str(),
        instance_id = %Escaped(&audit.instance_id),
        agent.name = %Escaped(&audit.agent_name),
        outcome,
        duration_ms = took.as_secs_f64() * 1e3,
        "Token exchange answered."
    );
    // A full queue is counted and logged by the sink.
    state.inner.audit.record(audit);
    match result {
        Ok(c) => {
            let expires = chrono::Utc::now()
                .checked_add_signed(state.inner.session_ttl)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
            let token = state
                .inner
                .sessions
                .issue(c.agent_id, c.session_generation, expires);
            Json(AuthenticateResponse {
                session_token: token,
            })
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /api/v2/workspaceagents/aws-instance-identity`
pub(crate) async fn aws(
    State(state): State<AppState>,
    client: ClientAddr,
    body: Result<JsonBody<AwsInstanceIdentityRequest>, ApiError>,
) -> Response {
    let verifier = &state.inner.verifiers.aws;
    exchange(
        &state,
        Provider::Aws,
        client,
        body,
        validate_aws,
        |r| r.agent_name.as_deref(),
        async |r| verifier.verify(r).map_err(|e| e.to_string()),
    )
    .await
}

/// `POST /api/v2/workspaceagents/azure-instance-identity`
pub(crate) async fn azure(
    State(state): State<AppState>,
    client: ClientAddr,
    body: Result<JsonBody<AzureInstanceIdentityRequest>, ApiError>,
) -> Response {
    let verifier = &state.inner.verifiers.azure;
    exchange(
        &state,
        Provider::Azure,
        client,
        body,
        validate_azure,
        |r| r.agent_name.as_deref(),
        async |r| verifier.verify(r).map_err(|e| e.to_string()),
    )
    .await
}

/// `POST /api/v2/workspaceagents/google-instance-identity`
pub(crate) async fn google(
    State(state): State<AppState>,
    client: ClientAddr,
    body: Result<JsonBody<GoogleInstanceIdentityRequest>, ApiError>,
) -> Response {
    let verifier = &state.inner.verifiers.gcp;
    exchange(
        &state,
        Provider::Gcp,
        client,
        body,
        validate_gcp,
        |r| r.agent_name.as_deref(),
        async |r| verifier.verify(r).await.map_err(|e| e.to_string()),
    )
    .await
}
