//! AIA fetching of an unknown issuing CA, against a local HTTP server standing in for
//! Microsoft's and DigiCert's certificate hosts (names resolved to 127.0.0.1 by the test
//! configuration; every other name fails to resolve).

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use instauth_testkit::azure::{self, AzureGenerations};
use instauth_testkit::{AiaResponse, AiaServer, Issued, SignedDataBuilder, TestKey};
use instauth_types::AzureInstanceIdentityRequest;
use instauth_verify::trust::TrustSource;
use instauth_verify::{FixedClock, Identity, Verified};
use instauth_verify_azure::aia::{AiaCache, AiaTestConfig, MemoryAiaCache};
use instauth_verify_azure::{AiaError, AiaFetcher, AzureError, AzureTrust, AzureVerifier};

const HOSTS: &[&str] = &[
    "www.microsoft.com",
    "caissuers.microsoft.com",
    "cacerts.digicert.com",
];
const PATH: &str = "/pkiops/certs/instauth%20test%20TLS%20G3%20CA%2001.crt";

fn url(host: &str, path: &str) -> String {
    format!("http://{host}{path}")
}

/// A generation the verifier does not know: "TLS G3 CA 01" under the (trusted) G2 root.
struct World {
    g: AzureGenerations,
    g3_ca: Issued,
    server: AiaServer,
}

impl World {
    async fn new() -> Self {
        let g = AzureGenerations::new();
        let g3_ca = azure::intermediate(
            "instauth test TLS G3 CA 01",
            g.ca_validity,
            300,
            &g.tls_root_g2,
            &[],
        );
        let server = AiaServer::start().await;
        server.route(PATH, AiaResponse::Body(g3_ca.der()));
        World { g, g3_ca, server }
    }

    /// Trusts only the G2 root: the G3 issuing CA is unknown.
    fn verifier(&self) -> AzureVerifier {
        let trust = AzureTrust::from_roots_pem(&self.g.tls_root_g2.pem()).unwrap();
        AzureVerifier::new(trust, Arc::new(FixedClock::new(self.g.now)))
    }

    fn config(&self) -> AiaTestConfig {
        AiaTestConfig::resolving(HOSTS, self.server.addr())
    }

    fn fetcher(&self, cache: Option<Arc<dyn AiaCache>>) -> AiaFetcher {
        AiaFetcher::for_tests(self.config(), cache).unwrap()
    }

    /// A proof signed under the G3 CA whose signer names `ca_issuers`.
    fn proof(&self, vm: &str, ca_issuers: &[&str]) -> AzureInstanceIdentityRequest {
        self.proof_under(&self.g3_ca, vm, ca_issuers)
    }

    fn proof_under(
        &self,
        ca: &Issued,
        vm: &str,
        ca_issuers: &[&str],
    ) -> AzureInstanceIdentityRequest {
        let leaf = self.g.signer(ca, 7, ca_issuers);
        azure::proof(&leaf, TestKey::AzureSigner, self.g.document(vm).as_bytes())
    }
}

async fn inline(
    v: &AzureVerifier,
    req: &AzureInstanceIdentityRequest,
    aia: Option<&AiaFetcher>,
) -> Result<Verified<Identity>, AzureError> {
    v.verify_with_aia(
        req,
        aia,
        |job| async move { Ok::<_, AzureError>(job.run()) },
    )
    .await
}

