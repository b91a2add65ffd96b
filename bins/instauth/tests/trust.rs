//! Trust material through the binary: `instauth trust list` (table, JSON, exit code), the
//! start-up warning and the expiry metric for a soon-expiring root, and SIGHUP re-reading the
//! trust files of a running server.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::{instauth, Server};
use instauth_testkit::{issue_for_public_key, issue_root, Pkcs7Signer, SignedDataBuilder};
use instauth_testkit::{TestKey, TestPki, Validity};
use instauth_verify::trust::TrustCertificate;
use serde_json::Value;

const REGION: &str = "us-test-1";

/// `instauth` with none of the trust variables of the environment.
fn cmd(home: &Path) -> Command {
    let mut c = instauth(home);
    for var in [
        "INSTAUTH_AWS_CERTIFICATES",
        "INSTAUTH_AZURE_ROOTS",
        "INSTAUTH_AZURE_INTERMEDIATES",
        "INSTAUTH_AZURE_AIA",
        "INSTAUTH_GOOGLE_JWKS_URL",
    ] {
        c.env_remove(var);
    }
    c
}

fn trust_list(home: &Path, extra: &[&str]) -> Output {
    cmd(home)
        .args(["trust", "list"])
        .args(extra)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn builtin() -> Vec<TrustCertificate> {
    let mut all = instauth_verify_aws::AwsCertificates::builtin()
        .trust_certificates()
        .to_vec();
    all.extend(instauth_verify_azure::AzureTrust::builtin().trust_certificates());
    all
}

#[test]
fn trust_list_prints_every_builtin_certificate_with_its_expiry() {
    let home = tempfile::tempdir().unwrap();
    let builtin = builtin();
    assert!(builtin.iter().any(|c| c.provider.as_str() == "aws"));
    assert!(builtin.iter().any(|c| c.provider.as_str() == "azure"));

    let out = trust_list(home.path(), &[]);
    let table = text(&out.stdout);
    // Whether the exit code is 0 depends on the calendar; it is checked with a configured
    // root below. It is never an error.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NOT AFTER"), "{table}");
    assert_eq!(lines.len(), builtin.len() + 1, "{table}");
    for c in &builtin {
        let region = c.region.as_deref().unwrap_or("-");
        assert!(
            lines.iter().any(|l| l.starts_with(&secs(c.not_after))
                && l.contains(&c.subject)
                && l.contains(region)
                && l.contains(c.provider.as_str())),
            "{} ({}) not listed with {}:\n{table}",
            c.subject,
            region,
            secs(c.not_after)
        );
    }
    // Soonest expiry first.
    let dates: Vec<&str> = lines[1..].iter().map(|l| &l[..20]).collect();
    let mut sorted = dates.clone();
    sorted.sort();
    assert_eq!(dates, sorted);

    let out = trust_list(home.path(), &["-o", "json"]);
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), builtin.len());
    for l in &listed {
        for field in [
            "provider",
            "subject",
            "issuer",
            "source",
            "not_after",
            "role",
            "status",
        ] {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
        assert_eq!(l["source"], "built-in");
    }
    let aws: Vec<&Value> = listed.iter().filter(|l| l["provider"] == "aws").collect();
    assert!(aws
        .iter()
        .all(|l| l["status"] == "unchecked" && l["region"].is_string()));
}

/// A root (ECDSA, rcgen) valid from a year ago until `days` from now.
fn root_pem(cn: &str, days: i64) -> String {
    let now = Utc::now();
    let validity = Validity {
        not_before: now - chrono::Duration::days(365),
        not_after: now + chrono::Duration::days(days),
    };
    issue_root(cn, validity, 77).pem()
}

fn metrics(url: &str) -> String {
    reqwest::blocking::get(format!("{url}/metrics"))
        .unwrap()
        .text()
        .unwrap()
}

