//! The three token exchange endpoints (SPEC.md §2): verify the proof, check the identity against
//! the allow-lists, check the agent key's signature, find the candidates in one statement, let
//! the policy decide, check the resource's expectation and the agent's key binding (binding it
//! on first use, the only write an exchange makes), issue a signed session. Every attempt is
//! counted and audited.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use instauth_policy::{
    check_allow_lists, check_expectation, decide, requested_name, Decision, Expectation, Named,
};
use instauth_store::validate::has_control;
use instauth_store::{Candidate, NewAuditRecord};
use instauth_types::agent_key::{self, PUBLIC_KEY_LEN, SIGNATURE_LEN};
use instauth_types::{
    AgentKeyFields, AuthenticateResponse, AwsInstanceIdentityRequest, AzureInstanceIdentityRequest,
    ExchangeBody, ExchangeRequest, GoogleInstanceIdentityRequest, Proof, ValidationError,
};
use instauth_verify::{Identity, Verified};
use subtle::ConstantTimeEq;

use crate::audit::Escaped;
use crate::error::{ApiError, KeyRefusal};
use crate::extract::{ClientAddr, JsonBody};
use crate::verifiers::VerifyError;
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

/// Checks a required base64 field: present, within `max`, decodable (white space ignored, as
/// the verifiers ignore it; one pass, no copy: the verifier decodes the field it uses).
fn check_base64(out: &mut Vec<ValidationError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        check(out, field, false, "required");
    } else if value.len() > max {
        check(out, field, false, &format!("must be at most {max} bytes"));
    } else {
        check(
            out,
            field,
            instauth_verify::encoding::is_base64_lenient_whitespace(value),
            "must be base64",
        );
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
    match identity
        .claims()
        .into_iter()
        .find(|(_, v)| v.is_some_and(has_control))
    {
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

/// An agent key as the request presents it, decoded; its signature is not yet checked.
struct PresentedKey {
    public_key: [u8; PUBLIC_KEY_LEN],
    time: i64,
    signature: [u8; SIGNATURE_LEN],
}

/// Decodes one base64url value of exactly `N` bytes; the length is checked before decoding.
fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    agent_key::decode(text)?.try_into().ok()
}

/// Checks the agent key fields' shape (SPEC §2): all three or none, each well formed.
fn validate_agent_key(out: &mut Vec<ValidationError>, k: &AgentKeyFields) -> Option<PresentedKey> {
    if k.is_empty() {
        return None;
    }
    let companions = "required with the other agent key fields (agent_public_key, \
                      agent_key_time, agent_key_signature)";
    let public_key = match k.agent_public_key.as_deref() {
        None => {
            check(out, "agent_public_key", false, companions);
            None
        }
        Some(t) => {
            let key = decode_exact::<PUBLIC_KEY_LEN>(t);
            check(
                out,
                "agent_public_key",
                key.is_some(),
                "must be base64url without padding of a 32-byte Ed25519 public key",
            );
            key
        }
    };
    check(
        out,
        "agent_key_time",
        k.agent_key_time.is_some(),
        companions,
    );
    let signature = match k.agent_key_signature.as_deref() {
        None => {
            check(out, "agent_key_signature", false, companions);
            None
        }
        Some(t) => {
            let sig = decode_exact::<SIGNATURE_LEN>(t);
            check(
                out,
                "agent_key_signature",
                sig.is_some(),
                "must be base64url without padding of a 64-byte Ed25519 signature",
            );
            sig
        }
    };
    Some(PresentedKey {
        public_key: public_key?,
        time: k.agent_key_time?,
        signature: signature?,
    })
}

fn key_refused(refusal: KeyRefusal, detail: String) -> ApiError {
    ApiError::AgentKey { refusal, detail }
}

/// Checks that the presented key signed this proof, agent name and a time within
/// [`agent_key::MAX_TIME_SKEW_SECS`] of the server's clock. Needs no database: a bad signature
/// costs no statement.
fn check_key_signature<R: ExchangeBody>(
    state: &AppState,
    body: &R,
    key: &PresentedKey,
) -> Result<(), ApiError> {
    let now = state.inner.clock.now().timestamp();
    let skew = now.checked_sub(key.time).map(i64::unsigned_abs);
    if skew.is_none_or(|s| s > agent_key::MAX_TIME_SKEW_SECS.unsigned_abs()) {
        let away = skew.map_or_else(|| "too far".to_owned(), |s| format!("{s} s"));
        return Err(key_refused(
            KeyRefusal::Mismatch,
            format!(
                "agent_key_time is {away} away from the server's clock (at most {} s)",
                agent_key::MAX_TIME_SKEW_SECS
            ),
        ));
    }
    let message = agent_key::message(
        R::PROVIDER,
        body.agent_name(),
        key.time,
        body.agent_key_proof_field(),
    );
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.public_key)
        .verify(message.as_bytes(), &key.signature)
        .map_err(|_| {
            key_refused(
                KeyRefusal::Mismatch,
                "agent_key_signature does not verify: it must sign this proof, agent name and \
                 agent_key_time with agent_public_key"
                    .into(),
            )
        })
}