#[tokio::test]
async fn an_unknown_generation_is_fetched_once_then_served_from_caches() {
    let w = World::new().await;
    let g3_url = url("www.microsoft.com", PATH);
    let req = w.proof("vm-1", &[&g3_url]);
    let v = w.verifier();

    // Without AIA: the typed error names where the issuer can be fetched.
    let Err(AzureError::UnknownIssuer(missing)) = v.verify(&req) else {
        panic!("expected UnknownIssuer");
    };
    assert_eq!(missing.ca_issuers, [g3_url.as_str()]);
    assert!(matches!(
        inline(&v, &req, None).await,
        Err(AzureError::UnknownIssuer(_))
    ));

    // With AIA: fetched, admitted, verified; stored in the persistent cache.
    let cache = Arc::new(MemoryAiaCache::new());
    let fetcher = w.fetcher(Some(cache.clone()));
    let id = inline(&v, &req, Some(&fetcher)).await.unwrap();
    assert_eq!(id.instance_id(), "vm-1");
    assert_eq!(w.server.hits(PATH), 1);
    assert_eq!(fetcher.network_fetches(), 1);
    assert_eq!(v.admitted_from(&g3_url), Some(w.g3_ca.der()));
    assert_eq!(cache.urls(), [g3_url.as_str()]);
    let listed = v.trust_certificates();
    assert!(listed
        .iter()
        .any(|c| c.source == TrustSource::Fetched(g3_url.clone())
            && c.subject.contains("TLS G3 CA 01")));

    // A second proof of the generation verifies without asking anyone.
    let req2 = w.proof("vm-2", &[&g3_url]);
    assert_eq!(v.verify(&req2).unwrap().instance_id(), "vm-2");
    assert_eq!(
        inline(&v, &req2, Some(&fetcher))
            .await
            .unwrap()
            .instance_id(),
        "vm-2"
    );
    assert_eq!(w.server.total_hits(), 1);

    // A restarted server (fresh verifier and fetcher) with the same persistent cache does not
    // fetch either.
    let v2 = w.verifier();
    let fetcher2 = w.fetcher(Some(cache.clone()));
    assert_eq!(
        inline(&v2, &req2, Some(&fetcher2))
            .await
            .unwrap()
            .instance_id(),
        "vm-2"
    );
    assert_eq!(fetcher2.network_fetches(), 0);
    assert_eq!(w.server.total_hits(), 1);
}

#[tokio::test]
async fn the_first_usable_url_wins_and_a_pkcs7_bundle_is_read() {
    let w = World::new().await;
    let p7c = SignedDataBuilder::new(Vec::new())
        .certificate(w.g.g2_ocsp_ca.der())
        .certificate(w.g3_ca.der())
        .build();
    w.server.route("/g3.p7c", AiaResponse::Body(p7c));
    let refused = "ldap://www.microsoft.com/cn=g3";
    let p7c_url = url("cacerts.digicert.com", "/g3.p7c");
    let req = w.proof("vm-1", &[refused, &p7c_url]);
    let v = w.verifier();
    assert!(inline(&v, &req, Some(&w.fetcher(None))).await.is_ok());
    assert_eq!(v.admitted_from(&p7c_url), Some(w.g3_ca.der()));
}

#[tokio::test]
async fn a_redirect_within_the_allowed_hosts_is_followed() {
    let w = World::new().await;
    w.server.route(
        "/old/g3.crt",
        AiaResponse::Redirect(url("caissuers.microsoft.com", PATH)),
    );
    let req = w.proof("vm-1", &[&url("www.microsoft.com", "/old/g3.crt")]);
    assert!(inline(&w.verifier(), &req, Some(&w.fetcher(None)))
        .await
        .is_ok());
    assert_eq!(w.server.hits("/old/g3.crt"), 1);
    assert_eq!(w.server.hits(PATH), 1);
}

/// What a refusal must look like.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Not fetched at all (no request reaches the server).
    Refused,
    /// Fetched, unusable: a bad proof (401).
    Unusable,
    /// Temporary: 503 and retry.
    Unavailable,
    /// Fetched and offered, but the chain through it does not verify: not admitted.
    NotAdmitted,
}

