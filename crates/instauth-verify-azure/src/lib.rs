//! Azure attested data verifier.
//!
//! The proof is the base64 PKCS#7 of IMDS `/metadata/attested/document`. Checks, all on the ONE
//! certificate named by the ONE `SignerInfo` (issuer and serial number), never on "some
//! certificate in the bag" (DESIGN.md, "Lessons from peers' security bugs"):
//! 0. the certificate bag holds at most [`MAX_BAG_CERTIFICATES`] certificates of at most
//!    [`MAX_CERTIFICATE_LEN`] bytes, checked before any signature work;
//! 1. the signer's subject alternative names include `metadata.azure.com`, `metadata.azure.us`,
//!    `metadata.azure.cn` or `metadata.microsoftazure.de`, or a subdomain of one;
//! 2. it chains (rustls-webpki, TLS server usage) to a pinned Azure root ([`AzureTrust`]) at the
//!    clock's time, through issuing CAs that are built in, configured, fetched (AIA) or in the
//!    bag, selected by name from the signer upwards so that no proof can make path building
//!    expensive (see [`chain`] for the bounds and why);
//! 3. its key verifies the signature over the content. Azure signs with
//!    `digestAlgorithm = sha256WithRSAEncryption` and no signed attributes (RSA over the raw
//!    content); that shape is accepted explicitly. With signed attributes, the `messageDigest`
//!    and the signature over the attributes are checked;
//! 4. the content's own `timeStamp` window holds; `vmId` (required), `subscriptionId` and
//!    `location` (when present) are read from it.
//!
//! # Running it
//!
//! Verification is synchronous CPU work (a few RSA operations): run [`AzureVerifier::verify`],
//! or an [`AzureJob`] from [`AzureVerifier::job`], on a blocking pool, never on the threads that
//! serve HTTP. The verifier spawns no threads and does no IO.
//!
//! When the signer's issuing CA is unknown (a generation newer than the built-in ones), the
//! error is [`AzureError::UnknownIssuer`], carrying the signer's `caIssuers` URLs. Fetching is
//! async IO, done by an [`aia::AiaFetcher`]; [`AzureVerifier::verify_with_aia`] runs the whole
//! protocol:
//! 1. run the job; unless it fails with `UnknownIssuer`, that is the answer;
//! 2. fetch the issuer with [`aia::AiaFetcher::fetch`] (allow-listed hosts only, bounded,
//!    cached, rate-limited); a failure is [`AzureError::Aia`];
//! 3. run the job again with the fetched certificates ([`AzureJob::with_fetched`]): a fetched
//!    certificate is admitted into the verifier's set of issuing CAs only if the signer's chain
//!    verifies through it to a pinned root; then [`aia::AiaFetcher::remember`] stores it in the
//!    persistent cache. Later proofs of that generation verify in step 1.
//!
//! ```no_run
//! # async fn demo(req: instauth_types::AzureInstanceIdentityRequest) -> Result<(), instauth_verify_azure::AzureError> {
//! use std::sync::Arc;
//! use instauth_verify_azure::{aia::AiaFetcher, AzureError, AzureTrust, AzureVerifier};
//!
//! let verifier = AzureVerifier::new(AzureTrust::builtin(), Arc::new(instauth_verify::SystemClock));
//! let fetcher = AiaFetcher::new(None)?;
//! // Here the job runs inline; the server hands it to its blocking pool instead.
//! let identity = verifier
//!     .verify_with_aia(&req, Some(&fetcher), |job| async move {
//!         Ok::<_, AzureError>(job.run())
//!     })
//!     .await?;
//! println!("{}", identity.instance_id());
//! # Ok(()) }
//! ```
//!
//! [`AzureVerifier::replace_trust`] swaps the trust material (SIGHUP) and keeps fetched CAs;
//! [`AzureVerifier::trust_certificates`] lists everything trusted for `instauth trust list`.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use instauth_types::AzureInstanceIdentityRequest;
use instauth_verify::encoding::decode_base64_lenient_whitespace;
use instauth_verify::pkcs7::{BagCertificate, Pkcs7Error, RsaPublicKey, UnverifiedSignedData};
use instauth_verify::trust::{TrustCertificate, TrustSource};
use instauth_verify::{Clock, Identity, Verified};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, SubjectAltName};
use x509_cert::Certificate;

