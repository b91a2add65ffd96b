//! Test support for instauth: test CAs and keys, signed cloud proofs, a fake JWKS server.
//!
//! Everything here is for tests only. The RSA private keys in `testdata/` are public.
//!
//! Entry point: [`TestPki::new`] issues (with rcgen) the certificates the verifiers are
//! configured with, and builds proofs that verify against them:
//!
//! ```
//! let pki = instauth_testkit::TestPki::new();
//! let aws_request = pki.aws_proof("i-0123456789abcdef0", "us-east-1");
//! let azure_request = pki.azure_proof("2f0c0e4e-0000-4000-8000-000000000001");
//! let gcp_request = pki.gcp_jwt("4242", "coder");
//! # let _ = (aws_request, azure_request, gcp_request);
//! ```
//! Configure the verifiers with [`TestPki::aws_certificates_pem`], [`TestPki::azure_root_pem`]
//! and [`TestPki::gcp_jwks_json`] (or serve that with [`JwksServer`]).

#![allow(clippy::unwrap_used)] // Test support: a failure here is a broken test, not input.

pub mod aia_server;
pub mod azure;
#[cfg(feature = "bench")]
pub mod bench;
pub mod browser;
pub mod cpu;
pub mod der_build;
pub mod jwks_server;
pub mod keys;

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use instauth_types::{
    AwsInstanceIdentityRequest, AzureInstanceIdentityRequest, GoogleInstanceIdentityRequest,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

pub use aia_server::{AiaResponse, AiaServer};
pub use der_build::{Pkcs7Signer, SignedDataBuilder};
pub use jwks_server::JwksServer;
pub use keys::TestKey;

/// Base64 as IMDS prints it: standard alphabet, padded, wrapped at 64 columns.
pub fn base64_wrapped(bytes: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(bytes);
    flat.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Base64 on one line.
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn offset(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap()
}

/// An issued certificate with its key.
pub struct Issued {
    /// rcgen's certificate (also the issuer handle for children).
    pub cert: rcgen::Certificate,
    /// Its key pair (ECDSA P-256 for CAs, the RSA test key for leaves).
    pub key: KeyPair,
}

impl Issued {
    /// DER of the certificate.
    pub fn der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }
    /// PEM of the certificate.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// Validity of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// notBefore.
    pub not_before: DateTime<Utc>,
    /// notAfter.
    pub not_after: DateTime<Utc>,
}

impl Validity {
    /// From `now - half` to `now + half`.
    pub fn around(now: DateTime<Utc>, half: Duration) -> Self {
        Validity {
            not_before: now - half,
            not_after: now + half,
        }
    }
}

fn ca_params(cn: &str, validity: Validity, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "instauth test");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = offset(validity.not_before);
    p.not_after = offset(validity.not_after);
    p.serial_number = Some(SerialNumber::from(serial));
    p
}

/// A self-signed CA with a fresh ECDSA P-256 key.
pub fn issue_root(cn: &str, validity: Validity, serial: u64) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = ca_params(cn, validity, serial).self_signed(&key).unwrap();
    Issued { cert, key }
}

/// An intermediate CA under `issuer`, with a fresh ECDSA P-256 key.
pub fn issue_intermediate(cn: &str, validity: Validity, serial: u64, issuer: &Issued) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = ca_params(cn, validity, serial)
        .signed_by(&key, &issuer.cert, &issuer.key)
        .unwrap();
    Issued { cert, key }
}

/// A TLS-server leaf for `dns_names` with the RSA test key `key`, issued by `issuer`.
pub fn issue_leaf(
    cn: &str,
    dns_names: &[&str],
    key: TestKey,
    validity: Validity,
    serial: u64,
    issuer: &Issued,
) -> Issued {
    let mut p = CertificateParams::new(dns_names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = offset(validity.not_before);
    p.not_after = offset(validity.not_after);
    p.serial_number = Some(SerialNumber::from(serial));
    let kp = key.rcgen_key_pair();
    let cert = p.signed_by(&kp, &issuer.cert, &issuer.key).unwrap();
    Issued { cert, key: kp }
}

/// A certificate for a key rcgen cannot load (RSA-1024), issued by `issuer`. AWS region
/// certificates only carry a public key, so this is all the AWS tests need.
pub fn issue_for_public_key(
    cn: &str,
    key: TestKey,
    validity: Validity,
    issuer: &Issued,
) -> Vec<u8> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = offset(validity.not_before);
    p.not_after = offset(validity.not_after);
    p.serial_number = Some(SerialNumber::from(7u64));
    let public = keys::Pkcs1PublicKey(key.pkcs1_public_der());
    p.signed_by(&public, &issuer.cert, &issuer.key)
        .unwrap()
        .der()
        .to_vec()
}