#[tokio::test]
async fn every_refusal() {
    let w = World::new().await;
    let addr = w.server.addr();
    let g = &w.g;

    // A CA with the right name under an untrusted root, which also signs the proof's signer.
    let rogue_root = azure::root("instauth test rogue root", g.ca_validity, 400);
    let rogue_g3 = azure::intermediate(
        "instauth test TLS G3 CA 01",
        g.ca_validity,
        401,
        &rogue_root,
        &[],
    );
    let not_ca = g.signer(&w.g3_ca, 402, &[]);
    w.server
        .route("/not-ca.crt", AiaResponse::Body(not_ca.der()));
    w.server
        .route("/rogue.crt", AiaResponse::Body(rogue_g3.der()));
    w.server
        .route("/other-ca.crt", AiaResponse::Body(g.g2_ocsp_ca.der()));
    w.server
        .route("/big.crt", AiaResponse::Body(vec![0x30; 20_000]));
    w.server.route(
        "/big-unsized.crt",
        AiaResponse::BodyWithoutLength(vec![0x30; 20_000]),
    );
    w.server.route(
        "/garbage.crt",
        AiaResponse::Body(b"<html>moved</html>".to_vec()),
    );
    w.server.route("/missing.crt", AiaResponse::Status(404));
    w.server.route("/down.crt", AiaResponse::Status(503));
    w.server.route(
        "/to-evil.crt",
        AiaResponse::Redirect(format!("http://evil.example{PATH}")),
    );
    w.server.route(
        "/to-ip.crt",
        AiaResponse::Redirect(format!("http://{addr}{PATH}")),
    );
    w.server.route(
        "/slow.crt",
        AiaResponse::Slow {
            body: w.g3_ca.der(),
            delay: Duration::from_millis(20),
        },
    );

    let ms = |path: &str| url("www.microsoft.com", path);
    let cases: Vec<(&str, String, Expect)> = vec![
        ("another host", url("evil.example", PATH), Expect::Refused),
        (
            "an allowed host as a prefix",
            url("www.microsoft.com.evil.example", PATH),
            Expect::Refused,
        ),
        (
            "an allowed host as a suffix",
            url("evilwww.microsoft.com", PATH),
            Expect::Refused,
        ),
        (
            "an IP literal",
            format!("http://{addr}{PATH}"),
            Expect::Refused,
        ),
        (
            "an IPv6 literal",
            format!("http://[::1]:{}{PATH}", addr.port()),
            Expect::Refused,
        ),
        (
            "another port",
            format!("http://www.microsoft.com:{}{PATH}", addr.port()),
            Expect::Refused,
        ),
        (
            "port 8080",
            format!("http://www.microsoft.com:8080{PATH}"),
            Expect::Refused,
        ),
        (
            "another scheme",
            format!("ftp://www.microsoft.com{PATH}"),
            Expect::Refused,
        ),
        (
            "credentials",
            format!("http://u:p@www.microsoft.com{PATH}"),
            Expect::Refused,
        ),
        (
            "a redirect to another host",
            ms("/to-evil.crt"),
            Expect::Refused,
        ),
        (
            "a redirect to an IP literal",
            ms("/to-ip.crt"),
            Expect::Refused,
        ),
        ("an oversized body", ms("/big.crt"), Expect::Unusable),
        (
            "an oversized body without length",
            ms("/big-unsized.crt"),
            Expect::Unusable,
        ),
        ("not a certificate", ms("/garbage.crt"), Expect::Unusable),
        ("not a CA", ms("/not-ca.crt"), Expect::Unusable),
        (
            "a CA of another name",
            ms("/other-ca.crt"),
            Expect::Unusable,
        ),
        ("HTTP 404", ms("/missing.crt"), Expect::Unusable),
        ("HTTP 503", ms("/down.crt"), Expect::Unavailable),
        ("a slow body", ms("/slow.crt"), Expect::Unavailable),
        (
            "a CA not chaining to a pinned root",
            ms("/rogue.crt"),
            Expect::NotAdmitted,
        ),
    ];

    let mut failures = Vec::new();
    for (name, aia_url, expect) in cases {
        let mut config = w.config();
        config.timeout = Duration::from_millis(300);
        let fetcher = AiaFetcher::for_tests(config, Some(Arc::new(MemoryAiaCache::new()))).unwrap();
        let v = w.verifier();
        let signer_ca = if expect == Expect::NotAdmitted {
            &rogue_g3
        } else {
            &w.g3_ca
        };
        let req = w.proof_under(signer_ca, "vm-1", &[&aia_url]);
        let before = w.server.total_hits();
        let started = Instant::now();
        let result = inline(&v, &req, Some(&fetcher)).await;
        let took = started.elapsed();
        let hits = w.server.total_hits() - before;
        let ok = match (&result, expect) {
            (Err(AzureError::Aia(AiaError::Refused { .. })), Expect::Refused) => {
                // A refused redirect reached the first, allowed, hop only.
                hits <= 1 && (aia_url.contains("/to-") || hits == 0)
            }
            (Err(AzureError::Aia(e @ AiaError::Unusable { .. })), Expect::Unusable) => {
                !e.is_unavailable()
            }
            (Err(e @ AzureError::Aia(AiaError::Unavailable { .. })), Expect::Unavailable) => {
                e.is_unavailable() && took < Duration::from_secs(3)
            }
            (Err(AzureError::UntrustedChain { .. }), Expect::NotAdmitted) => {
                v.admitted_from(&aia_url).is_none() && v.trust_certificates().len() == 1
            }
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: {result:?} ({hits} hits, {took:?})"));
        }
        if v.admitted_from(&aia_url).is_some() {
            failures.push(format!("{name}: admitted"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_signer_without_a_url_and_the_negative_cache() {
    let w = World::new().await;
    let v = w.verifier();
    let fetcher = w.fetcher(None);
    let req = w.proof("vm-1", &[]);
    assert!(matches!(
        inline(&v, &req, Some(&fetcher)).await,
        Err(AzureError::Aia(AiaError::NoUrl))
    ));

    // A failed download is remembered: fixing the host does not help until the entry ages.
    w.server.route("/flaky.crt", AiaResponse::Status(500));
    let flaky = url("www.microsoft.com", "/flaky.crt");
    let req = w.proof("vm-1", &[&flaky]);
    assert!(inline(&v, &req, Some(&fetcher))
        .await
        .unwrap_err()
        .is_unavailable());
    w.server
        .route("/flaky.crt", AiaResponse::Body(w.g3_ca.der()));
    assert!(inline(&v, &req, Some(&fetcher))
        .await
        .unwrap_err()
        .is_unavailable());
    assert_eq!(w.server.hits("/flaky.crt"), 1);

    let mut config = w.config();
    config.negative_ttl = Duration::ZERO;
    let fetcher = AiaFetcher::for_tests(config, None).unwrap();
    assert!(inline(&v, &req, Some(&fetcher)).await.is_ok());
    assert_eq!(w.server.hits("/flaky.crt"), 2);
}

#[tokio::test]
async fn network_fetches_are_rate_limited() {
    let w = World::new().await;
    let mut config = w.config();
    config.max_fetches_per_minute = 2;
    let fetcher = AiaFetcher::for_tests(config, None).unwrap();
    let v = w.verifier();
    for i in 0..2 {
        let req = w.proof(
            "vm-1",
            &[&url("www.microsoft.com", &format!("/nothing-{i}.crt"))],
        );
        let err = inline(&v, &req, Some(&fetcher)).await.unwrap_err();
        assert!(!err.is_unavailable(), "{err}");
    }
    let req = w.proof("vm-1", &[&url("www.microsoft.com", PATH)]);
    let err = inline(&v, &req, Some(&fetcher)).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("in the last minute"), "{err}");
    assert_eq!(w.server.total_hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proofs_of_a_new_generation_cost_one_download() {
    let w = World::new().await;
    let g3_url = url("www.microsoft.com", PATH);
    let v = w.verifier();
    let fetcher = w.fetcher(None);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (v, fetcher) = (v.clone(), fetcher.clone());
        let req = w.proof(&format!("vm-{i}"), &[&g3_url]);
        tasks.spawn(async move {
            inline(&v, &req, Some(&fetcher))
                .await
                .map(|id| id.into_inner())
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert!(result.unwrap().is_ok());
    }
    assert_eq!(w.server.hits(PATH), 1);
    assert_eq!(fetcher.network_fetches(), 1);
}