pub mod aia;
pub mod chain;
mod document;
mod error;
mod trust;

pub use aia::{AiaError, AiaFetcher};
pub use chain::{
    MAX_BAG_CERTIFICATES, MAX_CANDIDATES, MAX_CERTIFICATE_LEN, MAX_PATH_INTERMEDIATES,
};
pub use document::TIMESTAMP_LEEWAY_SECONDS;
pub use error::{AzureError, MissingIssuer};
pub use trust::AzureTrust;

use aia::{printable, FetchedIssuer};
use der::Decode;
use trust::{CaCert, Names};

/// DNS names (and their subdomains) Azure's attested-data signing certificates are issued for.
pub const ALLOWED_SIGNER_NAMES: &[&str] = &[
    "metadata.azure.com",
    "metadata.azure.us",
    "metadata.azure.cn",
    "metadata.microsoftazure.de",
];

/// Most fetched issuing CAs kept (oldest dropped first); a generation has a handful.
pub const MAX_FETCHED_ISSUERS: usize = 16;
/// Most `caIssuers` URLs read from a signer certificate.
const MAX_CA_ISSUER_URLS: usize = 4;

/// Trust material plus the issuing CAs admitted from AIA fetches.
#[derive(Debug)]
struct State {
    trust: AzureTrust,
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    fetched: Vec<Admitted>,
}

/// An issuing CA admitted from an AIA fetch.
#[derive(Debug, Clone)]
struct Admitted {
    ca: CaCert,
    info: TrustCertificate,
    url: String,
}

impl State {
    fn new(trust: AzureTrust, fetched: Vec<Admitted>) -> Self {
        let anchors = trust.roots.iter().map(|r| r.anchor.clone()).collect();
        State {
            trust,
            anchors,
            fetched,
        }
    }
}

/// Verifies Azure attested documents. Cheap to clone (clones share the trust material and the
/// fetched issuing CAs) and `Sync`.
#[derive(Clone)]
pub struct AzureVerifier {
    state: Arc<RwLock<Arc<State>>>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for AzureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.snapshot();
        f.debug_struct("AzureVerifier")
            .field("roots", &state.trust.root_count())
            .field("intermediates", &state.trust.intermediate_count())
            .field("fetched", &state.fetched.len())
            .field("clock", &self.clock)
            .finish()
    }
}

/// One verification, to run on a blocking pool ([`AzureJob::run`]). Holds the request (shared:
/// the retry with a fetched issuing CA does not copy it again); its `Debug` never shows the
/// proof.
#[derive(Clone)]
pub struct AzureJob {
    verifier: AzureVerifier,
    request: Arc<AzureInstanceIdentityRequest>,
    fetched: Option<FetchedIssuer>,
}

impl fmt::Debug for AzureJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureJob")
            .field("fetched", &self.fetched)
            .finish_non_exhaustive()
    }
}

impl AzureJob {
    /// Offers the certificates fetched for the signer's issuer as candidates; one the signer's
    /// chain verifies through is admitted into the verifier.
    pub fn with_fetched(mut self, fetched: FetchedIssuer) -> Self {
        self.fetched = Some(fetched);
        self
    }

    /// Verifies (synchronous CPU work).
    pub fn run(self) -> Result<Verified<Identity>, AzureError> {
        self.verifier
            .verify_request(&self.request, self.fetched.as_ref())
    }
}

fn unix_time(t: DateTime<Utc>) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(t.timestamp()).unwrap_or(0),
    ))
}

fn from_unix(t: UnixTime) -> DateTime<Utc> {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// True if `name` is one of [`ALLOWED_SIGNER_NAMES`] or a subdomain (a wildcard SAN such as
/// `*.metadata.azure.com` counts as a subdomain).
fn allowed_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    ALLOWED_SIGNER_NAMES.iter().any(|allowed| {
        name == *allowed
            || name
                .strip_suffix(allowed)
                .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
    })
}

