use std::collections::BTreeMap;

use super::*;
use instauth_types::{AgentSpec, ResourceSpec, Wire};

fn agent(name: &str, auth: &str, iid: Option<&str>, parent: Option<&str>) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        auth: match auth.parse::<AgentAuth>() {
            Ok(a) => Wire::Known(a),
            Err(_) => Wire::Unknown(auth.into()),
        },
        instance_id: iid.map(Into::into),
        parent: parent.map(Into::into),
        require_agent_key: false,
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

#[test]
fn names() {
    assert!(is_valid_workspace_name("dev-1"));
    assert!(!is_valid_workspace_name("-dev"));
    assert!(!is_valid_workspace_name("Dev"));
    assert!(!is_valid_workspace_name(""));
    assert!(is_valid_workspace_name(&"a".repeat(64)));
    assert!(!is_valid_workspace_name(&"a".repeat(65)));
    assert!(is_valid_agent_name("Main_1-x"));
    assert!(!is_valid_agent_name("main agent"));
    assert!(!is_valid_agent_name(&"a".repeat(65)));
}

#[test]
fn reports_every_problem() {
    let b = build(vec![
        agent("main", "aws-instance-identity", Some("i-1"), None),
        agent("main", "token", None, None),
        agent("dev", "aws-instance-identity", None, None),
        agent("sub", "token", None, Some("ghost")),
        agent("bad name", "nope", None, None),
        agent("loop1", "token", None, Some("loop2")),
        agent("loop2", "token", None, Some("loop1")),
        agent("tok", "token", Some("i-9"), None),
    ]);
    let errs = validate_build("ws", b).unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "resources[0].agents[1].name",
            "resources[0].agents[2].instance_id",
            "resources[0].agents[3].parent",
            "resources[0].agents[4].auth",
            "resources[0].agents[4].name",
            "resources[0].agents[5].parent",
            "resources[0].agents[6].parent",
            "resources[0].agents[7].instance_id",
        ],
        "{errs:?}"
    );
}

#[test]
fn orders_parents_before_sub_agents() {
    let b = build(vec![
        agent("grandchild", "token", None, Some("child")),
        agent("child", "token", None, Some("main")),
        agent("main", "aws-instance-identity", Some("i-1"), None),
        agent("dev", "aws-instance-identity", Some("i-1"), None),
    ]);
    let v = validate_build("ws", b).unwrap();
    let order: Vec<&str> = v.insert_order.iter().map(|&i| v.agents[i].name()).collect();
    assert_eq!(order, ["main", "dev", "child", "grandchild"]);
    assert_eq!(v.agents[0].parent, Some(1));
    assert_eq!(v.agents[1].parent, Some(2));
    assert_eq!(v.agents[2].parent, None);
    assert_eq!(v.workspace(), "ws");
}

fn expect(json: serde_json::Value) -> Option<BTreeMap<String, serde_json::Value>> {
    serde_json::from_value(json).unwrap()
}

#[test]
fn expectations_name_the_agents_cloud() {
    let mut b = build(vec![agent(
        "main",
        "aws-instance-identity",
        Some("i-1"),
        None,
    )]);
    b.resources[0].expect = expect(serde_json::json!({"account_id": "123", "region": "us-east-1"}));
    let v = validate_build("ws", b.clone()).unwrap();
    assert_eq!(
        v.resources[0].expect,
        Some(ResourceExpect {
            provider: Provider::Aws,
            account: Some("123".into()),
            location: Some("us-east-1".into()),
        })
    );
    b.resources[0].expect = expect(serde_json::json!({}));
    assert_eq!(
        validate_build("ws", b.clone()).unwrap().resources[0].expect,
        None
    );

    b.resources[0].expect = expect(serde_json::json!({
        "project_id": "p", "account_id": 123, "region": " us-east-1"
    }));
    let errs = validate_build("ws", b.clone()).unwrap_err();
    let got: Vec<(&str, &str)> = errs
        .iter()
        .map(|e| (e.field.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "resources[0].expect.account_id",
                "must be a string of 1 to 128 bytes without surrounding white space"
            ),
            (
                "resources[0].expect.project_id",
                "unknown key for aws agents: expected account_id or region"
            ),
            (
                "resources[0].expect.region",
                "must be a string of 1 to 128 bytes without surrounding white space"
            ),
        ]
    );

    let mut mixed = build(vec![
        agent("main", "aws-instance-identity", Some("i-1"), None),
        agent("gce", "google-instance-identity", Some("42"), None),
        agent("tok", "token", None, None),
    ]);
    mixed.resources[0].expect = expect(serde_json::json!({"zone": "z"}));
    let errs = validate_build("ws", mixed).unwrap_err();
    assert_eq!(errs[0].field, "resources[0].expect");
    assert!(
        errs[0].detail.contains("several clouds (aws, gcp)"),
        "{errs:?}"
    );

    let mut tokens = build(vec![agent("tok", "token", None, None)]);
    tokens.resources[0].expect = expect(serde_json::json!({"zone": "z"}));
    let errs = validate_build("ws", tokens).unwrap_err();
    assert_eq!(errs[0].field, "resources[0].expect");
}

#[test]
fn only_instance_identity_root_agents_require_keys() {
    let mut main = agent("main", "azure-instance-identity", Some("vm"), None);
    main.require_agent_key = true;
    let mut child = agent("child", "token", None, Some("main"));
    child.require_agent_key = true;
    let mut tok = agent("tok", "token", None, None);
    tok.require_agent_key = true;
    let errs = validate_build("ws", build(vec![main.clone(), child, tok])).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "resources[0].agents[1].require_agent_key",
            "resources[0].agents[2].require_agent_key"
        ]
    );
    let v = validate_build("ws", build(vec![main])).unwrap();
    assert!(v.agents[0].require_agent_key);
}