fn pem_of(der: &[u8]) -> String {
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_wrapped(der)
    )
}

/// The test PKI: AWS region certificates, an Azure-like hierarchy plus an attacker's, and
/// Google-like JWKS keys. Certificates are valid around [`TestPki::now`].
pub struct TestPki {
    /// When the PKI was made (whole seconds); verify at this time for "valid" cases.
    pub now: DateTime<Utc>,
    /// Certificate (DER) of [`TestKey::AwsRegion1024`].
    pub aws_cert_1024: Vec<u8>,
    /// Certificate (DER) of [`TestKey::AwsRegion2048`].
    pub aws_cert_2048: Vec<u8>,
    /// The Azure-like root.
    pub azure_root: Issued,
    /// The Azure-like intermediate.
    pub azure_intermediate: Issued,
    /// The `metadata.azure.com` signer (key [`TestKey::AzureSigner`]).
    pub azure_leaf: Issued,
    /// Validity of [`TestPki::azure_leaf`]: `now` ± 1 hour.
    pub azure_leaf_validity: Validity,
    /// An attacker's own root.
    pub attacker_root: Issued,
    /// An attacker's leaf claiming `metadata.azure.com` (key [`TestKey::Attacker`]).
    pub attacker_leaf: Issued,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// `kid` of [`TestKey::Gcp1`] in the test JWKS.
pub const GCP_KID_1: &str = "test-key-1";
/// `kid` of [`TestKey::Gcp2`] in the test JWKS.
pub const GCP_KID_2: &str = "test-key-2";

impl TestPki {
    /// Issues everything, valid around the current time.
    pub fn new() -> Self {
        let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        Self::at(now)
    }

    /// Issues everything, valid around `now`: CAs ± 1 year, the Azure leaf ± 1 hour.
    pub fn at(now: DateTime<Utc>) -> Self {
        let long = Validity::around(now, Duration::days(365));
        let leaf_validity = Validity::around(now, Duration::hours(1));
        let aws_ca = issue_root("instauth test AWS", long, 1);
        let aws_cert_1024 =
            issue_for_public_key("ec2 test 1024", TestKey::AwsRegion1024, long, &aws_ca);
        let aws_cert_2048 =
            issue_for_public_key("ec2 test 2048", TestKey::AwsRegion2048, long, &aws_ca);
        let azure_root = issue_root("instauth test Azure root", long, 10);
        let azure_intermediate =
            issue_intermediate("instauth test Azure TLS CA", long, 11, &azure_root);
        let azure_leaf = issue_leaf(
            "metadata.azure.com",
            &["metadata.azure.com", "testregion.metadata.azure.com"],
            TestKey::AzureSigner,
            leaf_validity,
            12,
            &azure_intermediate,
        );
        let attacker_root = issue_root("attacker root", long, 20);
        let attacker_leaf = issue_leaf(
            "metadata.azure.com",
            &["metadata.azure.com"],
            TestKey::Attacker,
            leaf_validity,
            21,
            &attacker_root,
        );
        TestPki {
            now,
            aws_cert_1024,
            aws_cert_2048,
            azure_root,
            azure_intermediate,
            azure_leaf,
            azure_leaf_validity: leaf_validity,
            attacker_root,
            attacker_leaf,
        }
    }

    // ----- AWS -----

    /// PEM for `--aws-certificates`: the test region certificates (both formats) for `region`.
    pub fn aws_certificates_pem(&self, region: &str) -> String {
        format!(
            "# region: {region}\n{}# region: {region}\n{}",
            pem_of(&self.aws_cert_1024),
            pem_of(&self.aws_cert_2048)
        )
    }

    /// An identity document as IMDS prints it (pretty JSON, no trailing newline).
    pub fn aws_document(instance_id: &str, region: &str, account_id: &str) -> String {
        format!(
            "{{\n  \"accountId\" : \"{account_id}\",\n  \"architecture\" : \"x86_64\",\n  \
             \"availabilityZone\" : \"{region}a\",\n  \"imageId\" : \"ami-0123456789abcdef0\",\n  \
             \"instanceId\" : \"{instance_id}\",\n  \"instanceType\" : \"t3.micro\",\n  \
             \"pendingTime\" : \"2024-01-01T00:00:00Z\",\n  \"privateIp\" : \"10.0.0.1\",\n  \
             \"region\" : \"{region}\",\n  \"version\" : \"2017-09-30\"\n}}"
        )
    }