fn dns_names(cert: &Certificate) -> Result<Vec<String>, AzureError> {
    let Some((_critical, san)) = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .map_err(|e| Pkcs7Error::Der(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .0
        .iter()
        .filter_map(|n| match n {
            GeneralName::DnsName(d) => Some(d.as_str().to_string()),
            _ => None,
        })
        .collect())
}

/// The `caIssuers` URLs of `cert` (at most 4; longer than 512 bytes skipped).
fn ca_issuer_urls(cert: &Certificate) -> Vec<String> {
    let Ok(Some((_, aia))) = cert.tbs_certificate.get::<AuthorityInfoAccessSyntax>() else {
        return Vec::new();
    };
    aia.0
        .iter()
        .filter(|d| d.access_method == const_oid::db::rfc5280::ID_AD_CA_ISSUERS)
        .filter_map(|d| match &d.access_location {
            GeneralName::UniformResourceIdentifier(uri) if uri.as_str().len() <= 512 => {
                Some(uri.as_str().to_string())
            }
            _ => None,
        })
        .take(MAX_CA_ISSUER_URLS)
        .collect()
}

impl AzureVerifier {
    /// A verifier with `trust`, checking certificate validity at `clock`'s time.
    pub fn new(trust: AzureTrust, clock: Arc<dyn Clock>) -> Self {
        AzureVerifier {
            state: Arc::new(RwLock::new(Arc::new(State::new(trust, Vec::new())))),
            clock,
        }
    }

    fn snapshot(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the trust material (SIGHUP), keeping the fetched issuing CAs (a path through
    /// one still has to end at one of the new anchors).
    pub fn replace_trust(&self, trust: AzureTrust) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        *state = Arc::new(State::new(trust, state.fetched.clone()));
    }

    /// Every trusted certificate: roots, built-in and configured issuing CAs, and the ones
    /// admitted from AIA fetches (source = their URL). For `instauth trust list` and the
    /// expiry metric.
    pub fn trust_certificates(&self) -> Vec<TrustCertificate> {
        let state = self.snapshot();
        let mut all = state.trust.trust_certificates();
        all.extend(state.fetched.iter().map(|a| a.info.clone()));
        all
    }

    /// The DER of the issuing CA admitted from `url`, if one was.
    pub fn admitted_from(&self, url: &str) -> Option<Vec<u8>> {
        self.snapshot()
            .fetched
            .iter()
            .find(|a| a.url == url)
            .map(|a| a.ca.der.to_vec())
    }

    /// A job verifying `req`, to run on a blocking pool.
    pub fn job(&self, req: &AzureInstanceIdentityRequest) -> AzureJob {
        self.shared_job(Arc::new(req.clone()))
    }

    fn shared_job(&self, req: Arc<AzureInstanceIdentityRequest>) -> AzureJob {
        AzureJob {
            verifier: self.clone(),
            request: req,
            fetched: None,
        }
    }

    /// Verifies a request body (synchronous CPU work; see the crate documentation).
    pub fn verify(
        &self,
        req: &AzureInstanceIdentityRequest,
    ) -> Result<Verified<Identity>, AzureError> {
        self.verify_request(req, None)
    }

    /// Verifies `req`, fetching an unknown issuing CA with `aia` (when given) as the crate
    /// documentation describes. `run_sync` runs a job on the caller's blocking pool; its `Err`
    /// is the pool's own failure, passed through.
    pub async fn verify_with_aia<F, Fut, E>(
        &self,
        req: &AzureInstanceIdentityRequest,
        aia: Option<&AiaFetcher>,
        run_sync: F,
    ) -> Result<Verified<Identity>, E>
    where
        F: FnMut(AzureJob) -> Fut,
        Fut: Future<Output = Result<Result<Verified<Identity>, AzureError>, E>>,
        E: From<AzureError>,
    {
        self.verify_owned_with_aia(req.clone(), aia, run_sync).await
    }

    /// [`AzureVerifier::verify_with_aia`] taking the request by value, so that it reaches the
    /// blocking pool uncopied.
    pub async fn verify_owned_with_aia<F, Fut, E>(
        &self,
        req: AzureInstanceIdentityRequest,
        aia: Option<&AiaFetcher>,
        mut run_sync: F,
    ) -> Result<Verified<Identity>, E>
    where
        F: FnMut(AzureJob) -> Fut,
        Fut: Future<Output = Result<Result<Verified<Identity>, AzureError>, E>>,
        E: From<AzureError>,
    {
        let req = Arc::new(req);
        let first = run_sync(self.shared_job(req.clone())).await?;
        let (missing, fetcher) = match (first, aia) {
            (Err(AzureError::UnknownIssuer(missing)), Some(fetcher)) => (missing, fetcher),
            (other, _) => return other.map_err(E::from),
        };
        let fetched = fetcher
            .fetch(&missing)
            .await
            .map_err(|e| E::from(AzureError::Aia(e)))?;
        let url = fetched.url.clone();
        let second = run_sync(self.shared_job(req).with_fetched(fetched)).await?;
        if let Some(der) = self.admitted_from(&url) {
            fetcher.remember(&url, &der).await;
        }
        second.map_err(E::from)
    }

    fn verify_request(
        &self,
        req: &AzureInstanceIdentityRequest,
        fetched: Option<&FetchedIssuer>,
    ) -> Result<Verified<Identity>, AzureError> {
        if !req.encoding.is_empty() && !req.encoding.eq_ignore_ascii_case("pkcs7") {
            return Err(AzureError::UnsupportedEncoding {
                encoding: req.encoding.chars().take(32).collect(),
            });
        }
        if req.signature.trim().is_empty() {
            return Err(AzureError::MissingProof);
        }
        let body = decode_base64_lenient_whitespace(&req.signature)?;
        self.verify_der(&body, fetched)
    }

    /// Verifies a PKCS#7 body (DER or BER).
    pub fn verify_pkcs7_der(&self, body: &[u8]) -> Result<Verified<Identity>, AzureError> {
        self.verify_der(body, None)
    }

    fn verify_der(
        &self,
        body: &[u8],
        fetched: Option<&FetchedIssuer>,
    ) -> Result<Verified<Identity>, AzureError> {
        let signed = UnverifiedSignedData::parse(body)?;

        // 0. Bound the bag before anything costs more than parsing.
        let bag = signed.certificates();
        if bag.len() > MAX_BAG_CERTIFICATES {
            return Err(AzureError::CertificateBagTooLarge {
                count: bag.len(),
                max: MAX_BAG_CERTIFICATES,
            });
        }
        if let Some(big) = bag.iter().find(|c| c.der.len() > MAX_CERTIFICATE_LEN) {
            return Err(AzureError::CertificateTooLarge {
                len: big.der.len(),
                max: MAX_CERTIFICATE_LEN,
            });
        }
        let signer = signed.single_signer()?;
        let signer_cert = signed.signer_certificate(signer)?;

        // 1. Name, on the signer's certificate.
        let names = dns_names(&signer_cert.certificate)?;
        if !names.iter().any(|n| allowed_name(n)) {
            return Err(AzureError::UntrustedSignerName {
                names: names.into_iter().take(8).map(|n| printable(&n)).collect(),
            });
        }

        // 2. Chain, on the same certificate.
        let now = self.clock.now();
        self.check_chain(signer_cert, bag, fetched, now)?;

        // 3. Signature over the content, with that certificate's key.
        let key =
            RsaPublicKey::from_certificate(&signer_cert.certificate, false, "signer certificate")?;
        let content = signed.verify_signer(signer, &key, true)?;

        // 4. The verified document.
        let doc = document::read(content, now)?;
        Ok(Verified::__new_after_verification(Identity::Azure {
            instance_id: doc.vm_id,
            subscription_id: doc.subscription_id,
            location: doc.location,
        }))
    }

    fn check_chain(
        &self,
        signer: &BagCertificate,
        bag: &[BagCertificate],
        fetched: Option<&FetchedIssuer>,
        now: DateTime<Utc>,
    ) -> Result<(), AzureError> {
        let untrusted = |reason: String| AzureError::UntrustedChain { reason };
        let signer_names = Names::of(&signer.der, &signer.certificate).map_err(untrusted)?;
        let state = self.snapshot();
        let fetched_cas: Vec<CaCert> = fetched
            .map(|f| {
                f.certificates
                    .iter()
                    .filter_map(|der| CaCert::parse(der.clone()).ok().map(|(ca, _)| ca))
                    .collect()
            })
            .unwrap_or_default();
        // Bag certificates other than the signer; a self-issued one could only be a root,
        // and roots come from the trust material.
        let bag_cas: Vec<CaCert> = bag
            .iter()
            .filter(|c| c.der != signer.der)
            .filter_map(|c| CaCert::parse(c.der.clone()).ok().map(|(ca, _)| ca))
            .filter(|c| !c.names.is_self_issued())
            .collect();
        let pool: Vec<&CaCert> = state
            .trust
            .intermediates
            .iter()
            .map(|t| &t.ca)
            .chain(state.fetched.iter().map(|a| &a.ca))
            .chain(fetched_cas.iter())
            .chain(bag_cas.iter())
            .collect();
        let selection = chain::select(&signer_names, &state.trust.roots, &pool);
        if !selection.issuer_known {
            let issuer = &signer.certificate.tbs_certificate.issuer;
            return Err(AzureError::UnknownIssuer(MissingIssuer {
                issuer: printable(&issuer.to_string()),
                ca_issuers: ca_issuer_urls(&signer.certificate)
                    .iter()
                    .map(|u| printable(u))
                    .collect(),
                issuer_name: signer_names.issuer.clone(),
                issuer_key_id: signer_names.aki.clone(),
            }));
        }

        let ee_der = CertificateDer::from(signer.der.as_slice());
        let ee =
            webpki::EndEntityCert::try_from(&ee_der).map_err(|e| untrusted(format!("{e:?}")))?;
        let path = ee
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &state.anchors,
                &selection.candidates,
                unix_time(now),
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|e| match e {
                webpki::Error::CertExpired { not_after, .. } => AzureError::CertificateExpired {
                    now,
                    not_after: from_unix(not_after),
                },
                webpki::Error::CertNotValidYet { not_before, .. } => {
                    AzureError::CertificateNotYetValid {
                        now,
                        not_before: from_unix(not_before),
                    }
                }
                other => untrusted(format!("{other:?}")),
            })?;

        // Admit a fetched certificate only now: it chains to a pinned root at `now` and it
        // issued this signer.
        let admit: Vec<&CaCert> = fetched_cas
            .iter()
            .filter(|ca| {
                path.intermediate_certificates()
                    .any(|used| used.der().as_ref() == ca.der.as_ref())
            })
            .collect();
        if let (Some(f), false) = (fetched, admit.is_empty()) {
            self.admit(&admit, &f.url);
        }
        Ok(())
    }

    fn admit(&self, cas: &[&CaCert], url: &str) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut fetched = state.fetched.clone();
        for ca in cas {
            if fetched.iter().any(|a| a.ca.der == ca.der) {
                continue;
            }
            let Ok(cert) = Certificate::from_der(&ca.der) else {
                continue;
            };
            let info = ca.describe(&cert, TrustSource::Fetched(url.to_string()));
            tracing::info!(url, subject = %info.subject, "Admitted a fetched Azure issuing CA.");
            fetched.push(Admitted {
                ca: (*ca).clone(),
                info,
                url: url.to_string(),
            });
        }
        if fetched.len() > MAX_FETCHED_ISSUERS {
            let excess = fetched.len() - MAX_FETCHED_ISSUERS;
            fetched.drain(..excess);
        }
        *state = Arc::new(State::new(state.trust.clone(), fetched));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subdomains() {
        assert!(allowed_name("metadata.azure.com"));
        assert!(allowed_name("southcentralus.metadata.azure.com"));
        assert!(allowed_name("*.metadata.azure.us"));
        assert!(allowed_name("METADATA.AZURE.CN."));
        assert!(!allowed_name("evilmetadata.azure.com"));
        assert!(!allowed_name("metadata.azure.com.evil.example"));
        assert!(!allowed_name(".metadata.azure.com"));
        assert!(!allowed_name("azure.com"));
    }
}