/// Two keys are the same, compared in constant time.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Enforces the candidate's key binding (SPEC §2.1): a bound agent must present its key; an
/// unbound one presenting a (verified) key binds it, in one statement, racing other binders; an
/// unbound one without a key passes unless a key is required.
async fn enforce_key(
    state: &AppState,
    c: &Candidate,
    key: Option<&PresentedKey>,
    instance_id: &str,
) -> Result<(), ApiError> {
    let name = &c.agent_name;
    let mismatch = |bound: &[u8], presented: &[u8]| {
        key_refused(
            KeyRefusal::Mismatch,
            format!(
                "agent {name:?} is bound to the agent key {}, not to {}",
                agent_key::fingerprint(bound),
                agent_key::fingerprint(presented)
            ),
        )
    };
    match (c.agent_public_key.as_deref(), key) {
        (Some(bound), Some(k)) if same_key(bound, &k.public_key) => Ok(()),
        (Some(bound), Some(k)) => Err(mismatch(bound, &k.public_key)),
        (Some(bound), None) => Err(key_refused(
            KeyRefusal::Required,
            format!(
                "agent {name:?} is bound to the agent key {}; the request carries no agent key",
                agent_key::fingerprint(bound)
            ),
        )),
        (None, Some(k)) => match state
            .inner
            .store
            .bind_agent_key(c.agent_id, &k.public_key)
            .await?
        {
            Some(bound) if same_key(&bound, &k.public_key) => {
                tracing::info!(
                    agent.id = %c.agent_id,
                    agent.name = %name,
                    workspace = %c.workspace_name,
                    fingerprint = %agent_key::fingerprint(&bound),
                    "Agent key bound."
                );
                Ok(())
            }
            // Another exchange bound its key between our read and our write.
            Some(bound) => Err(mismatch(&bound, &k.public_key)),
            // The agent went away (workspace deleted) since the read.
            None => Err(ApiError::NoCandidate {
                instance_id: instance_id.to_owned(),
                requested: Some(name.clone()),
                names: Vec::new(),
                retry_after: state.inner.retry_after,
            }),
        },
        (None, None) if c.require_agent_key => Err(key_refused(
            KeyRefusal::Required,
            format!(
                "agent {name:?} is declared with require_agent_key; the request carries no agent key"
            ),
        )),
        (None, None) if state.inner.require_agent_keys => Err(key_refused(
            KeyRefusal::Required,
            "the server requires agent keys (--require-agent-keys); the request carries no agent key"
                .into(),
        )),
        (None, None) => Ok(()),
    }
}