    /// A request with `document`, `signature` (test RSA-1024 key) and `pkcs7` (test RSA-2048
    /// key, with signed attributes), for account `123456789012`.
    pub fn aws_proof(&self, instance_id: &str, region: &str) -> AwsInstanceIdentityRequest {
        let document = Self::aws_document(instance_id, region, "123456789012");
        AwsInstanceIdentityRequest {
            signature: Self::aws_signature(document.as_bytes(), TestKey::AwsRegion1024),
            pkcs7: Some(base64_wrapped(
                &self.aws_pkcs7(document.as_bytes(), TestKey::AwsRegion2048),
            )),
            document,
            agent_name: None,
        }
    }

    /// Only the `signature` format (no `pkcs7`).
    pub fn aws_signature_proof(
        &self,
        instance_id: &str,
        region: &str,
    ) -> AwsInstanceIdentityRequest {
        let mut req = self.aws_proof(instance_id, region);
        req.pkcs7 = None;
        req
    }

    /// Only the `rsa2048` format (empty `document`, as the agent may send).
    pub fn aws_pkcs7_proof(&self, instance_id: &str, region: &str) -> AwsInstanceIdentityRequest {
        let mut req = self.aws_proof(instance_id, region);
        req.document = String::new();
        req.signature = String::new();
        req
    }

    /// Base64 (wrapped) RSA PKCS#1 v1.5 SHA-256 signature of `document` with `key`.
    pub fn aws_signature(document: &[u8], key: TestKey) -> String {
        base64_wrapped(&key.sign_sha256(document))
    }

    /// DER PKCS#7 over `document`, signed with signed attributes by `key`, as AWS's `rsa2048`.
    pub fn aws_pkcs7(&self, document: &[u8], key: TestKey) -> Vec<u8> {
        SignedDataBuilder::new(document.to_vec())
            .signer(Pkcs7Signer::new(&self.aws_cert_2048, key).with_signed_attributes())
            .build()
    }

    // ----- Azure -----

    /// PEM of the Azure-like root (for `--azure-roots`).
    pub fn azure_root_pem(&self) -> String {
        self.azure_root.pem()
    }

    /// PEM of the Azure-like intermediate (for `--azure-intermediates`).
    pub fn azure_intermediate_pem(&self) -> String {
        self.azure_intermediate.pem()
    }

    /// An attested document body as IMDS returns it, created a minute ago.
    pub fn azure_document(vm_id: &str, subscription_id: &str) -> String {
        Self::azure_document_at(vm_id, subscription_id, Utc::now() - Duration::minutes(1))
    }

    /// An attested document created at `created`, expiring 6 hours later (as Azure does).
    pub fn azure_document_at(vm_id: &str, subscription_id: &str, created: DateTime<Utc>) -> String {
        let fmt = "%m/%d/%y %H:%M:%S -0000";
        let created_on = created.format(fmt);
        let expires_on = (created + Duration::hours(6)).format(fmt);
        format!(
            "{{\"licenseType\":\"\",\"nonce\":\"20240101-000000\",\"plan\":{{\"name\":\"\",\"product\":\"\",\"publisher\":\"\"}},\
             \"sku\":\"22_04-lts-gen2\",\"subscriptionId\":\"{subscription_id}\",\
             \"timeStamp\":{{\"createdOn\":\"{created_on}\",\"expiresOn\":\"{expires_on}\"}},\
             \"vmId\":\"{vm_id}\",\"location\":\"westeurope\"}}"
        )
    }

    /// A request signed like Azure: leaf and intermediate in the bag, no signed attributes,
    /// `digestAlgorithm = sha256WithRSAEncryption`; subscription `sub-1`.
    pub fn azure_proof(&self, vm_id: &str) -> AzureInstanceIdentityRequest {
        let doc = Self::azure_document_at(vm_id, "sub-1", self.now - Duration::minutes(1));
        let der = self.azure_pkcs7_like_azure(doc.as_bytes());
        Self::azure_request(&der)
    }

    /// The DER PKCS#7 of [`TestPki::azure_proof`] for arbitrary content.
    pub fn azure_pkcs7_like_azure(&self, content: &[u8]) -> Vec<u8> {
        SignedDataBuilder::new(content.to_vec())
            .certificate(self.azure_leaf.der())
            .certificate(self.azure_intermediate.der())
            .signer(
                Pkcs7Signer::new(&self.azure_leaf.der(), TestKey::AzureSigner).azure_digest_quirk(),
            )
            .build()
    }

