//! The liveness cache and group commit, on both backends: revocations reach a second store
//! (another process's view) within a second, a batch of concurrent heartbeats is one statement
//! and the last heartbeat of an agent in it wins, concurrent candidate lookups share one
//! statement and each gets what a lookup of its own finds.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use instauth_store::testing::{TestBackend, TestDb};
use instauth_store::{backend_test, validate_build, AgentAuth, LifecycleState, Store};
use instauth_types::{AgentSpec, BuildRequest, ResourceSpec, Wire};
use uuid::Uuid;

fn build(agents: usize) -> BuildRequest {
    BuildRequest {
        resources: vec![ResourceSpec {
            name: "vm".into(),
            resource_type: "aws_instance".into(),
            agents: (0..agents)
                .map(|n| AgentSpec {
                    name: format!("a{n}"),
                    auth: Wire::Known(AgentAuth::AwsInstanceIdentity),
                    instance_id: Some(format!("i-{n}")),
                    parent: None,
                    require_agent_key: false,
                })
                .collect(),
            expect: None,
        }],
    }
}

async fn create(store: &Store, ws: &str, agents: usize) -> Vec<Uuid> {
    let valid = validate_build(ws, build(agents)).unwrap();
    let created = store.create_build(&valid).await.unwrap();
    created.agents.iter().map(|a| a.id).collect()
}

