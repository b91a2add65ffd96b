//! Chain building whose cost a proof cannot choose.
//!
//! rustls-webpki 0.103 searches every ordering of the intermediates it is given (up to six
//! deep) and bounds the search only by budgets that are not configurable: 100 signature checks
//! and 200,000 path-building calls per verification. Ten self-issued CA certificates with one
//! name in a proof's bag reach the second budget and cost seconds of CPU. So webpki is never
//! handed the bag as it comes. Instead:
//! 1. the bag is capped before anything else ([`MAX_BAG_CERTIFICATES`] certificates of at most
//!    [`MAX_CERTIFICATE_LEN`] bytes; a real proof carries one);
//! 2. the chain is built from the signer alone: starting at its issuer name, only certificates
//!    whose subject is that name (and whose subject key identifier matches the child's authority
//!    key identifier, where both exist) are taken, level by level, at most
//!    [`MAX_PATH_INTERMEDIATES`] levels and [`MAX_CANDIDATES`] certificates in all; a name that
//!    is a trust anchor's ends its branch;
//! 3. trusted issuing CAs (built-in, configured, fetched) are offered before bag certificates,
//!    and self-issued bag certificates are dropped (anchors come from the trust material, never
//!    from the proof).
//!
//! With at most six candidates webpki's search has at most a few thousand tiny steps, and the
//! signatures it checks stay within its budget of 100 (each one only where a name matched).

use rustls_pki_types::CertificateDer;

use crate::trust::{CaCert, Names, Root};

/// Most certificates a proof's PKCS#7 bag may hold (Azure sends one: the signer).
pub const MAX_BAG_CERTIFICATES: usize = 4;
/// Largest certificate (DER bytes) accepted in a bag or from an AIA URL; Azure's are under 3 KiB.
pub const MAX_CERTIFICATE_LEN: usize = 8 * 1024;
/// Most issuing CAs between the signer and an anchor (Azure's longest real chain has two:
/// issuing CA, cross-signed root).
pub const MAX_PATH_INTERMEDIATES: usize = 3;
/// Most certificates offered to webpki as intermediates for one verification.
pub const MAX_CANDIDATES: usize = 6;

/// The certificates offered to webpki for one signer.
#[derive(Debug)]
pub(crate) struct Selection<'a> {
    /// Intermediates in the order webpki should try them.
    pub(crate) candidates: Vec<CertificateDer<'a>>,
    /// Whether any anchor or candidate may have issued the signer itself. When not, the
    /// signer's issuer is unknown and worth fetching (AIA).
    pub(crate) issuer_known: bool,
}

/// Selects the intermediates for `signer` from `pool` (trusted first, then bag), given the
/// anchors `roots`. No signature is checked here.
pub(crate) fn select<'a>(signer: &Names, roots: &[Root], pool: &[&'a CaCert]) -> Selection<'a> {
    let by_root = |child: &Names| {
        roots
            .iter()
            .any(|r| child.may_be_issued_by(r.subject(), r.ski.as_deref()))
    };
    let by_ca = |child: &Names, ca: &CaCert| {
        child.may_be_issued_by(&ca.names.subject, ca.names.ski.as_deref())
    };
    let issuer_known = by_root(signer) || pool.iter().any(|ca| by_ca(signer, ca));

    let mut chosen: Vec<&'a CaCert> = Vec::new();
    let mut level: Vec<&Names> = vec![signer];
    'levels: for _ in 0..MAX_PATH_INTERMEDIATES {
        let mut next: Vec<&Names> = Vec::new();
        for child in &level {
            // webpki tries anchors first: a child an anchor may have issued needs nothing more.
            if by_root(child) {
                continue;
            }
            for &ca in pool {
                if !by_ca(child, ca) || chosen.iter().any(|c| c.der == ca.der) {
                    continue;
                }
                if chosen.len() == MAX_CANDIDATES {
                    break 'levels;
                }
                chosen.push(ca);
                next.push(&ca.names);
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Selection {
        candidates: chosen.iter().map(|c| c.der.clone()).collect(),
        issuer_known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(subject: &str, issuer: &str) -> Names {
        Names {
            subject: subject.as_bytes().to_vec(),
            issuer: issuer.as_bytes().to_vec(),
            ski: None,
            aki: None,
        }
    }

    fn ca(subject: &str, issuer: &str, tag: u8) -> CaCert {
        CaCert {
            der: CertificateDer::from(vec![tag]),
            names: names(subject, issuer),
        }
    }

    #[test]
    fn only_certificates_on_the_signers_name_path_are_offered() {
        let pool = [
            ca("B", "C", 1),
            ca("X", "Y", 2),
            ca("C", "D", 3),
            ca("D", "E", 4),
            ca("E", "F", 5),
        ];
        let refs: Vec<&CaCert> = pool.iter().collect();
        let s = select(&names("leaf", "B"), &[], &refs);
        assert!(s.issuer_known);
        // B, C, D: three levels; E would be a fourth.
        let tags: Vec<u8> = s.candidates.iter().map(|c| c.as_ref()[0]).collect();
        assert_eq!(tags, [1, 3, 4]);
        let s = select(&names("leaf", "Q"), &[], &refs);
        assert!(!s.issuer_known);
        assert!(s.candidates.is_empty());
    }

    #[test]
    fn many_certificates_of_one_name_are_capped() {
        let pool: Vec<CaCert> = (0..20).map(|i| ca("X", "X", i)).collect();
        let refs: Vec<&CaCert> = pool.iter().collect();
        let s = select(&names("leaf", "X"), &[], &refs);
        assert_eq!(s.candidates.len(), MAX_CANDIDATES);
    }
}
