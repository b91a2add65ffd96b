//! Faults: PostgreSQL goes away under load and comes back. The server answers 503 (with
//! Retry-After) while it is away, recovers without a restart, and every attempt it answered
//! with 2xx or 4xx has its audit record afterwards. The outage is a TCP proxy this test owns
//! and cuts; the shared PostgreSQL cluster is never touched.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{instauth, Server};
use instauth_store::testing::TestDb;
use instauth_store::{DatabaseConfig, Store};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy to PostgreSQL that can be cut (listener closed, every connection reset) and
/// restored on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut p = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream,
            tasks: Arc::default(),
            accept: None,
        };
        p.serve(listener);
        p
    }

    fn serve(&mut self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream, self.tasks.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(task);
            }
        }));
    }

    /// PostgreSQL "goes away": no new connections, existing ones dropped.
    fn cut(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    async fn restore(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebinding the proxy on {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

fn example(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A test database, a proxy to its server, and the database's URL through the proxy.
async fn proxied_database() -> (TestDb, Proxy, String) {
    let db = TestDb::postgres().await;
    let DatabaseConfig::Postgres { url } = db.config.clone() else {
        unreachable!()
    };
    let host_port = url
        .split_once('@')
        .map(|(_, rest)| rest.split('/').next().unwrap().to_owned())
        .unwrap();
    let upstream: SocketAddr = tokio::net::lookup_host(&host_port)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let via_proxy = url.replacen(&host_port, &proxy.addr.to_string(), 1);
    (db, proxy, via_proxy)
}

/// Polls `f` until it holds; fails after 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not after 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listener_drops_the_liveness_cache() {
    // Store `a` reaches PostgreSQL through the proxy (its pool and its LISTEN connection);
    // `b` directly, like another replica that keeps running through a's outage.
    let (db, mut proxy, via_proxy) = proxied_database().await;
    let b = db.store().await;
    let a = Store::connect(DatabaseConfig::Postgres { url: via_proxy })
        .await
        .unwrap();
    let build = serde_json::from_value(serde_json::json!({"resources": [{"name": "vm",
        "type": "aws_instance", "agents": [{"name": "main", "auth": "aws-instance-identity",
        "instance_id": "i-1"}]}]}))
    .unwrap();
    let valid = instauth_store::validate_build("ws", build).unwrap();
    let id = b.create_build(&valid).await.unwrap().agents[0].id;
    eventually("a caches the agent", || {
        let a = a.clone();
        async move {
            let hits = a.liveness_stats().hits;
            a.session_live(id, 0).await.unwrap() && a.liveness_stats().hits > hits
        }
    })
    .await;

    proxy.cut();
    eventually("a notices its listener is gone", || {
        let a = a.clone();
        async move { !a.liveness_stats().active }
    })
    .await;
    // Revoked while a cannot hear about it.
    assert!(b.revoke_agent_sessions(id).await.unwrap());
    assert!(
        a.session_live(id, 0).await.is_err(),
        "no database: no answer"
    );
    proxy.restore().await;
    eventually("a listens again", || {
        let a = a.clone();
        async move { a.liveness_stats().active }
    })
    .await;
    // The notification was lost with the connection; the cache was dropped, so a reads again
    // (a pooled connection broken by the cut may fail once first).
    eventually("a refuses the revoked generation", || {
        let a = a.clone();
        async move { matches!(a.session_live(id, 0).await, Ok(false)) }
    })
    .await;
    assert!(a.session_live(id, 1).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503s_recovers_and_loses_no_audit_record() {
    let (db, mut proxy, via_proxy) = proxied_database().await;

    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("admin-token");
    std::fs::write(&token_file, "fault-admin\n").unwrap();
    let server = tokio::task::spawn_blocking({
        let (home, via_proxy, token_file) = (
            home.path().to_owned(),
            via_proxy.clone(),
            token_file.clone(),
        );
        move || {
            let mut c = instauth(&home);
            c.args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--exchange-rate-limit",
                "0",
            ])
            .env("INSTAUTH_POSTGRES_URL", &via_proxy)
            .env("INSTAUTH_ADMIN_TOKEN_FILE", &token_file);
            Server::start(c)
        }
    })
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let url = server.url.clone();
    let res = http
        .post(format!("{url}/api/v2/workspaces/dev/builds"))
        .bearer_auth("fault-admin")
        .json(&example("build.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // Clients keep exchanging: a valid proof (200, needs the database) and a malformed body
    // (400, does not), counted by status.
    let statuses: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (http, url, statuses, stop) =
            (http.clone(), url.clone(), statuses.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let good = example("aws-exchange.json");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = http.post(format!(
                    "{url}/api/v2/workspaceagents/aws-instance-identity"
                ));
                let req = if i == 0 {
                    req.body("{not json")
                } else {
                    req.json(&good)
                };
                let res = req.send().await.unwrap();
                let status = res.status().as_u16();
                if status == 503 {
                    assert!(
                        res.headers().contains_key("retry-after"),
                        "503 without Retry-After"
                    );
                }
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let count = |s: u16| statuses.lock().unwrap().get(&s).copied().unwrap_or(0);
    let wait_for = |what: &'static str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let before = count(200);
    tokio::task::block_in_place(|| {
        wait_for("200s before the outage", &|| count(200) > before + 20)
    });

    proxy.cut();
    let cut_at = count(503);
    tokio::task::block_in_place(|| {
        wait_for("503s during the outage", &|| count(503) > cut_at + 10)
    });
    let res = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503, "not ready while the database is away");
    let res = http.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200, "alive while the database is away");

    proxy.restore().await;
    let ok_at = count(200);
    tokio::task::block_in_place(|| {
        wait_for("200s after recovery, without a restart", &|| {
            count(200) > ok_at + 20
        })
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let answered: HashMap<u16, usize> = statuses.lock().unwrap().clone();
    assert!(
        answered.keys().all(|s| matches!(s, 200 | 400 | 503)),
        "only 200, 400 and 503: {answered:?}"
    );
    // SIGTERM flushes the audit queue.
    assert!(
        tokio::task::spawn_blocking(move || server.terminate().success())
            .await
            .unwrap()
    );

    let store = Store::open(db.config.clone()).await.unwrap();
    let mut by_outcome: HashMap<String, usize> = HashMap::new();
    let mut after = 0;
    loop {
        let page = store.list_audit_after(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        for r in page {
            *by_outcome.entry(r.record.outcome).or_default() += r.record.count as usize;
        }
    }
    let got = |o: &str| by_outcome.get(o).copied().unwrap_or(0);
    println!("answered {answered:?}, audited {by_outcome:?}");
    assert_eq!(got("ok"), answered[&200], "every 200 is audited");
    assert_eq!(got("bad_request"), answered[&400], "every 400 is audited");
    assert!(got("unavailable") <= answered[&503]);
}