/// Reads until `store` answers `agent` at `generation` from its cache (the watch runs).
async fn cached(store: &Store, agent: Uuid, generation: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(store.session_live(agent, generation).await.unwrap());
        let before = store.liveness_stats();
        assert!(store.session_live(agent, generation).await.unwrap());
        if store.liveness_stats().hits > before.hits {
            return;
        }
        assert!(Instant::now() < deadline, "never cached: {before:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fails unless `store` stops accepting `agent` at `generation` within a second.
async fn refused_within_a_second(store: &Store, agent: Uuid, generation: i32, what: &str) {
    let start = Instant::now();
    while store.session_live(agent, generation).await.unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: still live in the second store after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// An agent found not live stays so (superseded builds and deleted workspaces are never
// undone): its next checks are answered without a database read.
backend_test!(a_revoked_agent_costs_one_read, |store| async move {
    let old = create(&store, "ws", 1).await[0];
    cached(&store, old, 0).await;
    let next = create(&store, "ws", 1).await[0];
    assert!(!store.session_live(old, 0).await.unwrap());
    let before = store.liveness_stats();
    for _ in 0..10 {
        assert!(!store.session_live(old, 0).await.unwrap());
    }
    let after = store.liveness_stats();
    assert_eq!(after.misses, before.misses, "{before:?} → {after:?}");
    assert_eq!(after.hits, before.hits + 10);
    cached(&store, next, 0).await;
    assert!(store.delete_workspace("ws").await.unwrap());
    assert!(!store.session_live(next, 0).await.unwrap());
    let misses = store.liveness_stats().misses;
    assert!(!store.session_live(next, 0).await.unwrap());
    assert_eq!(store.liveness_stats().misses, misses);
});

backend_test!(
    revocations_reach_another_store_within_a_second,
    |a| async move {
        let b = Store::open(a.config().clone()).await.unwrap();
        let id = create(&a, "ws", 1).await[0];
        cached(&a, id, 0).await;
        cached(&b, id, 0).await;

        assert!(a.revoke_agent_sessions(id).await.unwrap());
        assert!(
            !a.session_live(id, 0).await.unwrap(),
            "at once where it was made"
        );
        assert!(a.session_live(id, 1).await.unwrap());
        refused_within_a_second(&b, id, 0, "revoked").await;
        assert!(b.session_live(id, 1).await.unwrap());

        cached(&a, id, 1).await;
        cached(&b, id, 1).await;
        assert!(b.reset_agent_key("ws", "a0").await.unwrap());
        assert!(!b.session_live(id, 1).await.unwrap());
        refused_within_a_second(&a, id, 1, "key reset").await;

        cached(&a, id, 2).await;
        cached(&b, id, 2).await;
        let next = create(&a, "ws", 1).await[0];
        assert!(!a.session_live(id, 2).await.unwrap());
        refused_within_a_second(&b, id, 2, "new build").await;

        cached(&a, next, 0).await;
        cached(&b, next, 0).await;
        assert!(b.delete_workspace("ws").await.unwrap());
        assert!(!b.session_live(next, 0).await.unwrap());
        refused_within_a_second(&a, next, 0, "workspace deleted").await;
    }
);

backend_test!(static_tokens_are_cached_and_revoked, |a| async move {
    let mut valid = validate_build(
        "ws",
        BuildRequest {
            resources: vec![ResourceSpec {
                name: "vm".into(),
                resource_type: "docker_container".into(),
                agents: vec![AgentSpec {
                    name: "tok".into(),
                    auth: Wire::Known(AgentAuth::Token),
                    instance_id: None,
                    parent: None,
                    require_agent_key: false,
                }],
                expect: None,
            }],
        },
    )
    .unwrap();
    valid.agents_mut()[0].set_token_hash(vec![9; 32]);
    let id = a.create_build(&valid).await.unwrap().agents[0].id;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(a.token_live(&[9; 32]).await.unwrap(), Some(id));
        let hits = a.liveness_stats().hits;
        assert_eq!(a.token_live(&[9; 32]).await.unwrap(), Some(id));
        if a.liveness_stats().hits > hits {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.token_live(&[8; 32]).await.unwrap(), None);
    assert!(a.delete_workspace("ws").await.unwrap());
    assert_eq!(a.token_live(&[9; 32]).await.unwrap(), None);
    // The revoked token is answered from the cache from now on; an unknown one is never
    // remembered (guesses would fill it), so it reads every time.
    let misses = a.liveness_stats().misses;
    assert_eq!(a.token_live(&[9; 32]).await.unwrap(), None);
    assert_eq!(a.liveness_stats().misses, misses);
    assert_eq!(a.token_live(&[8; 32]).await.unwrap(), None);
    assert_eq!(a.liveness_stats().misses, misses + 1);
});

/// Concurrent heartbeats queued before the writer runs: a current-thread runtime runs every
/// spawned request up to its wait before the writer task gets its turn, so the batch is exact.
async fn one_statement_per_batch(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let agents = create(&store, "ws", 64).await;
    // Start the writer first, so what follows measures a steady state.
    store
        .record_heartbeat(agents[0], LifecycleState::Starting)
        .await
        .unwrap();
    let (statements, batches) = (store.queries_total(), store.heartbeat_batches());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &agent) in agents.iter().enumerate() {
        let s = store.clone();
        // Agent 0 heartbeats three times: the last one wins.
        let states: &[LifecycleState] = if i == 0 {
            &[
                LifecycleState::Ready,
                LifecycleState::ShuttingDown,
                LifecycleState::Off,
            ]
        } else {
            &[LifecycleState::Ready]
        };
        for &state in states {
            let s = s.clone();
            tasks.spawn(async move { s.record_heartbeat(agent, state).await });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(store.heartbeat_batches() - batches, 1, "one batch");
    assert_eq!(store.queries_total() - statements, 1, "one statement");
    let ws = store.get_workspace("ws").await.unwrap().unwrap();
    for a in &ws.agents {
        let want = if a.id == agents[0] {
            LifecycleState::Off
        } else {
            LifecycleState::Ready
        };
        assert_eq!(a.lifecycle_state, want, "{}", a.name);
        assert!(a.first_connected_at.is_some() && a.last_connected_at.is_some());
    }
}

#[tokio::test]
async fn one_statement_per_heartbeat_batch_sqlite() {
    one_statement_per_batch(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn one_statement_per_heartbeat_batch_postgres() {
    one_statement_per_batch(TestBackend::Postgres).await;
}

backend_test!(heartbeats_under_load_batch, |store| async move {
    // 512 concurrent heartbeats on a multi-threaded runtime: far fewer statements than
    // heartbeats, and never more than one per batch.
    let agents = create(&store, "ws", 512).await;
    let (statements, batches) = (store.queries_total(), store.heartbeat_batches());
    let mut tasks = tokio::task::JoinSet::new();
    for &agent in &agents {
        let s = store.clone();
        tasks.spawn(async move { s.record_heartbeat(agent, LifecycleState::Ready).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let (statements, batches) = (
        store.queries_total() - statements,
        store.heartbeat_batches() - batches,
    );
    assert_eq!(statements, batches, "one statement per batch");
    assert!(batches < 512 / 4, "{batches} batches for 512 heartbeats");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_changes_pruned_before_they_were_read_drop_the_whole_cache() {
    let db = TestDb::sqlite();
    let a = db.store().await;
    let id = create(&a, "ws", 1).await[0];
    cached(&a, id, 0).await;
    let resets = a.liveness_stats().resets;
    // Another process appends a change and prunes it before `a` polls, then appends another:
    // `a` sees a gap in the sequence and cannot know what it missed.
    let instauth_store::DatabaseConfig::Sqlite { path } = a.config().clone() else {
        unreachable!()
    };
    tokio::task::spawn_blocking(move || {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let mut c = diesel::SqliteConnection::establish(&path.to_string_lossy()).unwrap();
        // Another workspace's change alone would only invalidate that workspace.
        let other = Uuid::new_v4();
        c.batch_execute(&format!(
            "PRAGMA busy_timeout = 5000; BEGIN IMMEDIATE; \
             INSERT INTO liveness_changes (workspace_id) VALUES ('pruned'); \
             DELETE FROM liveness_changes WHERE workspace_id = 'pruned'; \
             INSERT INTO liveness_changes (workspace_id) VALUES ('{other}'); \
             COMMIT;"
        ))
        .unwrap();
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.liveness_stats().resets == resets {
        assert!(Instant::now() < deadline, "the gap went unnoticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.liveness_stats().entries, 0);
}

/// Concurrent candidate lookups share one statement, and each gets what a lookup of its own
/// finds: its instance's live root agents of its auth method, ordered by name.
async fn lookups_share_a_statement(backend: TestBackend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    // i-0 .. i-9 one agent each; i-shared two agents (ordered by name); a sub-agent never.
    let mut b = build(10);
    for (name, parent) in [("zeta", None), ("alpha", None), ("child", Some("alpha"))] {
        b.resources[0].agents.push(AgentSpec {
            name: name.into(),
            auth: Wire::Known(AgentAuth::AwsInstanceIdentity),
            instance_id: Some("i-shared".into()),
            parent: parent.map(Into::into),
            require_agent_key: false,
        });
    }
    store
        .create_build(&validate_build("ws", b).unwrap())
        .await
        .unwrap();
    let asks: Vec<(AgentAuth, String)> = (0..10)
        .map(|n| (AgentAuth::AwsInstanceIdentity, format!("i-{n}")))
        .chain([
            (AgentAuth::AwsInstanceIdentity, "i-shared".into()),
            (AgentAuth::AwsInstanceIdentity, "i-none".into()),
            (AgentAuth::AzureInstanceIdentity, "i-3".into()),
            (AgentAuth::AwsInstanceIdentity, "i-3".into()),
        ])
        .collect();
    let mut alone = Vec::new();
    for (auth, iid) in &asks {
        alone.push(store.candidates(*auth, iid).await.unwrap());
    }
    let (statements, batches) = (store.queries_total(), store.candidate_batches());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (auth, iid)) in asks.iter().cloned().enumerate() {
        let s = store.clone();
        tasks.spawn(async move { (i, s.candidates(auth, &iid).await.unwrap()) });
    }
    let mut together = vec![Vec::new(); asks.len()];
    while let Some(r) = tasks.join_next().await {
        let (i, c) = r.unwrap();
        together[i] = c;
    }
    assert_eq!(store.candidate_batches() - batches, 1, "one batch");
    assert_eq!(store.queries_total() - statements, 1, "one statement");
    assert_eq!(together, alone);
    let names = |c: &[instauth_store::Candidate]| -> Vec<String> {
        c.iter().map(|c| c.agent_name.clone()).collect()
    };
    assert_eq!(names(&together[10]), ["alpha", "zeta"]);
    assert!(together[11].is_empty() && together[12].is_empty());
    assert_eq!(names(&together[13]), ["a3"]);
}

#[tokio::test]
async fn concurrent_candidate_lookups_share_a_statement_sqlite() {
    lookups_share_a_statement(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_candidate_lookups_share_a_statement_postgres() {
    lookups_share_a_statement(TestBackend::Postgres).await;
}
