//! Reading a caIssuers response: a DER certificate, PEM, or a PKCS#7 certs-only bundle.

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use const_oid::db::rfc5911::ID_SIGNED_DATA;
use der::{Decode, Encode};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

use super::printable;
use crate::chain::MAX_CERTIFICATE_LEN;
use crate::trust::Names;
use crate::MissingIssuer;

/// Most certificates read from one response.
const MAX_RESPONSE_CERTIFICATES: usize = 4;

/// The CA certificates of a response whose subject is the missing issuer: the response is a
/// DER certificate, PEM, or a PKCS#7 certs-only bundle (`.p7c`, RFC 5280 §4.2.2.1).
pub(super) fn ca_certificates(
    body: &[u8],
    missing: &MissingIssuer,
) -> Result<Vec<Vec<u8>>, String> {
    let ders = if Certificate::from_der(body).is_ok() {
        vec![body.to_vec()]
    } else if body.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(body).map_err(|_| "PEM that is not UTF-8".to_string())?;
        instauth_verify::pem::parse_certificates(text)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| c.der)
            .collect()
    } else {
        p7c_certificates(body)?
    };
    if ders.len() > MAX_RESPONSE_CERTIFICATES {
        return Err(format!(
            "{} certificates, at most {MAX_RESPONSE_CERTIFICATES} are read",
            ders.len()
        ));
    }
    let mut found = Vec::new();
    let mut last = "no certificate in the response".to_string();
    for der in ders {
        match issuer_candidate(&der, missing) {
            Ok(()) => found.push(der),
            Err(why) => last = why,
        }
    }
    if found.is_empty() {
        Err(last)
    } else {
        Ok(found)
    }
}

fn issuer_candidate(der: &[u8], missing: &MissingIssuer) -> Result<(), String> {
    if der.len() > MAX_CERTIFICATE_LEN {
        return Err(format!(
            "certificate larger than {MAX_CERTIFICATE_LEN} bytes"
        ));
    }
    let cert = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let is_ca = cert
        .tbs_certificate
        .get::<BasicConstraints>()
        .ok()
        .flatten()
        .is_some_and(|(_, bc)| bc.ca);
    if !is_ca {
        return Err("not a CA certificate".into());
    }
    let names = Names::of(der, &cert)?;
    let matches_key = match (&missing.issuer_key_id, &names.ski) {
        (Some(aki), Some(ski)) => aki == ski,
        _ => true,
    };
    if names.subject != missing.issuer_name || !matches_key {
        return Err(format!(
            "certificate {} is not the signer's issuer {}",
            printable(&cert.tbs_certificate.subject.to_string()),
            missing.issuer
        ));
    }
    Ok(())
}

fn p7c_certificates(body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let not_p7c = |_| "neither a certificate nor a PKCS#7 certificate bundle".to_string();
    // `.p7c` files are often BER (indefinite lengths); normalise like proofs.
    let info = match ContentInfo::from_der(body) {
        Ok(info) => info,
        Err(_) => {
            let der = instauth_verify::ber::ber_to_der(body)
                .map_err(|_| "neither a certificate nor a PKCS#7 certificate bundle")?;
            ContentInfo::from_der(&der).map_err(not_p7c)?
        }
    };
    if info.content_type != ID_SIGNED_DATA {
        return Err("PKCS#7 content is not signedData".into());
    }
    let signed: SignedData = info.content.decode_as().map_err(not_p7c)?;
    let mut out = Vec::new();
    for choice in signed
        .certificates
        .map(|s| s.0.into_vec())
        .unwrap_or_default()
    {
        if let CertificateChoices::Certificate(c) = choice {
            out.push(c.to_der().map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}