    /// Wraps a DER PKCS#7 into a request body.
    pub fn azure_request(der: &[u8]) -> AzureInstanceIdentityRequest {
        AzureInstanceIdentityRequest {
            signature: base64(der),
            encoding: "pkcs7".into(),
            agent_name: None,
        }
    }

    // ----- GCP -----

    /// JWKS JSON with both test keys.
    pub fn gcp_jwks_json() -> String {
        Self::gcp_jwks_json_with(&[(GCP_KID_1, TestKey::Gcp1), (GCP_KID_2, TestKey::Gcp2)])
    }

    /// JWKS JSON with the given `kid` → key pairs.
    pub fn gcp_jwks_json_with(keys: &[(&str, TestKey)]) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|(kid, key)| {
                let (n, e) = key.modulus_and_exponent();
                serde_json::json!({
                    "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                    "n": b64.encode(n), "e": b64.encode(e),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// Claims of a Compute Engine `format=full` identity token issued at `iat`, valid 1 hour.
    pub fn gcp_claims(instance_id: &str, audience: &str, iat: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({
            "aud": audience,
            "azp": "117000000000000000000",
            "exp": iat.timestamp() + 3600,
            "iat": iat.timestamp(),
            "iss": "https://accounts.google.com",
            "sub": "117000000000000000000",
            "google": {
                "compute_engine": {
                    "instance_creation_timestamp": 1700000000,
                    "instance_id": instance_id,
                    "instance_name": "test-vm",
                    "project_id": "test-project",
                    "project_number": 123456789012u64,
                    "zone": "us-central1-a",
                }
            }
        })
    }

    /// A request with an RS256 token signed by [`TestKey::Gcp1`] (`kid` [`GCP_KID_1`]), issued
    /// at [`TestPki::now`].
    pub fn gcp_jwt(&self, instance_id: &str, audience: &str) -> GoogleInstanceIdentityRequest {
        let claims = Self::gcp_claims(instance_id, audience, self.now);
        GoogleInstanceIdentityRequest {
            json_web_token: sign_jwt_rs256(GCP_KID_1, TestKey::Gcp1, &claims),
            agent_name: None,
        }
    }
}

/// `base64url(header).base64url(claims)` for an arbitrary header.
pub fn jwt_signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    )
}

/// An RS256 JWT with header `{"alg":"RS256","kid":kid,"typ":"JWT"}`.
pub fn sign_jwt_rs256(kid: &str, key: TestKey, claims: &serde_json::Value) -> String {
    let header = serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    sign_jwt_with_header(&header, key, claims)
}

/// An RS256-signed JWT with an arbitrary header (for `alg` confusion tests).
pub fn sign_jwt_with_header(
    header: &serde_json::Value,
    key: TestKey,
    claims: &serde_json::Value,
) -> String {
    let input = jwt_signing_input(header, claims);
    let sig = key.sign_sha256(input.as_bytes());
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    )
}

/// An HS256 JWT keyed with `secret` (e.g. the RSA public key, the classic confusion attack).
pub fn sign_jwt_hs256(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    secret: &[u8],
) -> String {
    let input = jwt_signing_input(header, claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}
pub mod imds;

/// An agent's Ed25519 key for tests (SPEC §2.1), made from a fixed seed so a test can name it.
pub struct TestAgentKey(ring::signature::Ed25519KeyPair);

impl TestAgentKey {
    /// The key whose seed is 32 bytes of `seed`.
    pub fn from_seed(seed: u8) -> Self {
        TestAgentKey(ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap())
    }

    /// Its fingerprint, as the admin API and the dashboard show it.
    pub fn fingerprint(&self) -> String {
        use ring::signature::KeyPair;
        instauth_types::agent_key::fingerprint(self.0.public_key().as_ref())
    }

    /// The agent key fields for `body`, signed at `time` (Unix seconds) as an agent signs them.
    pub fn sign<R: instauth_types::ExchangeBody>(
        &self,
        body: &R,
        time: i64,
    ) -> instauth_types::AgentKeyFields {
        use instauth_types::agent_key;
        use ring::signature::KeyPair;
        let message = agent_key::message(
            R::PROVIDER,
            body.agent_name(),
            time,
            body.agent_key_proof_field(),
        );
        instauth_types::AgentKeyFields {
            agent_public_key: Some(agent_key::encode(self.0.public_key().as_ref())),
            agent_key_time: Some(time),
            agent_key_signature: Some(agent_key::encode(self.0.sign(message.as_bytes()).as_ref())),
        }
    }
}