/// Polls `check` every 20 ms until it holds or 10 s pass.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sighup(server: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn a_soon_expiring_root_fails_trust_list_and_is_warned_about_at_start() {
    let home = tempfile::tempdir().unwrap();
    let soon = "instauth test soon-expiring root";
    let roots = home.path().join("roots.pem");
    std::fs::write(&roots, root_pem(soon, 10)).unwrap();
    let roots_arg = roots.to_str().unwrap();

    let out = trust_list(home.path(), &["--azure-roots", roots_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let line = table.lines().find(|l| l.contains(soon)).unwrap();
    assert!(line.contains("expiring") && line.contains("root"), "{line}");
    assert!(line.contains(roots_arg), "source is the file: {line}");
    assert!(text(&out.stderr).contains(soon), "{}", text(&out.stderr));
    let out = trust_list(home.path(), &["--azure-roots", roots_arg, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let entry = listed
        .iter()
        .find(|l| l["subject"].as_str().unwrap().contains(soon))
        .unwrap();
    assert_eq!(entry["status"], "expiring");

    // The server warns at start and exports the root's expiry.
    let server = Server::start_logged({
        let mut c = cmd(home.path());
        c.args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--azure-roots",
            roots_arg,
        ]);
        c
    });
    assert!(server.wait_for_log("expires within 30 days"));
    let log = server.log.lock().unwrap().clone();
    let warning = log
        .lines()
        .find(|l| l.contains("expires within 30 days"))
        .unwrap();
    assert!(warning.contains(soon), "{warning}");
    let not_after: DateTime<Utc> = entry["not_after"].as_str().unwrap().parse().unwrap();
    let subject = entry["subject"].as_str().unwrap();
    let series = format!(
        "instauth_trust_certificate_expiry_timestamp_seconds{{provider=\"azure\",subject=\"{subject}\"}} {}",
        not_after.timestamp()
    );
    let text = metrics(&server.url);
    assert!(
        text.lines().any(|l| l == series),
        "{series} not in:\n{text}"
    );

    // SIGHUP with a new roots file: the metric follows.
    let later = "instauth test long-lived root";
    std::fs::write(&roots, root_pem(later, 3650)).unwrap();
    sighup(&server);
    eventually("the reloaded root in the metrics", || {
        let text = metrics(&server.url);
        text.contains(later) && !text.contains(soon)
    });
    assert!(server.wait_for_log("reloaded the trust files"));
}

/// A PKCS#7 (`rsa2048` format) proof for `i-1` signed with `key`, whose certificate is `cert`.
fn aws_pkcs7_proof(cert: &[u8], key: TestKey) -> Value {
    let document = TestPki::aws_document("i-1", REGION, "123456789012");
    let der = SignedDataBuilder::new(document.clone().into_bytes())
        .signer(Pkcs7Signer::new(cert, key).with_signed_attributes())
        .build();
    serde_json::json!({"document": document, "signature": "", "pkcs7": instauth_testkit::base64(&der)})
}

fn region_pem(der: &[u8]) -> String {
    format!(
        "# region: {REGION}\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        instauth_testkit::base64_wrapped(der)
    )
}

#[test]
fn sighup_rereads_the_aws_certificates_without_a_restart() {
    let home = tempfile::tempdir().unwrap();
    let pki = TestPki::new();
    let certs = home.path().join("aws.pem");
    std::fs::write(&certs, pki.aws_certificates_pem(REGION)).unwrap();
    let token_file = home.path().join("admin-token");
    let server = Server::start_logged({
        let mut c = cmd(home.path());
        c.args(["server", "--listen", "127.0.0.1:0"])
            .arg("--aws-certificates")
            .arg(&certs)
            .arg("--admin-token-file")
            .arg(&token_file);
        c
    });
    let admin = std::fs::read_to_string(&token_file).unwrap();
    let http = reqwest::blocking::Client::new();
    let res = http
        .post(format!("{}/api/v2/workspaces/ec2/builds", server.url))
        .bearer_auth(admin.trim())
        .json(
            &serde_json::json!({"resources": [{"name": "vm", "type": "aws_instance", "agents": [
                {"name": "main", "auth": "aws-instance-identity", "instance_id": "i-1"}
            ]}]}),
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);
    let exchange = |proof: &Value| {
        http.post(format!(
            "{}/api/v2/workspaceagents/aws-instance-identity",
            server.url
        ))
        .json(proof)
        .send()
        .unwrap()
        .status()
        .as_u16()
    };

    // Signed by a second test key the server does not know yet.
    let ca = issue_root(
        "instauth test AWS 2",
        Validity::around(pki.now, chrono::Duration::days(365)),
        5,
    );
    let other = issue_for_public_key(
        "ec2 test other 2048",
        TestKey::AwsOther2048,
        Validity::around(pki.now, chrono::Duration::days(365)),
        &ca,
    );
    let rotated = aws_pkcs7_proof(&other, TestKey::AwsOther2048);
    let current = aws_pkcs7_proof(&pki.aws_cert_2048, TestKey::AwsRegion2048);
    assert_eq!(exchange(&current), 200);
    assert_eq!(exchange(&rotated), 401);

    // A broken file: the reload fails, says why, and the old certificates stay in use.
    std::fs::write(&certs, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    sighup(&server);
    assert!(server.wait_for_log("reloading the trust files failed"));
    assert!(server.wait_for_log(certs.to_str().unwrap()));
    assert_eq!(exchange(&current), 200);

    // The region's certificate replaced on disk, then SIGHUP: the new key is trusted, the old
    // one (whose region certificate the file no longer names) is not.
    std::fs::write(&certs, region_pem(&other)).unwrap();
    sighup(&server);
    eventually("the exchange signed by the new key", || {
        exchange(&rotated) == 200
    });
    assert_eq!(exchange(&current), 401);
}

#[tokio::test]
async fn trust_list_includes_the_issuing_cas_the_server_fetched() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let ca = issue_root(
        "instauth test fetched CA",
        Validity::around(Utc::now(), chrono::Duration::days(365)),
        9,
    );
    let url = "http://www.microsoft.com/pkiops/certs/fetched.crt";
    {
        let store = instauth_store::Store::open(instauth_store::DatabaseConfig::Sqlite {
            path: instauth_store::sqlite_path(&data),
        })
        .await
        .unwrap();
        store.put_aia_certificate(url, &ca.der()).await.unwrap();
    }
    let data_arg = data.to_str().unwrap();
    let out = trust_list(home.path(), &["--data-dir", data_arg, "-o", "json"]);
    // 1 only if a built-in certificate happens to expire within 30 days of today.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let fetched: Vec<&Value> = listed.iter().filter(|l| l["source"] == url).collect();
    assert_eq!(fetched.len(), 1, "{listed:?}");
    assert_eq!(fetched[0]["role"], "intermediate");
    assert!(fetched[0]["subject"]
        .as_str()
        .unwrap()
        .contains("instauth test fetched CA"));
    assert_eq!(listed.len(), builtin().len() + 1);

    // With --azure-aia off the server never uses them, so they are not listed.
    let out = trust_list(
        home.path(),
        &["--data-dir", data_arg, "--azure-aia", "off", "-o", "json"],
    );
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.len(), builtin().len());

    // A data directory without a database: nothing is created, the rest is listed.
    let empty = home.path().join("empty");
    let out = trust_list(home.path(), &["--data-dir", empty.to_str().unwrap()]);
    assert!(matches!(out.status.code(), Some(0 | 1)));
    assert!(!empty.exists());
}
