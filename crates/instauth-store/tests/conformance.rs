//! The store's conformance suite: every test body runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)]

use chrono::Duration;
use instauth_store::{
    backend_test, now, validate_build, AgentAuth, CreatedBuild, LifecycleState, NewAuditRecord,
    Provider, Store, StoreError,
};
use instauth_types::{AgentSpec, BuildRequest, ResourceSpec, Wire};

const AWS: AgentAuth = AgentAuth::AwsInstanceIdentity;

fn agent(name: &str, iid: Option<&str>) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        auth: Wire::Known(if iid.is_some() { AWS } else { AgentAuth::Token }),
        instance_id: iid.map(Into::into),
        parent: None,
        require_agent_key: false,
    }
}

fn sub_agent(name: &str, iid: &str, parent: &str) -> AgentSpec {
    AgentSpec {
        parent: Some(parent.into()),
        ..agent(name, Some(iid))
    }
}

fn build(agents: Vec<AgentSpec>) -> BuildRequest {
    BuildRequest {
        resources: vec![ResourceSpec {
            name: "vm".into(),
            resource_type: "aws_instance".into(),
            agents,
            expect: None,
        }],
    }
}

/// Validates and creates a build, as the admin API does.
async fn create(store: &Store, ws: &str, b: &BuildRequest) -> Result<CreatedBuild, StoreError> {
    let valid = validate_build(ws, b.clone()).map_err(StoreError::Validation)?;
    store.create_build(&valid).await
}

/// The candidates of one name, as the policy narrows them.
async fn candidates_named(store: &Store, iid: &str, name: &str) -> Vec<instauth_store::Candidate> {
    let mut c = store.candidates(AWS, iid).await.unwrap();
    c.retain(|c| c.agent_name == name);
    c
}

async fn names(store: &Store, iid: &str) -> Vec<String> {
    store
        .candidates(AWS, iid)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.agent_name)
        .collect()
}

backend_test!(two_root_agents_share_an_instance, |store| async move {
    let b = build(vec![agent("main", Some("i-1")), agent("dev", Some("i-1"))]);
    let created = create(&store, "ws", &b).await.unwrap();
    assert_eq!(created.build_number, 1);
    let c = store.candidates(AWS, "i-1").await.unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].agent_name, "dev");
    assert_eq!(c[1].agent_name, "main");
    assert_eq!(c[0].workspace_name, "ws");
    assert_eq!(c[0].expect(), None, "resource vm declares no expectation");
    let main_id = created.agents.iter().find(|a| a.name == "main").unwrap().id;
    let named = candidates_named(&store, "i-1", "main").await;
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].agent_id, main_id);
    assert!(candidates_named(&store, "i-1", "nope").await.is_empty());
    assert!(store.candidates(AWS, "i-2").await.unwrap().is_empty());
});

backend_test!(
    sub_agent_sharing_the_instance_is_excluded,
    |store| async move {
        let b = build(vec![
            agent("main", Some("i-1")),
            sub_agent("devcontainer", "i-1", "main"),
        ]);
        create(&store, "ws", &b).await.unwrap();
        assert_eq!(names(&store, "i-1").await, vec!["main"]);
        assert!(candidates_named(&store, "i-1", "devcontainer")
            .await
            .is_empty());
    }
);

backend_test!(agents_of_older_builds_are_excluded, |store| async move {
    create(&store, "ws", &build(vec![agent("old", Some("i-1"))]))
        .await
        .unwrap();
    let second = create(&store, "ws", &build(vec![agent("new", Some("i-1"))]))
        .await
        .unwrap();
    assert_eq!(second.build_number, 2);
    assert_eq!(names(&store, "i-1").await, vec!["new"]);
    let third = create(&store, "ws", &build(vec![agent("other", Some("i-9"))]))
        .await
        .unwrap();
    assert_eq!(third.build_number, 3);
    assert!(names(&store, "i-1").await.is_empty());
    assert_eq!(
        store
            .get_workspace("ws")
            .await
            .unwrap()
            .unwrap()
            .build_number,
        3
    );
});

backend_test!(deleted_workspace_is_excluded, |store| async move {
    create(&store, "ws", &build(vec![agent("main", Some("i-1"))]))
        .await
        .unwrap();
    assert!(store.delete_workspace("ws").await.unwrap());
    assert!(!store.delete_workspace("ws").await.unwrap());
    assert!(names(&store, "i-1").await.is_empty());
    assert!(store.get_workspace("ws").await.unwrap().is_none());
    // The name is free again and starts at build 1.
    let again = create(&store, "ws", &build(vec![agent("main", Some("i-1"))]))
        .await
        .unwrap();
    assert_eq!(again.build_number, 1);
    assert_eq!(names(&store, "i-1").await, vec!["main"]);
});

