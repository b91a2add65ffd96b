//! Terraform state import, table-driven over the fixtures in `tests/fixtures/` (written from
//! Terraform's "JSON Output Format" documentation and the Coder provider's resource schemas; see
//! `tests/fixtures/README.md`).
#![allow(clippy::unwrap_used)]

use instauth_client::terraform::{build_request, ImportError, MAX_STATE_BYTES};
use instauth_types::BuildRequest;
use serde_json::{json, Value};

/// The `token` every `coder_agent` of the fixtures carries, as real states do.
const STATE_SECRET: &str = "5d1e2f3a-tf-state-secret-token-0000";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn aws(name: &str, iid: &str) -> Value {
    json!({"name": name, "auth": "aws-instance-identity", "instance_id": iid})
}

fn gcp(name: &str, iid: &str) -> Value {
    json!({"name": name, "auth": "google-instance-identity", "instance_id": iid})
}

enum Expect {
    /// The build body, as JSON.
    Build(Value),
    /// Exactly these problems: (address, a fragment of the detail), in sorted order.
    Problems(&'static [(&'static str, &'static str)]),
}

fn cases() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    vec![
        (
            "aws-multi-agent.json",
            Build(json!({"resources": [
                {"name": "dev", "type": "aws_instance", "agents": [
                    aws("dev", "i-076e9b91f7c420782"),
                    aws("main", "i-076e9b91f7c420782"),
                ]},
            ]})),
        ),
        (
            "gcp-vm.json",
            Build(json!({"resources": [
                {"name": "dev", "type": "google_compute_instance", "agents": [
                    gcp("dev", "8219342453839285342"),
                    gcp("main", "8219342453839285342"),
                ]},
            ]})),
        ),
        (
            "azure-vm.json",
            Build(json!({"resources": [
                {"name": "main", "type": "azurerm_linux_virtual_machine", "agents": [
                    {"name": "main", "auth": "azure-instance-identity",
                     "instance_id": "02aab8a4-74ef-476e-8182-f6d2ba4166a6"},
                ]},
            ]})),
        ),
        (
            // Two instances of one `count` share a name, so both are named by address; the
            // spot request is found through its spot_instance_id; the token agent without a
            // link, with two compute resources to choose from, gets a resource of its own.
            "agent-instance-link.json",
            Build(json!({"resources": [
                {"name": "aws_instance.vm[0]", "type": "aws_instance",
                 "agents": [aws("main", "i-0123456789abcdef0")]},
                {"name": "aws_instance.vm[1]", "type": "aws_instance",
                 "agents": [aws("worker", "i-0fedcba9876543210")]},
                {"name": "coder_agent.ci", "type": "coder_agent",
                 "agents": [{"name": "ci", "auth": "token"}]},
                {"name": "gpu", "type": "aws_spot_instance_request",
                 "agents": [aws("gpu", "i-0aa1bb2cc3dd4ee5f")]},
            ]})),
        ),
        (
            // The VM two modules deep is the only compute resource: the root's agent and the
            // module's agent sit on it; the dev container (another module) is main's sub-agent.
            "modules.json",
            Build(json!({"resources": [
                {"name": "this", "type": "google_compute_instance", "agents": [
                    gcp("main", "4471186352931873281"),
                    gcp("tools", "4471186352931873281"),
                    {"name": "project", "auth": "token", "parent": "main"},
                ]},
            ]})),
        ),
        (
            "token-container.json",
            Build(json!({"resources": [
                {"name": "coder_agent.main", "type": "coder_agent",
                 "agents": [{"name": "main", "auth": "token"}]},
            ]})),
        ),
        (
            "broken-no-compute.json",
            Problems(&[(
                "coder_agent.main",
                "auth aws-instance-identity needs an instance, but the state holds no compute resource",
            )]),
        ),
        (
            "broken-two-compute.json",
            Problems(&[(
                "coder_agent.main",
                "the state holds 2 compute resources (aws_instance.db, aws_instance.dev) and no \
                 coder_agent_instance links this agent to one",
            )]),
        ),
        (
            "broken-many.json",
            Problems(&[
                ("aws_instance.dev", "`id` is missing: the instance ID of aws_instance is read from it"),
                ("coder_agent.ai", "auth \"oidc\" is not one of token,"),
                ("coder_agent.dev[1]", "duplicate agent name \"dev\" (also coder_agent.dev[0])"),
                ("coder_agent.gcp", "auth google-instance-identity cannot be proved by aws_instance.dev, which runs on AWS"),
                ("coder_agent.main", "duplicate agent name \"main\" (also coder_agent.Main)"),
                ("coder_agent_instance.orphan", "agent_id matches no coder_agent in the state"),
                ("coder_devcontainer.lost", "agent_id matches no coder_agent in the state"),
            ]),
        ),
        (
            "broken-plan.json",
            Problems(&[("", "this is a plan; after `terraform apply`, import the state")]),
        ),
        (
            "broken-raw-tfstate.json",
            Problems(&[("", "this is a raw state file (terraform.tfstate)")]),
        ),
        (
            "broken-format-version.json",
            Problems(&[("format_version", "\"2.0\" is not supported: this import reads 1.x")]),
        ),
        (
            "broken-empty-state.json",
            Problems(&[("", "the state holds no resources: run `terraform apply` first")]),
        ),
    ]
}

