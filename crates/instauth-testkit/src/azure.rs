//! Azure test hierarchies shaped like each real issuing-CA generation, hostile proofs, and the
//! Authority Information Access extension.
//!
//! Every name says "instauth test" so that nothing here can be mistaken for (or chain to) the
//! real Microsoft certificates built into the verifier.

use chrono::{DateTime, Duration, Utc};
use instauth_types::AzureInstanceIdentityRequest;
use rcgen::{
    CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose,
    SerialNumber,
};

use crate::der_build::{tlv, Pkcs7Signer, SignedDataBuilder};
use crate::{base64, offset, Issued, TestKey, TestPki, Validity};

/// `id-pe-authorityInfoAccess`.
const AIA_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
/// `id-ad-caIssuers`, DER content of the OID.
const CA_ISSUERS_OID_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];

/// An Authority Information Access extension listing `urls` as `caIssuers`.
pub fn aia_extension(urls: &[&str]) -> CustomExtension {
    let descriptions: Vec<u8> = urls
        .iter()
        .flat_map(|u| {
            tlv(
                0x30,
                &[tlv(0x06, CA_ISSUERS_OID_DER), tlv(0x86, u.as_bytes())].concat(),
            )
        })
        .collect();
    CustomExtension::from_oid_content(AIA_OID, tlv(0x30, &descriptions))
}

fn ca_params(cn: &str, validity: Validity, serial: u64) -> CertificateParams {
    let mut p = crate::ca_params(cn, validity, serial);
    // Real Azure CAs name their issuer's key; the verifier uses it to narrow candidates.
    p.use_authority_key_identifier_extension = true;
    p
}

/// A self-signed CA (fresh ECDSA P-256 key) with key identifiers.
pub fn root(cn: &str, validity: Validity, serial: u64) -> Issued {
    let key = KeyPair::generate().unwrap();
    let cert = ca_params(cn, validity, serial).self_signed(&key).unwrap();
    Issued { cert, key }
}

/// A CA under `issuer` (fresh ECDSA P-256 key) with key identifiers and `ca_issuers` AIA URLs.
pub fn intermediate(
    cn: &str,
    validity: Validity,
    serial: u64,
    issuer: &Issued,
    ca_issuers: &[&str],
) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut p = ca_params(cn, validity, serial);
    if !ca_issuers.is_empty() {
        p.custom_extensions.push(aia_extension(ca_issuers));
    }
    let cert = p.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    Issued { cert, key }
}

/// `subject` (a CA) cross-signed by `issuer`: same name and key, another issuer. DER.
pub fn cross_sign(
    cn: &str,
    subject: &Issued,
    validity: Validity,
    serial: u64,
    issuer: &Issued,
) -> Vec<u8> {
    ca_params(cn, validity, serial)
        .signed_by(&subject.key, &issuer.cert, &issuer.key)
        .unwrap()
        .der()
        .to_vec()
}

/// A `metadata.azure.com` signer (RSA `key`) under `issuer`, with `ca_issuers` AIA URLs.
pub fn signer(
    key: TestKey,
    validity: Validity,
    serial: u64,
    issuer: &Issued,
    ca_issuers: &[&str],
) -> Issued {
    let mut p = CertificateParams::new(vec![
        "eastus.metadata.azure.com".to_string(),
        "metadata.azure.com".to_string(),
    ])
    .unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "metadata.azure.com");
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = offset(validity.not_before);
    p.not_after = offset(validity.not_after);
    p.serial_number = Some(SerialNumber::from(serial));
    p.use_authority_key_identifier_extension = true;
    if !ca_issuers.is_empty() {
        p.custom_extensions.push(aia_extension(ca_issuers));
    }
    let kp = key.rcgen_key_pair();
    let cert = p.signed_by(&kp, &issuer.cert, &issuer.key).unwrap();
    Issued { cert, key: kp }
}

/// A proof as Azure sends it: only the signer in the bag, no signed attributes,
/// `digestAlgorithm = sha256WithRSAEncryption`.
pub fn proof(signer: &Issued, key: TestKey, content: &[u8]) -> AzureInstanceIdentityRequest {
    TestPki::azure_request(&proof_der(signer, key, content, &[]))
}

/// The DER of [`proof`], with `extra` certificates after the signer in the bag.
pub fn proof_der(signer: &Issued, key: TestKey, content: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
    let mut b = SignedDataBuilder::new(content.to_vec()).certificate(signer.der());
    for der in extra {
        b = b.certificate(der.clone());
    }
    b.signer(Pkcs7Signer::new(&signer.der(), key).azure_digest_quirk())
        .build()
}

/// An attested document of 2019: no `subscriptionId`, `sku` or `licenseType`.
pub fn document_2019(vm_id: &str, created: DateTime<Utc>) -> String {
    let fmt = "%m/%d/%y %H:%M:%S -0000";
    format!(
        "{{\"nonce\":\"20190101-000000\",\"plan\":{{\"name\":\"\",\"product\":\"\",\"publisher\":\"\"}},\
         \"timeStamp\":{{\"createdOn\":\"{}\",\"expiresOn\":\"{}\"}},\"vmId\":\"{vm_id}\"}}",
        created.format(fmt),
        (created + Duration::hours(6)).format(fmt)
    )
}

