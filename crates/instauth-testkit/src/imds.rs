//! Fake cloud metadata services on 127.0.0.1, serving proofs signed with the test keys.
//!
//! One [`FakeImds`] serves one instance of one cloud:
//! - AWS: `PUT /latest/api/token` and `GET /latest/dynamic/instance-identity/{document,
//!   signature,rsa2048}`, in one of the [`AwsImdsMode`]s;
//! - Azure: `GET /metadata/attested/document?api-version=...` (header `Metadata: true`);
//! - GCP: `GET /computeMetadata/v1/instance/service-accounts/{sa}/identity?audience=..&format=full`
//!   (header `Metadata-Flavor: Google`), a fresh RS256 token per request for the requested
//!   audience, signed with [`TestKey::Gcp1`] (`kid` [`GCP_KID_1`]).
//!
//! Every request is logged (method, path, and whether an IMDSv2 token was sent) so tests can
//! check what the client did.

use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::{sign_jwt_rs256, TestKey, TestPki, GCP_KID_1};

/// How the fake AWS IMDS treats session tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsImdsMode {
    /// IMDSv2 only: reads without a valid `X-aws-ec2-metadata-token` get 401 (AWS's
    /// `HttpTokens=required`).
    Imdsv2Required,
    /// Both: tokens are issued and honoured, reads without one work too (AWS's default).
    Imdsv2Optional,
    /// The token `PUT` is refused with this status (e.g. 403, 404, 405, as some proxies and
    /// IMDSv1-only emulators do); reads need no token.
    TokenRefused(u16),
}

/// The token the fake AWS IMDS issues.
pub const FAKE_IMDSV2_TOKEN: &str = "fake-imdsv2-token-AQAEAFake==";

#[derive(Debug)]
enum Cloud {
    Aws {
        mode: AwsImdsMode,
        document: String,
        signature: String,
        pkcs7: String,
    },
    Azure {
        pkcs7_base64: String,
    },
    Gcp {
        instance_id: String,
    },
}

#[derive(Debug)]
struct Shared {
    cloud: Cloud,
    requests: Mutex<Vec<String>>,
    fail_with: Mutex<Option<u16>>,
}

/// A running fake metadata service. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeImds {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeImds {
    /// AWS IMDS for `instance_id` in `region` (account `123456789012`), proofs from
    /// [`TestPki::aws_proof`].
    pub async fn aws(pki: &TestPki, instance_id: &str, region: &str, mode: AwsImdsMode) -> Self {
        let proof = pki.aws_proof(instance_id, region);
        Self::start(Cloud::Aws {
            mode,
            document: proof.document,
            signature: proof.signature,
            pkcs7: proof.pkcs7.unwrap_or_default(),
        })
        .await
    }

    /// Azure IMDS for the VM `vm_id`, the document from [`TestPki::azure_proof`].
    pub async fn azure(pki: &TestPki, vm_id: &str) -> Self {
        let proof = pki.azure_proof(vm_id);
        Self::start(Cloud::Azure {
            pkcs7_base64: proof.signature,
        })
        .await
    }

    /// GCP metadata server for the numeric `instance_id`.
    pub async fn gcp(instance_id: &str) -> Self {
        Self::start(Cloud::Gcp {
            instance_id: instance_id.to_owned(),
        })
        .await
    }

    async fn start(cloud: Cloud) -> Self {
        let shared = Arc::new(Shared {
            cloud,
            requests: Mutex::new(Vec::new()),
            fail_with: Mutex::new(None),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeImds {
            url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// The base URL, `http://127.0.0.1:PORT` (for `AWS_EC2_METADATA_SERVICE_ENDPOINT` and
    /// `CODER_AGENT_AZURE_METADATA_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT` (for `GCE_METADATA_HOST`).
    pub fn host(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Requests so far, e.g. `PUT /latest/api/token` or
    /// `GET /latest/dynamic/instance-identity/document token=yes`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Answers every request with `status` from now on (`None`: back to normal).
    pub fn fail_with(&self, status: Option<u16>) {
        *self.shared.fail_with.lock().unwrap() = status;
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: u16, body: &str) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_owned(),
    )
        .into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let path = uri.path().to_owned();
    let mut line = format!("{method} {path}");
    if let Cloud::Aws { .. } = shared.cloud {
        if method == Method::GET {
            let has = header("x-aws-ec2-metadata-token").is_some();
            line.push_str(if has { " token=yes" } else { " token=no" });
        }
    }
    shared.requests.lock().unwrap().push(line);
    if let Some(code) = *shared.fail_with.lock().unwrap() {
        return status(code, "failing on purpose");
    }
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    match &shared.cloud {
        Cloud::Aws {
            mode,
            document,
            signature,
            pkcs7,
        } => {
            if path == "/latest/api/token" {
                if method != Method::PUT {
                    return status(405, "");
                }
                if let AwsImdsMode::TokenRefused(code) = mode {
                    return status(*code, "");
                }
                if header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                    return status(400, "missing ttl");
                }
                return FAKE_IMDSV2_TOKEN.to_owned().into_response();
            }
            if method != Method::GET {
                return status(405, "");
            }
            let token = header("x-aws-ec2-metadata-token");
            match (mode, token) {
                (AwsImdsMode::Imdsv2Required, None) => return status(401, ""),
                (_, Some(t)) if t != FAKE_IMDSV2_TOKEN => return status(401, ""),
                _ => {}
            }
            let body = match path.as_str() {
                "/latest/dynamic/instance-identity/document" => document,
                "/latest/dynamic/instance-identity/signature" => signature,
                "/latest/dynamic/instance-identity/rsa2048" => pkcs7,
                _ => return status(404, "Not Found"),
            };
            body.clone().into_response()
        }
        Cloud::Azure { pkcs7_base64 } => {
            if path != "/metadata/attested/document" {
                return status(404, "");
            }
            if header("metadata") != Some("true") {
                return status(
                    400,
                    "{\"error\":\"Bad request. Required metadata header not specified\"}",
                );
            }
            if q("api-version").is_none() {
                return status(
                    400,
                    "{\"error\":\"Bad request. api-version was not specified\"}",
                );
            }
            axum::Json(serde_json::json!({"encoding": "pkcs7", "signature": pkcs7_base64}))
                .into_response()
        }
        Cloud::Gcp { instance_id } => {
            let prefix = "/computeMetadata/v1/instance/service-accounts/";
            let Some(rest) = path.strip_prefix(prefix) else {
                return status(404, "");
            };
            if !rest.ends_with("/identity") {
                return status(404, "");
            }
            if header("metadata-flavor") != Some("Google") {
                return status(403, "Missing Metadata-Flavor:Google header.");
            }
            let Some(audience) = q("audience").filter(|a| !a.is_empty()) else {
                return status(400, "non-empty audience parameter required");
            };
            if q("format") != Some("full") {
                return status(400, "this fake serves format=full only");
            }
            let claims = TestPki::gcp_claims(instance_id, audience, chrono::Utc::now());
            sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &claims).into_response()
        }
    }
}
