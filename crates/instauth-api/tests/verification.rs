//! Where and how proofs are verified, end to end over real HTTP on loopback: a cloud's keys or
//! an Azure issuing CA that cannot be fetched is a 503 with `Retry-After` (and recovers
//! without a restart), a saturated verification pool is a 503, an issuing CA fetched by one
//! replica is used by another through the database, and hostile proofs in flight do not slow
//! `/healthz` down.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use instauth_api::aia_cache::StoreAiaCache;
use instauth_api::{ApiConfig, AppState, Verifiers, VerifyPool};
use instauth_store::testing::{TestBackend, TestDb};
use instauth_store::Store;
use instauth_testkit::azure::{self, hostile_proof, AzureGenerations, HostileBag};
use instauth_testkit::{AiaResponse, AiaServer, Issued, JwksServer, TestKey, TestPki};
use instauth_verify::{Clock, FixedClock, SystemClock};
use instauth_verify_aws::{AwsCertificates, AwsVerifier};
use instauth_verify_azure::aia::AiaTestConfig;
use instauth_verify_azure::{AiaFetcher, AzureTrust, AzureVerifier};
use instauth_verify_gcp::{GcpVerifier, JwkSet, JwksSource};
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-token";
const REGION: &str = "us-test-1";
const AUDIENCE: &str = "coder";

