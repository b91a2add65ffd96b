//! Cloud metadata clients: read this instance's identity proof from AWS IMDS, Azure IMDS or
//! the GCP metadata server, in the shape the exchange endpoints take.

use std::time::Duration;

use instauth_types::{
    AwsInstanceIdentityRequest, AzureInstanceIdentityRequest, GoogleInstanceIdentityRequest, Proof,
    Provider,
};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::error::{truncate, MetadataError};

/// Which Google identity token to request: `CODER_AGENT_GOOGLE_SERVICE_ACCOUNT` and
/// `CODER_AGENT_GOOGLE_AUDIENCE` (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleIdentity {
    /// The service account whose identity token is requested (usually `default`).
    pub service_account: String,
    /// The token's audience; must match the server's `--google-audience`.
    pub audience: String,
}

impl Default for GoogleIdentity {
    fn default() -> Self {
        GoogleIdentity {
            service_account: "default".into(),
            audience: "coder".into(),
        }
    }
}

/// Default AWS IMDS endpoint.
pub const DEFAULT_AWS_ENDPOINT: &str = "http://169.254.169.254";
/// Default Azure IMDS endpoint.
pub const DEFAULT_AZURE_ENDPOINT: &str = "http://169.254.169.254";
/// Default GCP metadata host.
pub const DEFAULT_GCE_METADATA_HOST: &str = "metadata.google.internal";
/// Environment variable overriding the AWS IMDS endpoint.
pub const AWS_ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// Environment variable overriding the Azure IMDS endpoint.
pub const AZURE_ENDPOINT_ENV: &str = "CODER_AGENT_AZURE_METADATA_URL";
/// Environment variable overriding the GCP metadata host (`host[:port]`).
pub const GCE_METADATA_HOST_ENV: &str = "GCE_METADATA_HOST";

/// Lifetime requested for an IMDSv2 session token: it is only used for the three reads that
/// follow, so one minute is plenty (AWS allows 1 s to 6 h).
const AWS_TOKEN_TTL_SECONDS: &str = "60";
/// The Azure IMDS API version the attested document is requested with.
pub const AZURE_API_VERSION: &str = "2020-09-01";

/// Where the metadata services are. Link-local by default; tests and unusual networks point
/// them elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataEndpoints {
    /// AWS IMDS base URL, e.g. `http://169.254.169.254`.
    pub aws: String,
    /// Azure IMDS base URL, e.g. `http://169.254.169.254`.
    pub azure: String,
    /// GCP metadata `host[:port]`, e.g. `metadata.google.internal`.
    pub gce_host: String,
}

impl Default for MetadataEndpoints {
    fn default() -> Self {
        MetadataEndpoints {
            aws: DEFAULT_AWS_ENDPOINT.into(),
            azure: DEFAULT_AZURE_ENDPOINT.into(),
            gce_host: DEFAULT_GCE_METADATA_HOST.into(),
        }
    }
}

impl MetadataEndpoints {
    /// The defaults, overridden by [`AWS_ENDPOINT_ENV`], [`AZURE_ENDPOINT_ENV`] and
    /// [`GCE_METADATA_HOST_ENV`] when set and non-empty.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut e = MetadataEndpoints::default();
        if let Some(v) = var(AWS_ENDPOINT_ENV) {
            e.aws = v.trim().into();
        }
        if let Some(v) = var(AZURE_ENDPOINT_ENV) {
            e.azure = v.trim().into();
        }
        if let Some(v) = var(GCE_METADATA_HOST_ENV) {
            e.gce_host = v.trim().into();
        }
        e
    }
}

