//! With 100k agents seeded, the candidate query (alone and batched) stays index-driven on both
//! backends.
#![allow(clippy::unwrap_used)]

use instauth_store::{backend_test, validate_build, AgentAuth, ValidBuild};
use instauth_types::{AgentSpec, BuildRequest, ResourceSpec, Wire};

const WORKSPACES: usize = 100;
const AGENTS_PER_BUILD: usize = 500; // two builds each: 100 * 2 * 500 = 100k agents

fn seeded_build(ws: usize) -> ValidBuild {
    let build = BuildRequest {
        resources: vec![ResourceSpec {
            name: "vm".into(),
            resource_type: "aws_instance".into(),
            agents: (0..AGENTS_PER_BUILD)
                .map(|n| AgentSpec {
                    name: format!("a{n}"),
                    auth: Wire::Known(AgentAuth::AwsInstanceIdentity),
                    // Two root agents per instance; the same IDs in both builds.
                    instance_id: Some(format!("i-{ws}-{}", n / 2)),
                    parent: None,
                    require_agent_key: false,
                })
                .collect(),
            expect: None,
        }],
    };
    validate_build(&format!("ws{ws}"), build).unwrap()
}

backend_test!(
    candidate_query_is_index_driven_with_100k_agents,
    |store| async move {
        for ws in 0..WORKSPACES {
            for _build in 0..2 {
                store.create_build(&seeded_build(ws)).await.unwrap();
            }
        }
        let listed = store.list_workspaces().await.unwrap();
        assert_eq!(listed.len(), WORKSPACES);
        assert_eq!(listed[0].build_number, 2);

        let id = "i-42-7";
        let c = store
            .candidates(AgentAuth::AwsInstanceIdentity, id)
            .await
            .unwrap();
        let names: Vec<_> = c.iter().map(|c| c.agent_name.as_str()).collect();
        assert_eq!(names, vec!["a14", "a15"], "only the latest build's agents");

        // As autovacuum leaves a live database: with planner statistics.
        store.vacuum_analyze().await.unwrap();
        let single = store
            .explain_candidates(AgentAuth::AwsInstanceIdentity, id)
            .await
            .unwrap();
        let batch = store
            .explain_candidate_batch(&[id, "i-7-42", "i-99-0"])
            .await
            .unwrap();
        for (what, plan) in [("single", single), ("batch", batch)] {
            println!(
                "candidate query plan, {what} ({:?}):\n{plan}",
                store.config().describe()
            );
            assert!(
                plan.contains("workspace_agents_instance"),
                "{what}: index not used:\n{plan}"
            );
            // PostgreSQL says "Seq Scan", SQLite "SCAN <table>" (vs "SEARCH") for a full scan.
            // A hundred workspaces analysed may be hashed whole; agents never.
            assert!(
                !plan.contains("Seq Scan on workspace_agents"),
                "{what}: sequential scan of workspace_agents:\n{plan}"
            );
            // A resource's expectation is on its agents' rows: the lookup touches no resource
            // page (half its cold pages at a million agents, docs/BENCHMARKS.md).
            assert!(
                !plan.contains("workspace_resources"),
                "{what}: reads workspace_resources:\n{plan}"
            );
            assert!(
                !plan.lines().any(|l| l.trim_start().starts_with("SCAN")),
                "{what}: table scan:\n{plan}"
            );
        }
    }
);