backend_test!(same_instance_in_two_workspaces, |store| async move {
    create(&store, "alpha", &build(vec![agent("main", Some("i-1"))]))
        .await
        .unwrap();
    create(&store, "beta", &build(vec![agent("dev", Some("i-1"))]))
        .await
        .unwrap();
    let c = store.candidates(AWS, "i-1").await.unwrap();
    let ws: Vec<_> = c
        .iter()
        .map(|c| (c.workspace_name.as_str(), c.agent_name.as_str()))
        .collect();
    assert_eq!(ws, vec![("beta", "dev"), ("alpha", "main")]);
    let named = candidates_named(&store, "i-1", "dev").await;
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].workspace_name, "beta");
});

backend_test!(other_auth_methods_are_excluded, |store| async move {
    let mut gcp = agent("g", Some("1234"));
    gcp.auth = Wire::Known(AgentAuth::GoogleInstanceIdentity);
    create(&store, "ws", &build(vec![gcp])).await.unwrap();
    assert!(store.candidates(AWS, "1234").await.unwrap().is_empty());
    assert_eq!(
        store
            .candidates(AgentAuth::GoogleInstanceIdentity, "1234")
            .await
            .unwrap()
            .len(),
        1
    );
});

backend_test!(candidate_lookups_are_one_statement, |store| async move {
    create(
        &store,
        "ws",
        &build(vec![agent("main", Some("i-1")), agent("dev", Some("i-1"))]),
    )
    .await
    .unwrap();
    // Warm the pool so connection set-up is not in the count.
    store.candidates(AWS, "i-0").await.unwrap();
    let before = store.queries_total();
    assert_eq!(store.candidates(AWS, "i-1").await.unwrap().len(), 2);
    assert_eq!(store.queries_total() - before, 1);
});

backend_test!(
    invalid_builds_list_every_problem_and_store_nothing,
    |store| async move {
        let b = build(vec![
            agent("main", Some("i-1")),
            agent("main", None),
            AgentSpec {
                parent: Some("ghost".into()),
                ..agent("sub", None)
            },
            AgentSpec {
                instance_id: None,
                ..agent("aws", Some("x"))
            },
        ]);
        match create(&store, "Bad Name", &b).await {
            Err(StoreError::Validation(errs)) => {
                assert_eq!(errs.len(), 1, "workspace name is checked first: {errs:?}")
            }
            other => panic!("expected validation error, got {other:?}"),
        }
        match create(&store, "ws", &b).await {
            Err(StoreError::Validation(errs)) => {
                let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(
                    fields,
                    vec![
                        "resources[0].agents[1].name",
                        "resources[0].agents[2].parent",
                        "resources[0].agents[3].instance_id",
                    ]
                );
            }
            other => panic!("expected validation error, got {other:?}"),
        }
        assert!(store.list_workspaces().await.unwrap().is_empty());
    }
);

backend_test!(list_show_and_sub_agents, |store| async move {
    let b = BuildRequest {
        resources: vec![
            ResourceSpec {
                name: "vm".into(),
                resource_type: "aws_instance".into(),
                agents: vec![
                    agent("main", Some("i-1")),
                    sub_agent("child", "i-1", "main"),
                ],
                expect: None,
            },
            ResourceSpec {
                name: "box".into(),
                resource_type: "docker_container".into(),
                agents: vec![agent("tok", None)],
                expect: None,
            },
        ],
    };
    create(&store, "ws", &b).await.unwrap();
    create(&store, "another", &build(vec![agent("x", Some("i-2"))]))
        .await
        .unwrap();
    let all = store.list_workspaces().await.unwrap();
    assert_eq!(
        all.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["another", "ws"]
    );
    let ws = store.get_workspace("ws").await.unwrap().unwrap();
    assert_eq!(ws.resources.len(), 2);
    assert_eq!(ws.resources[0].name, "box");
    let child = ws.agents.iter().find(|a| a.name == "child").unwrap();
    assert_eq!(child.parent.as_deref(), Some("main"));
    assert_eq!(child.resource_name, "vm");
    let tok = ws.agents.iter().find(|a| a.name == "tok").unwrap();
    assert_eq!(tok.auth, AgentAuth::Token);
    assert_eq!(tok.lifecycle_state, LifecycleState::Created);
    assert!(store.get_workspace("missing").await.unwrap().is_none());
});