#[test]
fn every_fixture_imports_as_expected() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    on_disk.sort();
    let mut tested: Vec<String> = cases().iter().map(|(n, _)| n.to_string()).collect();
    tested.sort();
    assert_eq!(
        on_disk, tested,
        "every fixture has a case and every case a fixture"
    );

    for (name, expect) in cases() {
        let got = build_request(&fixture(name));
        match (expect, got) {
            (Expect::Build(want), Ok(build)) => {
                let want: BuildRequest = serde_json::from_value(want).unwrap();
                assert_eq!(build, want, "{name}");
            }
            (Expect::Problems(want), Err(ImportError::Problems(problems))) => {
                let got: Vec<(String, String)> = problems
                    .iter()
                    .map(|p| (p.address.clone(), p.detail.clone()))
                    .collect();
                assert_eq!(got.len(), want.len(), "{name}: {got:#?}");
                for ((address, detail), (want_address, want_detail)) in got.iter().zip(want) {
                    assert_eq!(address, want_address, "{name}: {got:#?}");
                    assert!(
                        detail.contains(want_detail),
                        "{name}: {detail:?} lacks {want_detail:?}"
                    );
                }
                // The message lists every problem, and never the secrets the state holds.
                let message = ImportError::Problems(problems.clone()).to_string();
                assert_eq!(message.lines().count(), problems.len() + 1, "{message}");
                assert!(!message.contains(STATE_SECRET), "{message}");
            }
            (_, got) => panic!("{name}: unexpected {got:?}"),
        }
    }
}

#[test]
fn imported_builds_never_carry_state_secrets() {
    for (name, expect) in cases() {
        if let Expect::Build(_) = expect {
            let build = build_request(&fixture(name)).unwrap();
            let text = serde_json::to_string(&build).unwrap();
            assert!(!text.contains(STATE_SECRET), "{name}");
        }
    }
}

#[test]
fn malformed_documents_are_reported_without_content() {
    let err = build_request(b"{\"format_version\": \"1.0\", \"values\": {").unwrap_err();
    assert!(matches!(err, ImportError::Json(_)), "{err:?}");
    assert!(err.to_string().contains("line 1"), "{err}");

    let err = build_request(b"[1, 2]").unwrap_err();
    assert!(err.to_string().contains("expected a JSON object"), "{err}");

    // Resources missing their address or mode, and modules of the wrong shape, are named by
    // their JSON path; a value of the wrong type is described, not quoted.
    let doc = json!({"format_version": "1.0", "values": {"root_module": {
        "resources": [
            {"mode": "managed", "type": "coder_agent", "name": "x", "values": {}},
            {"address": "coder_agent.y", "mode": "managed", "type": "coder_agent", "name": "y",
             "values": {"auth": {"secret": STATE_SECRET}}},
        ],
        "child_modules": [{"address": "module.m", "resources": "nope"}],
    }}});
    let err = build_request(doc.to_string().as_bytes()).unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(STATE_SECRET), "{text}");
    let ImportError::Problems(problems) = err else {
        panic!("{text}")
    };
    let got: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "coder_agent.y: `auth` is not a string",
            "module.m.resources: expected an array",
            "values.root_module.resources[0]: a resource without `address`",
        ]
    );
}

#[test]
fn oversized_states_are_refused_before_parsing() {
    let big = vec![b' '; MAX_STATE_BYTES + 1];
    assert!(matches!(build_request(&big), Err(ImportError::TooLarge)));
}

#[test]
fn deeply_nested_modules_are_an_error_not_a_crash() {
    // serde_json stops at 128 levels; the importer's recursion never sees deeper documents.
    let mut doc = String::from(r#"{"format_version":"1.0","values":{"root_module":"#);
    for _ in 0..200 {
        doc.push_str(r#"{"child_modules":["#);
    }
    doc.push_str("{}");
    for _ in 0..200 {
        doc.push_str("]}");
    }
    doc.push_str("}}");
    assert!(matches!(
        build_request(doc.as_bytes()),
        Err(ImportError::Json(_))
    ));
}