/// Runs one exchange and records it (metrics, audit, log) whatever the outcome.
async fn exchange<R: ExchangeBody>(
    state: &AppState,
    client: ClientAddr,
    body: Result<JsonBody<ExchangeRequest<R>>, ApiError>,
    validate: fn(&R) -> Vec<ValidationError>,
    verify: impl AsyncFnOnce(R) -> Result<(R, Verified<Identity>), VerifyError>,
) -> Response {
    let provider = R::PROVIDER;
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
        // Time-ordered, so the unique index on it grows at its right edge like the serial key
        // (a random id lands on a random leaf page: measured about 5 µs more PostgreSQL CPU per
        // record, docs/BENCHMARKS.md).
        uid: uuid::Uuid::now_v7(),
    };
    let result: Result<Candidate, ApiError> = async {
        limited.map_err(|retry_after| ApiError::RateLimited { retry_after })?;
        let JsonBody(ExchangeRequest { body, agent_key }) = body?;
        audit.agent_name = requested_name(body.agent_name())
            .unwrap_or_default()
            .chars()
            .take(MAX_AGENT_NAME)
            .collect();
        let mut problems = validate(&body);
        let key = validate_agent_key(&mut problems, &agent_key);
        if !problems.is_empty() {
            return Err(ApiError::Validation(problems));
        }
        let (body, identity) = verify(body).await.map_err(ApiError::from)?;
        let requested = requested_name(body.agent_name());
        check_identity(&identity).map_err(|detail| ApiError::InvalidProof {
            provider: provider.label(),
            detail,
        })?;
        let identity = identity.into_inner();
        let instance_id = identity.instance_id().to_owned();
        audit.instance_id.clone_from(&instance_id);
        // Checks that need no database come first: a refused request costs no statement.
        let claims = crate::access::claims(&identity);
        check_allow_lists(&claims, &state.inner.allow_lists).map_err(ApiError::Forbidden)?;
        if let Some(k) = &key {
            check_key_signature(state, &body, k)?;
        }
        let candidates = state
            .inner
            .store
            .candidates(provider.auth(), &instance_id)
            .await?;
        let c = match decide(requested, candidates.into_iter().map(Named_).collect()) {
            Decision::Select(c) => c.0,
            Decision::NotFound { requested, names } => {
                return Err(ApiError::NoCandidate {
                    instance_id,
                    requested,
                    names,
                    retry_after: state.inner.retry_after,
                })
            }
            Decision::Conflict { names } => {
                return Err(ApiError::Conflict {
                    instance_id,
                    names,
                    retry_after: state.inner.retry_after,
                })
            }
        };
        // From here on a refusal is about this agent: the audit names it.
        audit.agent_id = Some(c.agent_id);
        if let Some((resource, expect)) = c.expect() {
            check_expectation(
                &claims,
                &Expectation {
                    resource,
                    provider: expect.provider,
                    account: expect.account.as_deref(),
                    location: expect.location.as_deref(),
                },
            )
            .map_err(ApiError::Forbidden)?;
        }
        enforce_key(state, &c, key.as_ref(), &instance_id).await?;
        Ok(c)
    }
    .await;

    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    let took = started.elapsed();
    state.inner.metrics.exchange(provider, outcome, took);
    audit.outcome = outcome.into();
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
    body: Result<JsonBody<ExchangeRequest<AwsInstanceIdentityRequest>>, ApiError>,
) -> Response {
    let verifiers = &state.inner.verifiers;
    // The proof moves to a pool thread and back.
    exchange(&state, client, body, validate_aws, async |r| {
        verifiers.verify_aws(r).await
    })
    .await
}

/// `POST /api/v2/workspaceagents/azure-instance-identity`
pub(crate) async fn azure(
    State(state): State<AppState>,
    client: ClientAddr,
    body: Result<JsonBody<ExchangeRequest<AzureInstanceIdentityRequest>>, ApiError>,
) -> Response {
    let verifiers = &state.inner.verifiers;
    exchange(&state, client, body, validate_azure, async |r| {
        let verified = verifiers.verify(Proof::Azure(r.clone())).await?;
        Ok((r, verified))
    })
    .await
}

/// `POST /api/v2/workspaceagents/google-instance-identity`
pub(crate) async fn google(
    State(state): State<AppState>,
    client: ClientAddr,
    body: Result<JsonBody<ExchangeRequest<GoogleInstanceIdentityRequest>>, ApiError>,
) -> Response {
    let verifiers = &state.inner.verifiers;
    exchange(&state, client, body, validate_gcp, async |r| {
        let verified = verifiers.verify(Proof::Gcp(r.clone())).await?;
        Ok((r, verified))
    })
    .await
}