backend_test!(
    session_lookups_end_with_their_workspace,
    |store| async move {
        let created = create(&store, "ws", &build(vec![agent("main", Some("i-1"))]))
            .await
            .unwrap();
        let id = created.agents[0].id;
        let ctx = store.session_agent_by_id(id, 0).await.unwrap().unwrap();
        assert_eq!(ctx.agent_id, id);
        assert_eq!(ctx.agent_name, "main");
        assert_eq!(ctx.workspace_name, "ws");
        assert_eq!(ctx.workspace_id, created.workspace_id);
        assert_eq!(ctx.build_number, 1);
        assert_eq!(ctx.resource_name, "vm");
        assert_eq!(ctx.resource_type, "aws_instance");
        assert!(store.delete_workspace("ws").await.unwrap());
        assert!(store.session_agent_by_id(id, 0).await.unwrap().is_none());
    }
);

backend_test!(static_agent_tokens_by_hash, |store| async move {
    let mut valid = validate_build("ws", build(vec![agent("tok", None)])).unwrap();
    valid.agents_mut()[0].set_token_hash(b"token-hash".to_vec());
    let created = store.create_build(&valid).await.unwrap();
    let ctx = store.token_agent(b"token-hash").await.unwrap().unwrap();
    assert_eq!(ctx.agent_id, created.agents[0].id);
    assert!(store.token_agent(b"other").await.unwrap().is_none());
});

backend_test!(
    heartbeats_record_first_and_last_connection,
    |store| async move {
        let created = create(&store, "ws", &build(vec![agent("main", Some("i-1"))]))
            .await
            .unwrap();
        let id = created.agents[0].id;
        let agent_now = |store: Store| async move {
            store
                .get_workspace("ws")
                .await
                .unwrap()
                .unwrap()
                .agents
                .remove(0)
        };
        let before = now();
        store
            .record_heartbeat(id, LifecycleState::Starting)
            .await
            .unwrap();
        let a = agent_now(store.clone()).await;
        assert_eq!(a.lifecycle_state, LifecycleState::Starting);
        let first = a.first_connected_at.unwrap();
        assert!(
            first >= before && a.last_connected_at == Some(first),
            "{a:?}"
        );
        store
            .record_heartbeat(id, LifecycleState::Ready)
            .await
            .unwrap();
        let a = agent_now(store.clone()).await;
        assert_eq!(a.lifecycle_state, LifecycleState::Ready);
        assert_eq!(a.first_connected_at, Some(first), "set once");
        assert!(a.last_connected_at.unwrap() >= first);
        // An agent that does not exist changes nothing.
        store
            .record_heartbeat(uuid::Uuid::new_v4(), LifecycleState::Off)
            .await
            .unwrap();
        assert_eq!(
            agent_now(store).await.lifecycle_state,
            LifecycleState::Ready
        );
    }
);

backend_test!(audit_batches_and_lists_newest_first, |store| async move {
    let t = now();
    let records: Vec<NewAuditRecord> = (0..2500)
        .map(|i| NewAuditRecord {
            time: t + Duration::milliseconds(i),
            provider: Provider::Aws,
            instance_id: format!("i-{i}"),
            agent_name: String::new(),
            outcome: if i % 2 == 0 { "ok" } else { "conflict" }.into(),
            agent_id: (i % 2 == 0).then(uuid::Uuid::new_v4),
            remote_addr: "127.0.0.1:5000".into(),
            reason: (i % 2 == 1).then(|| format!("reason {i}")),
            count: 1 + (i % 3) as i32,
            uid: uuid::Uuid::new_v4(),
        })
        .collect();
    let before = store.queries_total();
    store.insert_audit(&records).await.unwrap();
    // PostgreSQL takes the batch as one array per column in one statement; SQLite as
    // multi-row inserts within its bind limit.
    let (statements, how) = if store.is_postgres() {
        (1, "2500 records in one statement")
    } else {
        (3, "2500 records in chunks of 1000")
    };
    assert_eq!(store.queries_total() - before, statements, "{how}");
    let listed = store.list_audit(3).await.unwrap();
    assert_eq!(listed.len(), 3);
    // Both shapes of the optional columns come back as written.
    assert_eq!(listed[0].record, records[2499]);
    assert_eq!(listed[1].record, records[2498]);
    assert_eq!(listed[2].record.instance_id, "i-2497");
});