struct Server {
    url: String,
    http: reqwest::Client,
    state: AppState,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn config(rate_limit: u32) -> ApiConfig {
    ApiConfig {
        admin_token: ADMIN.into(),
        exchange_rate_limit: rate_limit,
        ..ApiConfig::default()
    }
}

async fn serve(store: Store, verifiers: Verifiers, config: ApiConfig) -> Server {
    let (state, _writer) = AppState::new(store, verifiers, config).await.unwrap();
    let app = instauth_api::router(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(instauth_api::serve::serve(
        listener,
        app,
        instauth_api::serve::ServeConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        url,
        http: reqwest::Client::new(),
        state,
        _stop: stop,
    }
}

/// Status, `Retry-After` and JSON body of an answer.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Server {
    async fn post(&self, path: &str, body: &impl serde::Serialize) -> Answer {
        let res = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = res.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            body,
        }
    }

    /// One workspace with one agent of `auth` for `instance_id`.
    async fn build(&self, ws: &str, auth: &str, instance_id: &str) {
        let a = self
            .post(
                &format!("/api/v2/workspaces/{ws}/builds"),
                &json!({"resources": [{"name": "vm", "type": "vm", "agents": [
                    {"name": "main", "auth": auth, "instance_id": instance_id}
                ]}]}),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }

    /// The newest audit record.
    async fn last_audit(&self) -> Value {
        self.state.flush_audit().await;
        let res = self
            .http
            .get(format!("{}/api/v2/audit?limit=1", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let entries: Value = res.json().await.unwrap();
        entries[0].clone()
    }
}

fn no_aws() -> AwsVerifier {
    AwsVerifier::new(AwsCertificates::empty())
}

fn static_gcp(clock: Arc<dyn Clock>) -> GcpVerifier {
    let jwks = JwkSet::from_json(TestPki::gcp_jwks_json().as_bytes()).unwrap();
    GcpVerifier::new(AUDIENCE, JwksSource::Static(Arc::new(jwks)), clock)
}

fn azure_with(root_pem: &str, clock: Arc<dyn Clock>) -> AzureVerifier {
    AzureVerifier::new(AzureTrust::from_roots_pem(root_pem).unwrap(), clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_keys_unreachable_is_503_then_200_without_a_restart() {
    let db = TestDb::new(TestBackend::Postgres).await;
    let pki = TestPki::new();
    let jwks = JwksServer::start(String::new(), None).await;
    jwks.fail_with(503);
    // The verifier's clock drives the JWKS refetch interval: moving it replaces a minute's
    // wait.
    let clock = Arc::new(FixedClock::new(pki.now));
    let gcp = GcpVerifier::from_config(jwks.url(), AUDIENCE, clock.clone()).unwrap();
    let azure = azure_with(&pki.azure_root_pem(), clock.clone());
    let srv = serve(
        db.store().await,
        Verifiers::new(no_aws(), azure, gcp),
        config(1000),
    )
    .await;
    srv.build("gce", "google-instance-identity", "4242").await;
    let path = "/api/v2/workspaceagents/google-instance-identity";
    let proof = pki.gcp_jwt("4242", AUDIENCE);

    let a = srv.post(path, &proof).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("60"));
    assert_eq!(a.body["message"], "GCP identity cannot be verified now.");
    let detail = a.body["detail"].as_str().unwrap();
    assert!(detail.contains("Google keys unavailable"), "{detail}");
    let audit = srv.last_audit().await;
    assert_eq!(audit["outcome"], "unavailable");
    assert!(
        audit["reason"].as_str().unwrap().contains("JWKS"),
        "{audit}"
    );
    assert_eq!(jwks.hits(), 1);

    // Still down within the refetch interval: 503 again, without asking Google again.
    let a = srv.post(path, &proof).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(jwks.hits(), 1);

    // A malformed token is still a 401, not a 503: it fails before any key is needed.
    let a = srv.post(path, &json!({"json_web_token": "a.b"})).await;
    assert_eq!(a.status, 401, "{}", a.body);

    // Google is back; once the refetch interval has passed the same proof is accepted by the
    // same server.
    jwks.set_body(TestPki::gcp_jwks_json(), Some(300));
    clock.advance(chrono::Duration::seconds(61));
    let a = srv.post(path, &proof).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["session_token"].is_string());
    assert_eq!(jwks.hits(), 2);
    assert_eq!(srv.last_audit().await["outcome"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_verification_pool_is_503_and_recovers() {
    let db = TestDb::new(TestBackend::Sqlite).await;
    let pki = TestPki::new();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut certs = AwsCertificates::empty();
    certs
        .add_pem(&pki.aws_certificates_pem(REGION), None, Path::new("test"))
        .unwrap();
    let verifiers = Verifiers::new(
        AwsVerifier::new(certs),
        azure_with(&pki.azure_root_pem(), clock.clone()),
        static_gcp(clock),
    )
    .with_pool(VerifyPool::new(1, Duration::from_millis(200)));
    let srv = serve(db.store().await, verifiers, config(1000)).await;
    srv.build("ec2", "aws-instance-identity", "i-1").await;
    let path = "/api/v2/workspaceagents/aws-instance-identity";
    let proof = pki.aws_proof("i-1", REGION);

    // Something else holds the only permit until released.
    let pool = srv.state.verifiers().pool().clone();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holder = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.run(move || held.recv()).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.available() > 0 {
        assert!(Instant::now() < deadline, "the permit was never taken");
        tokio::task::yield_now().await;
    }

    let started = Instant::now();
    let a = srv.post(path, &proof).await;
    let waited = started.elapsed();
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("5"));
    assert_eq!(a.body["message"], "AWS identity cannot be verified now.");
    assert!(
        a.body["detail"].as_str().unwrap().contains("busy"),
        "{}",
        a.body
    );
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert_eq!(srv.last_audit().await["outcome"], "unavailable");

    release.send(()).unwrap();
    holder.await.unwrap().unwrap().unwrap();
    let a = srv.post(path, &proof).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// An issuing CA generation the verifier does not know ("TLS G3 CA 01" under the trusted G2
/// root), served by a local stand-in for Microsoft's certificate host.
struct NewGeneration {
    g: AzureGenerations,
    g3_ca: Issued,
    aia: AiaServer,
}

const G3_PATH: &str = "/pkiops/certs/instauth%20test%20TLS%20G3%20CA%2001.crt";

impl NewGeneration {
    async fn new() -> Self {
        let g = AzureGenerations::new();
        let g3_ca = azure::intermediate(
            "instauth test TLS G3 CA 01",
            g.ca_validity,
            300,
            &g.tls_root_g2,
            &[],
        );
        let aia = AiaServer::start().await;
        aia.route(G3_PATH, AiaResponse::Body(g3_ca.der()));
        aia.route("/down.crt", AiaResponse::Status(503));
        NewGeneration { g, g3_ca, aia }
    }

    /// A replica: verifiers trusting only the G2 root, fetching with a cache on `store`.
    fn verifiers(&self, store: &Store) -> (Verifiers, AiaFetcher) {
        let clock: Arc<dyn Clock> = Arc::new(FixedClock::new(self.g.now));
        let azure = azure_with(&self.g.tls_root_g2.pem(), clock.clone());
        let config = AiaTestConfig::resolving(&["www.microsoft.com"], self.aia.addr());
        let cache = Arc::new(StoreAiaCache::new(store.clone()));
        let fetcher = AiaFetcher::for_tests(config, Some(cache)).unwrap();
        let verifiers =
            Verifiers::new(no_aws(), azure, static_gcp(clock)).with_aia(fetcher.clone());
        (verifiers, fetcher)
    }

    fn proof(&self, vm: &str, path: &str) -> instauth_types::AzureInstanceIdentityRequest {
        let url = format!("http://www.microsoft.com{path}");
        let leaf = self.g.signer(&self.g3_ca, 7, &[&url]);
        azure::proof(&leaf, TestKey::AzureSigner, self.g.document(vm).as_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuing_ca_fetched_by_one_replica_is_used_by_the_next_through_the_database() {
    let db = TestDb::new(TestBackend::Postgres).await;
    let world = NewGeneration::new().await;
    let path = "/api/v2/workspaceagents/azure-instance-identity";

    let store1 = db.store().await;
    let (verifiers1, fetcher1) = world.verifiers(&store1);
    let replica1 = serve(store1, verifiers1, config(1000)).await;
    replica1
        .build("az", "azure-instance-identity", "vm-1")
        .await;

    // An AIA host that answers 503: the proof may be good, so 503 with Retry-After.
    let a = replica1.post(path, &world.proof("vm-1", "/down.crt")).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.retry_after.as_deref(), Some("60"));
    assert_eq!(a.body["message"], "Azure identity cannot be verified now.");
    assert_eq!(replica1.last_audit().await["outcome"], "unavailable");

    // The first replica fetches the new generation's CA once and stores it.
    let a = replica1.post(path, &world.proof("vm-1", G3_PATH)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(world.aia.hits(G3_PATH), 1);
    assert_eq!(fetcher1.network_fetches(), 2);
    let stored = replica1.state.store().aia_certificates().await.unwrap();
    assert_eq!(
        stored,
        [(
            format!("http://www.microsoft.com{G3_PATH}"),
            world.g3_ca.der()
        )]
    );
    // Fetched and admitted: listed with its URL, and exported with its expiry.
    assert!(replica1
        .state
        .verifiers()
        .trust_certificates()
        .iter()
        .any(|c| c.subject.contains("TLS G3 CA 01")
            && c.source.to_string() == format!("http://www.microsoft.com{G3_PATH}")));
    let metrics = replica1
        .http
        .get(format!("{}/metrics", replica1.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "instauth_trust_certificate_expiry_timestamp_seconds{provider=\"azure\",subject=\"O=instauth test,CN=instauth test TLS G3 CA 01\"}"
        )),
        "{metrics}"
    );

    // A second replica (fresh verifier, fresh fetcher, same database) needs no download.
    let store2 = db.store().await;
    let (verifiers2, fetcher2) = world.verifiers(&store2);
    let replica2 = serve(store2, verifiers2, config(1000)).await;
    let a = replica2.post(path, &world.proof("vm-1", G3_PATH)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(fetcher2.network_fetches(), 0);
    assert_eq!(world.aia.hits(G3_PATH), 1);
    assert_eq!(
        world.aia.total_hits(),
        2,
        "only the 503 and the first fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_fast_while_32_hostile_azure_proofs_are_in_flight() {
    const IN_FLIGHT: usize = 32;
    const ROUNDS: usize = 32;
    let db = TestDb::new(TestBackend::Sqlite).await;
    let pki = TestPki::new();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // The built-in issuing CAs, with the test hierarchy's root as the anchor (so that hostile
    // names can cycle through a trusted anchor's name, the costliest case).
    let mut trust = AzureTrust::builtin();
    trust
        .replace_roots_pem(&pki.azure_root_pem(), "test-root.pem".as_ref())
        .unwrap();
    trust
        .add_intermediates_pem(&pki.azure_intermediate_pem(), "test-ca.pem".as_ref())
        .unwrap();
    let azure = AzureVerifier::new(trust, clock.clone());
    let srv = Arc::new(
        serve(
            db.store().await,
            Verifiers::new(no_aws(), azure, static_gcp(clock)),
            config(0),
        )
        .await,
    );
    let content = TestPki::azure_document_at("vm-1", "sub-1", pki.now).into_bytes();
    // The costliest shapes a proof may have: the largest bag allowed with names cycling
    // through a trusted root's (so paths reach an anchor and signatures get checked), and a
    // bag of ten self-issued CAs (the one that used to cost 2 s of CPU).
    let hostile: Vec<_> = [
        (HostileBag::Cycle(3), "instauth test Azure root"),
        (HostileBag::Cycle(3), "instauth test hostile other"),
        (HostileBag::SelfIssued(3), "unused"),
        (HostileBag::SelfIssued(10), "unused"),
    ]
    .into_iter()
    .map(|(shape, y)| Arc::new(hostile_proof(shape, pki.azure_leaf_validity, y, &content).0))
    .collect();

    // Baseline.
    let health = reqwest::Client::new();
    let healthz = format!("{}/healthz", srv.url);
    let mut idle = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(health.get(&healthz).send().await.unwrap().status(), 200);
        idle.push(t.elapsed());
    }

    let path = "/api/v2/workspaceagents/azure-instance-identity";
    let started = Instant::now();
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..IN_FLIGHT {
        let (srv, proof) = (srv.clone(), hostile[i % hostile.len()].clone());
        attackers.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..ROUNDS {
                statuses.push(srv.post(path, &*proof).await.status);
            }
            statuses
        });
    }
    let pool = srv.state.verifiers().pool().clone();
    let mut fewest_free = pool.size();
    let mut busy = Vec::new();
    while !attackers.is_empty() && busy.len() < 10_000 {
        fewest_free = fewest_free.min(pool.available());
        let t = Instant::now();
        assert_eq!(health.get(&healthz).send().await.unwrap().status(), 200);
        busy.push(t.elapsed());
        if let Some(done) = attackers.try_join_next() {
            let statuses = done.unwrap();
            assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
        }
    }
    while let Some(done) = attackers.join_next().await {
        let statuses = done.unwrap();
        assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    }
    let attack_time = started.elapsed();

    let stats = |mut v: Vec<Duration>| {
        v.sort();
        let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (v.len(), pick(0.5), pick(0.99), *v.last().unwrap())
    };
    let (n0, med0, p99_0, max0) = stats(idle);
    let (n, med, p99, max) = stats(busy);
    println!(
        "hostile Azure proofs: {} requests ({IN_FLIGHT} in flight) answered 401 in {attack_time:?}",
        IN_FLIGHT * ROUNDS
    );
    println!("/healthz idle: {n0} requests, median {med0:?}, p99 {p99_0:?}, max {max0:?}");
    println!("/healthz under attack: {n} requests, median {med:?}, p99 {p99:?}, max {max:?}");
    assert!(n >= 5, "too few /healthz samples ({n}) to judge");
    // The proofs were checked on the pool (its permits were taken), not on the HTTP workers.
    assert!(
        fewest_free < pool.size(),
        "the verification pool was never used"
    );
    // The bound of issue 9 is 50 ms; asserted with margin for a shared, loaded test machine.
    assert!(med < Duration::from_millis(50), "median {med:?}");
    assert!(max < Duration::from_millis(250), "max {max:?}");
}
