//! The trust-certificate expiry gauge (SPEC §5): which certificates it exports.
#![allow(clippy::unwrap_used)]

use instauth_api::metrics::Metrics;
use instauth_types::Provider;
use instauth_verify::trust::TrustCertificate;

fn cert(subject: &str, not_after: i64, checked: bool) -> TrustCertificate {
    use chrono::DateTime;
    use instauth_verify::trust::{TrustRole, TrustSource};
    TrustCertificate {
        provider: if checked {
            Provider::Azure
        } else {
            Provider::Aws
        },
        subject: subject.into(),
        issuer: "CN=i".into(),
        not_before: DateTime::from_timestamp(0, 0).unwrap(),
        not_after: DateTime::from_timestamp(not_after, 0).unwrap(),
        source: TrustSource::BuiltIn,
        role: TrustRole::Intermediate,
        region: None,
        expiry_checked: checked,
        sha256: String::new(),
    }
}

#[test]
fn the_expiry_gauge_exports_the_certificates_verification_depends_on() {
    let m = Metrics::new(instauth_api::metrics::StoreCounters::default);
    let now = chrono::DateTime::from_timestamp(1_000, 0).unwrap();
    m.set_trust_certificates(
        &[
            cert("CN=Root R1", 5_000, true),
            // A CA and its cross-signed twin: one series, the later date.
            cert("CN=CA 03", 2_000, true),
            cert("CN=CA 03", 3_000, true),
            // Expired: kept for `--at` only.
            cert("CN=Old", 999, true),
            // AWS: dates not checked.
            cert("CN=ec2", 2_000, false),
        ],
        now,
    );
    let text = m.render();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("instauth_trust_certificate_expiry_timestamp_seconds{"))
        .collect();
    assert_eq!(series.len(), 2, "{text}");
    for line in [
        "instauth_trust_certificate_expiry_timestamp_seconds{provider=\"azure\",subject=\"CN=CA 03\"} 3000",
        "instauth_trust_certificate_expiry_timestamp_seconds{provider=\"azure\",subject=\"CN=Root R1\"} 5000",
    ] {
        assert!(series.contains(&line), "no line {line:?} in:\n{text}");
    }

    // A reload replaces the set.
    m.set_trust_certificates(&[cert("CN=New", 9_000, true)], now);
    let text = m.render();
    assert!(!text.contains("CN=CA 03"), "{text}");
    assert!(text.contains("subject=\"CN=New\"} 9000"), "{text}");
}