backend_test!(
    old_audit_records_are_deleted_in_batches,
    |store| async move {
        let t = now();
        let records: Vec<NewAuditRecord> = (0..25)
            .map(|i| NewAuditRecord {
                time: t - Duration::days(40 - i),
                provider: Provider::Gcp,
                instance_id: format!("{i}"),
                agent_name: String::new(),
                outcome: "ok".into(),
                agent_id: None,
                remote_addr: String::new(),
                reason: None,
                count: 1,
                uid: uuid::Uuid::new_v4(),
            })
            .collect();
        store.insert_audit(&records).await.unwrap();
        let cutoff = t - Duration::days(30);
        // Records 0..=9 are older than 30 days.
        assert_eq!(store.delete_audit_before(cutoff, 4).await.unwrap(), 4);
        assert_eq!(store.delete_audit_before(cutoff, 4).await.unwrap(), 4);
        assert_eq!(store.delete_audit_before(cutoff, 4).await.unwrap(), 2);
        assert_eq!(store.delete_audit_before(cutoff, 4).await.unwrap(), 0);
        let left = store.list_audit(100).await.unwrap();
        assert_eq!(left.len(), 15);
        assert_eq!(left.last().unwrap().record.instance_id, "10");
    }
);

backend_test!(a_retried_audit_batch_is_stored_once, |store| async move {
    let records: Vec<NewAuditRecord> = (0..3)
        .map(|i| NewAuditRecord {
            time: now(),
            provider: Provider::Azure,
            instance_id: format!("vm-{i}"),
            agent_name: String::new(),
            outcome: "ok".into(),
            agent_id: None,
            remote_addr: String::new(),
            reason: None,
            count: 1,
            uid: uuid::Uuid::new_v4(),
        })
        .collect();
    store.insert_audit(&records[..2]).await.unwrap();
    // The first try committed but its answer was lost: the writer sends the batch again.
    store.insert_audit(&records).await.unwrap();
    let stored = store.list_audit(10).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].record, records[2]);
});

backend_test!(concurrent_builds_get_distinct_numbers, |store| async move {
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            create(
                &store,
                "ws",
                &build(vec![agent(&format!("a{i}"), Some("i-1"))]),
            )
            .await
            .map(|b| b.build_number)
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.push(t.await.unwrap().unwrap());
    }
    numbers.sort();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(names(&store, "i-1").await.len(), 1);
});

backend_test!(ping_answers, |store| async move {
    store.ping().await.unwrap();
});

backend_test!(
    signed_session_lookups_follow_generation_and_liveness,
    |store| async move {
        let created = create(&store, "ws", &build(vec![agent("main", Some("i-1"))]))
            .await
            .unwrap();
        let id = created.agents[0].id;
        let c = &store.candidates(AWS, "i-1").await.unwrap()[0];
        assert_eq!(c.session_generation, 0);
        let before = store.queries_total();
        let ctx = store.session_agent_by_id(id, 0).await.unwrap().unwrap();
        assert_eq!(store.queries_total() - before, 1);
        assert_eq!(ctx.agent_name, "main");
        assert!(store.session_agent_by_id(id, 1).await.unwrap().is_none());
        assert!(store.revoke_agent_sessions(id).await.unwrap());
        assert!(store.session_agent_by_id(id, 0).await.unwrap().is_none());
        assert!(store.session_agent_by_id(id, 1).await.unwrap().is_some());
        assert_eq!(
            store.candidates(AWS, "i-1").await.unwrap()[0].session_generation,
            1
        );
        create(&store, "ws", &build(vec![agent("main", Some("i-1"))]))
            .await
            .unwrap();
        assert!(
            store.session_agent_by_id(id, 1).await.unwrap().is_none(),
            "old build"
        );
    }
);

backend_test!(
    session_keys_are_created_once_rotated_and_dropped,
    |store| async move {
        let a = store.session_keys(|| vec![1; 32]).await.unwrap();
        let b = store.session_keys(|| vec![2; 32]).await.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].id, &a[0].secret), (1, &vec![1; 32]));
        assert_eq!(b, a, "the first key wins on every replica");
        assert!(
            !format!("{:?}", a[0]).contains("[1, 1"),
            "Debug hides the secret"
        );

        assert_eq!(store.rotate_session_key(vec![3; 32]).await.unwrap(), 2);
        let keys = store.session_keys(|| vec![9; 32]).await.unwrap();
        assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), [2, 1]);
        assert!(keys[0].retired_at.is_none(), "the new key signs");
        let retired = keys[1].retired_at.unwrap();

        assert_eq!(store.drop_retired_session_keys(retired).await.unwrap(), 0);
        let later = retired + Duration::seconds(1);
        assert_eq!(store.drop_retired_session_keys(later).await.unwrap(), 1);
        let keys = store.session_keys(|| vec![9; 32]).await.unwrap();
        assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), [2]);
    }
);