/// A client for the metadata services. Requests bypass any HTTP proxy (IMDS is link-local)
/// and time out after 5 s (2 s to connect).
#[derive(Debug, Clone)]
pub struct MetadataClient {
    http: reqwest::Client,
    endpoints: MetadataEndpoints,
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl MetadataClient {
    /// A client for `endpoints`.
    pub fn new(endpoints: MetadataEndpoints) -> Result<Self, MetadataError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| MetadataError::Request {
                endpoint: endpoints.aws.clone(),
                source,
            })?;
        Ok(MetadataClient { http, endpoints })
    }

    /// The endpoints in use.
    pub fn endpoints(&self) -> &MetadataEndpoints {
        &self.endpoints
    }

    /// Reads the AWS instance identity document, its `signature` and its `rsa2048` PKCS#7.
    ///
    /// Uses IMDSv2 (a session token from `PUT /latest/api/token`) and falls back to IMDSv1
    /// when the token call is refused (HTTP 403/404/405 or connection refused), as it is
    /// behind some proxies and on IMDSv1-only emulators.
    pub async fn aws_identity(&self) -> Result<AwsInstanceIdentityRequest, MetadataError> {
        let base = base(&self.endpoints.aws);
        let token = self.aws_token(base).await?;
        let get = |path: &'static str| {
            let endpoint = format!("{base}/latest/dynamic/instance-identity/{path}");
            let mut req = self.http.get(&endpoint);
            if let Some(t) = &token {
                req = req.header("X-aws-ec2-metadata-token", t);
            }
            async move { text(req, endpoint).await }
        };
        let document = get("document").await?;
        let signature = get("signature").await?;
        let pkcs7 = get("rsa2048").await?;
        Ok(AwsInstanceIdentityRequest {
            document,
            signature: signature.trim().to_owned(),
            pkcs7: Some(pkcs7.trim().to_owned()),
            agent_name: None,
        })
    }

    /// `Some(token)` with IMDSv2, `None` to use IMDSv1.
    async fn aws_token(&self, base: &str) -> Result<Option<String>, MetadataError> {
        let endpoint = format!("{base}/latest/api/token");
        let resp = self
            .http
            .put(&endpoint)
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                AWS_TOKEN_TTL_SECONDS,
            )
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                let token = r.text().await.map_err(|source| MetadataError::Request {
                    endpoint: endpoint.clone(),
                    source,
                })?;
                let token = token.trim().to_owned();
                if token.is_empty() {
                    return Err(MetadataError::Body {
                        endpoint,
                        detail: "empty IMDSv2 session token".into(),
                    });
                }
                Ok(Some(token))
            }
            Ok(r)
                if matches!(
                    r.status(),
                    StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) =>
            {
                tracing::debug!(%endpoint, status = r.status().as_u16(), "IMDSv2 token refused; using IMDSv1");
                Ok(None)
            }
            Ok(r) => Err(status_error(endpoint, r).await),
            Err(e) if e.is_connect() => {
                tracing::debug!(%endpoint, error = %e, "IMDSv2 token call refused; using IMDSv1");
                Ok(None)
            }
            Err(source) => Err(MetadataError::Request { endpoint, source }),
        }
    }

    /// Reads the Azure attested document (PKCS#7, base64).
    pub async fn azure_identity(&self) -> Result<AzureInstanceIdentityRequest, MetadataError> {
        #[derive(Deserialize)]
        struct Attested {
            #[serde(default)]
            encoding: String,
            #[serde(default)]
            signature: String,
        }
        let endpoint = format!(
            "{}/metadata/attested/document?api-version={AZURE_API_VERSION}",
            base(&self.endpoints.azure)
        );
        let body = text(
            self.http.get(&endpoint).header("Metadata", "true"),
            endpoint.clone(),
        )
        .await?;
        let attested: Attested = serde_json::from_str(&body).map_err(|e| MetadataError::Body {
            endpoint: endpoint.clone(),
            detail: format!("not the attested document JSON: {e}"),
        })?;
        if attested.signature.trim().is_empty() {
            return Err(MetadataError::Body {
                endpoint,
                detail: "no signature in the attested document".into(),
            });
        }
        if !attested.encoding.is_empty() && !attested.encoding.eq_ignore_ascii_case("pkcs7") {
            return Err(MetadataError::Body {
                endpoint,
                detail: format!("unsupported encoding {:?}", attested.encoding),
            });
        }
        Ok(AzureInstanceIdentityRequest {
            signature: attested.signature.trim().to_owned(),
            encoding: "pkcs7".into(),
            agent_name: None,
        })
    }

    /// Reads this instance's proof for `provider` (`google` says which Google identity token).
    pub async fn proof(
        &self,
        provider: Provider,
        google: &GoogleIdentity,
    ) -> Result<Proof, MetadataError> {
        Ok(match provider {
            Provider::Aws => Proof::Aws(self.aws_identity().await?),
            Provider::Azure => Proof::Azure(self.azure_identity().await?),
            Provider::Gcp => Proof::Gcp(
                self.google_identity(&google.service_account, &google.audience)
                    .await?,
            ),
        })
    }

    /// Reads a Google identity token (`format=full`) for `service_account` and `audience`.
    pub async fn google_identity(
        &self,
        service_account: &str,
        audience: &str,
    ) -> Result<GoogleInstanceIdentityRequest, MetadataError> {
        let host = self
            .endpoints
            .gce_host
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let endpoint = format!(
            "http://{host}/computeMetadata/v1/instance/service-accounts/{}/identity",
            path_segment(service_account)
        );
        let req = self
            .http
            .get(&endpoint)
            .query(&[("audience", audience), ("format", "full")])
            .header("Metadata-Flavor", "Google");
        let jwt = text(req, endpoint.clone()).await?;
        let jwt = jwt.trim().to_owned();
        if jwt.split('.').count() != 3 {
            return Err(MetadataError::Body {
                endpoint,
                detail: "the identity token is not a JWT".into(),
            });
        }
        Ok(GoogleInstanceIdentityRequest {
            json_web_token: jwt,
            agent_name: None,
        })
    }
}

/// Percent-encodes what may not appear in a path segment (service accounts are e-mail
/// addresses or `default`).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn text(req: reqwest::RequestBuilder, endpoint: String) -> Result<String, MetadataError> {
    let resp = req.send().await.map_err(|source| MetadataError::Request {
        endpoint: endpoint.clone(),
        source,
    })?;
    if !resp.status().is_success() {
        return Err(status_error(endpoint, resp).await);
    }
    resp.text()
        .await
        .map_err(|source| MetadataError::Request { endpoint, source })
}

async fn status_error(endpoint: String, resp: reqwest::Response) -> MetadataError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    MetadataError::Status {
        endpoint,
        status,
        body: truncate(body.trim(), 200),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_is_escaped() {
        assert_eq!(path_segment("default"), "default");
        assert_eq!(
            path_segment("vm@p.iam.gserviceaccount.com"),
            "vm@p.iam.gserviceaccount.com"
        );
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}