/// Test hierarchies shaped like Azure's generations, valid around [`Self::now`]:
/// - 2025+: signer → "G2 RSA CA OCSP"-style CA → "TLS RSA Root G2"-style root, which is also
///   cross-signed by a "DigiCert Global Root G2"-style root;
/// - 2023–2026: signer → "Azure RSA TLS Issuing CA"-style CA → "RSA Root 2017"-style root.
pub struct AzureGenerations {
    /// When it was made (whole seconds).
    pub now: DateTime<Utc>,
    /// Validity of CAs: `now` ± 1 year.
    pub ca_validity: Validity,
    /// Validity of signers: `now` ± 1 hour.
    pub signer_validity: Validity,
    /// "DigiCert Global Root G2"-style root.
    pub digicert_g2: Issued,
    /// "Microsoft TLS RSA Root G2"-style self-signed root.
    pub tls_root_g2: Issued,
    /// The same root cross-signed by [`Self::digicert_g2`] (DER).
    pub tls_root_g2_xsign: Vec<u8>,
    /// "Microsoft TLS G2 RSA CA OCSP 02"-style CA under [`Self::tls_root_g2`].
    pub g2_ocsp_ca: Issued,
    /// "Microsoft RSA Root Certificate Authority 2017"-style root.
    pub rsa_root_2017: Issued,
    /// "Microsoft Azure RSA TLS Issuing CA 03"-style CA under [`Self::rsa_root_2017`].
    pub azure_rsa_tls_ca: Issued,
}

impl Default for AzureGenerations {
    fn default() -> Self {
        Self::new()
    }
}

impl AzureGenerations {
    /// Issues everything around the current time.
    pub fn new() -> Self {
        Self::at(DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap())
    }

    /// Issues everything around `now`.
    pub fn at(now: DateTime<Utc>) -> Self {
        let ca_validity = Validity::around(now, Duration::days(365));
        let signer_validity = Validity::around(now, Duration::hours(1));
        let digicert_g2 = root("instauth test DigiCert Global Root G2", ca_validity, 100);
        let tls_root_g2 = root("instauth test TLS RSA Root G2", ca_validity, 101);
        let tls_root_g2_xsign = cross_sign(
            "instauth test TLS RSA Root G2",
            &tls_root_g2,
            ca_validity,
            102,
            &digicert_g2,
        );
        let g2_ocsp_ca = intermediate(
            "instauth test TLS G2 RSA CA OCSP 02",
            ca_validity,
            103,
            &tls_root_g2,
            &[],
        );
        let rsa_root_2017 = root("instauth test RSA Root 2017", ca_validity, 104);
        let azure_rsa_tls_ca = intermediate(
            "instauth test Azure RSA TLS Issuing CA 03",
            ca_validity,
            105,
            &rsa_root_2017,
            &[],
        );
        AzureGenerations {
            now,
            ca_validity,
            signer_validity,
            digicert_g2,
            tls_root_g2,
            tls_root_g2_xsign,
            g2_ocsp_ca,
            rsa_root_2017,
            azure_rsa_tls_ca,
        }
    }

    /// A [`TestKey::AzureSigner`] signer under `issuer`.
    pub fn signer(&self, issuer: &Issued, serial: u64, ca_issuers: &[&str]) -> Issued {
        signer(
            TestKey::AzureSigner,
            self.signer_validity,
            serial,
            issuer,
            ca_issuers,
        )
    }

    /// A current attested document for `vm_id` (subscription `sub-1`), created a minute before
    /// [`Self::now`].
    pub fn document(&self, vm_id: &str) -> String {
        TestPki::azure_document_at(vm_id, "sub-1", self.now - Duration::minutes(1))
    }
}

/// PEM of DER certificates, concatenated.
pub fn pem(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| {
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                crate::base64_wrapped(d)
            )
        })
        .collect()
}

/// How a hostile bag's CA certificates are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostileBag {
    /// `n` self-issued CA certificates sharing one name, the signer's issuer (each with its own
    /// key): every ordering of them is a candidate path.
    SelfIssued(usize),
    /// `n` CA certificates (not self-issued) whose names form a cycle with the signer's issuer:
    /// `X ← Y ← X ← …`; `anchor_name` as `Y` makes each path end at a trusted anchor's name,
    /// so that signatures get checked.
    Cycle(usize),
}

/// A proof anyone can make: a self-made `metadata.azure.com` signer (key
/// [`TestKey::Attacker`]) and a bag of CA certificates shaped by `shape`. `y_name` is the second
/// name of [`HostileBag::Cycle`] (e.g. a trusted root's CN). Returns the request and the DER.
pub fn hostile_proof(
    shape: HostileBag,
    validity: Validity,
    y_name: &str,
    content: &[u8],
) -> (AzureInstanceIdentityRequest, Vec<u8>) {
    let x_name = "instauth test hostile CA";
    let mut cas: Vec<Issued> = Vec::new();
    let leaf_issuer = match shape {
        HostileBag::SelfIssued(n) => {
            for i in 0..n {
                cas.push(root(x_name, validity, 1_000 + i as u64));
            }
            0
        }
        HostileBag::Cycle(n) => {
            let base = root(y_name, validity, 2_000);
            let mut issuer = &base;
            let mut chain = Vec::new();
            for i in 0..n {
                let name = if i % 2 == 0 { x_name } else { y_name };
                let ca = intermediate(name, validity, 2_001 + i as u64, issuer, &[]);
                chain.push(ca);
                issuer = chain.last().unwrap();
            }
            cas = chain;
            // The last one named X issues the signer.
            (0..cas.len()).rev().find(|i| i % 2 == 0).unwrap_or(0)
        }
    };
    let leaf = signer(TestKey::Attacker, validity, 3_000, &cas[leaf_issuer], &[]);
    let extra: Vec<Vec<u8>> = cas.iter().map(Issued::der).collect();
    let der = proof_der(&leaf, TestKey::Attacker, content, &extra);
    let request = AzureInstanceIdentityRequest {
        signature: base64(&der),
        encoding: "pkcs7".into(),
        agent_name: None,
    };
    (request, der)
}