// `instauth rotate-session-key` may run beside replicas that rotate or write too.
backend_test!(concurrent_rotations_get_distinct_keys, |store| async move {
    store.session_keys(|| vec![1; 32]).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..6u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.rotate_session_key(vec![i + 2; 32]).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    ids.sort();
    assert_eq!(ids, [2, 3, 4, 5, 6, 7]);
    let keys = store.session_keys(|| vec![9; 32]).await.unwrap();
    let signing: Vec<i32> = keys
        .iter()
        .filter(|k| k.retired_at.is_none())
        .map(|k| k.id)
        .collect();
    assert_eq!(signing, [7], "one key signs: the newest");
});

backend_test!(
    fetched_issuing_cas_are_kept_by_url_and_replaced,
    |store| async move {
        let url = "http://www.microsoft.com/pkiops/certs/x.crt";
        assert_eq!(store.aia_certificate(url).await.unwrap(), None);
        store.put_aia_certificate(url, &[0x30, 1]).await.unwrap();
        store
            .put_aia_certificate("http://cacerts.digicert.com/y.crt", &[0x30, 3])
            .await
            .unwrap();
        assert_eq!(
            store.aia_certificate(url).await.unwrap(),
            Some(vec![0x30, 1])
        );
        // A second replica storing the same URL replaces the row, no conflict error.
        store.put_aia_certificate(url, &[0x30, 2]).await.unwrap();
        assert_eq!(
            store.aia_certificates().await.unwrap(),
            [
                (
                    "http://cacerts.digicert.com/y.crt".to_string(),
                    vec![0x30, 3]
                ),
                (url.to_string(), vec![0x30, 2]),
            ]
        );
        // Bounded input is refused before any statement.
        let long = format!("http://www.microsoft.com/{}", "a".repeat(600));
        let before = store.queries_total();
        assert!(matches!(
            store.aia_certificate(&long).await,
            Err(StoreError::Validation(_))
        ));
        assert!(matches!(
            store
                .put_aia_certificate(url, &vec![0; instauth_store::MAX_AIA_DER_LEN + 1])
                .await,
            Err(StoreError::Validation(_))
        ));
        assert_eq!(store.queries_total(), before);
    }
);

/// PostgreSQL tests never skip: an unreachable server fails them with instructions.
#[tokio::test]
#[should_panic(expected = "or point the tests at another server with INSTAUTH_TEST_POSTGRES_URL")]
async fn unreachable_postgres_fails_the_test_with_instructions() {
    instauth_store::testing::TestDb::postgres_at("postgres://postgres@127.0.0.1:1/postgres").await;
}

/// The one candidate of `name` on `iid`.
async fn candidate(store: &Store, iid: &str, name: &str) -> instauth_store::Candidate {
    let mut c = candidates_named(store, iid, name).await;
    assert_eq!(c.len(), 1, "{name} on {iid}");
    c.remove(0)
}

backend_test!(
    candidates_carry_key_requirement_and_expectation,
    |store| async move {
        let mut b = build(vec![
            AgentSpec {
                require_agent_key: true,
                ..agent("main", Some("i-1"))
            },
            agent("dev", Some("i-1")),
        ]);
        b.resources[0].expect =
            serde_json::from_value(serde_json::json!({"account_id": "123456789012"})).unwrap();
        create(&store, "ws", &b).await.unwrap();
        let before = store.queries_total();
        let main = candidate(&store, "i-1", "main").await;
        assert_eq!(store.queries_total() - before, 1, "still one statement");
        assert!(main.require_agent_key);
        assert_eq!(main.agent_public_key, None);
        let expected = instauth_store::ResourceExpect {
            provider: Provider::Aws,
            account: Some("123456789012".into()),
            location: None,
        };
        assert_eq!(main.expect(), Some(("vm", expected.clone())));
        let dev = candidate(&store, "i-1", "dev").await;
        assert!(!dev.require_agent_key);
        // Every agent of the resource carries its expectation.
        assert_eq!(dev.expect(), Some(("vm", expected)));
        let ws = store.get_workspace("ws").await.unwrap().unwrap();
        let expect = ws.resources[0].expect.as_ref().unwrap();
        assert_eq!(expect.claims(), [("account_id", "123456789012")]);
        assert!(ws
            .agents
            .iter()
            .any(|a| a.name == "main" && a.require_agent_key));
        assert!(ws.agents.iter().all(|a| a.agent_key.is_none()));
    }
);

backend_test!(
    first_binder_wins_and_reset_starts_over,
    |store| async move {
        let created = create(
            &store,
            "ws",
            &build(vec![agent("main", Some("i-1")), agent("dev", Some("i-1"))]),
        )
        .await
        .unwrap();
        let main_id = created.agents[0].id;
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let before = store.queries_total();
        assert_eq!(
            store.bind_agent_key(main_id, &k1).await.unwrap(),
            Some(k1.to_vec())
        );
        assert_eq!(
            store.queries_total() - before,
            1,
            "binding is one statement"
        );
        // A second binder keeps the first key and learns it.
        assert_eq!(
            store.bind_agent_key(main_id, &k2).await.unwrap(),
            Some(k1.to_vec())
        );
        assert_eq!(
            store.bind_agent_key(main_id, &k1).await.unwrap(),
            Some(k1.to_vec())
        );
        let c = candidate(&store, "i-1", "main").await;
        assert_eq!(c.agent_public_key, Some(k1.to_vec()));
        assert_eq!(candidate(&store, "i-1", "dev").await.agent_public_key, None);
        let ws = store.get_workspace("ws").await.unwrap().unwrap();
        let main = ws.agents.iter().find(|a| a.name == "main").unwrap();
        let bound = main.agent_key.as_ref().unwrap();
        assert_eq!(bound.public_key, k1);
        assert!(bound.bound_at <= now());
        let generation = c.session_generation;

        // Reset: unbound again, sessions ended, and the next binder wins.
        assert!(store.reset_agent_key("ws", "main").await.unwrap());
        let c = candidate(&store, "i-1", "main").await;
        assert_eq!(c.agent_public_key, None);
        assert_eq!(c.session_generation, generation + 1);
        assert!(store
            .get_workspace("ws")
            .await
            .unwrap()
            .unwrap()
            .agents
            .iter()
            .all(|a| a.agent_key.is_none()));
        assert_eq!(
            store.bind_agent_key(main_id, &k2).await.unwrap(),
            Some(k2.to_vec())
        );
        assert!(!store.reset_agent_key("ws", "ghost").await.unwrap());
        assert!(!store.reset_agent_key("nope", "main").await.unwrap());

        // A new build starts unbound; resetting names the latest build's agent.
        create(&store, "ws", &build(vec![agent("main", Some("i-1"))]))
            .await
            .unwrap();
        assert_eq!(
            candidate(&store, "i-1", "main").await.agent_public_key,
            None
        );
        assert!(store.reset_agent_key("ws", "main").await.unwrap());
        // The old build's agent keeps its (now useless) binding untouched.
        assert_eq!(
            store.bind_agent_key(main_id, &k1).await.unwrap(),
            Some(k2.to_vec())
        );
        // A deleted agent cannot be bound.
        store.delete_workspace("ws").await.unwrap();
        assert_eq!(store.bind_agent_key(main_id, &k1).await.unwrap(), None);
        assert!(!store.reset_agent_key("ws", "main").await.unwrap());
    }
);

backend_test!(concurrent_binders_end_with_one_key, |store| async move {
    for round in 0..5u8 {
        let ws = format!("race-{round}");
        let created = create(&store, &ws, &build(vec![agent("main", Some(&ws))]))
            .await
            .unwrap();
        let id = created.agents[0].id;
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = [i + 1; 32];
                    (key, store.bind_agent_key(id, &key).await.unwrap().unwrap())
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut bound = Vec::new();
        for t in tasks {
            let (mine, now_bound) = t.await.unwrap();
            if now_bound == mine {
                winners.push(mine);
            }
            bound.push(now_bound);
        }
        assert_eq!(winners.len(), 1, "exactly one binder wins: {bound:?}");
        assert!(
            bound.iter().all(|k| *k == winners[0].to_vec()),
            "all see the winner's key"
        );
        assert_eq!(
            candidate(&store, &ws, "main").await.agent_public_key,
            Some(winners[0].to_vec())
        );
    }
});
