//! Validation of names and builds against the data model's rules (SPEC.md §1).

use std::collections::{HashMap, HashSet};

use crate::model::{AgentAuth, FieldError, NewBuild};

/// Longest accepted instance ID; real ones are far shorter (AWS 19, Azure 36, GCP 20 bytes).
pub const MAX_INSTANCE_ID_LEN: usize = 128;
/// Longest accepted resource name or type.
pub const MAX_RESOURCE_FIELD_LEN: usize = 128;
/// Most resources in one build.
pub const MAX_RESOURCES: usize = 1000;
/// Most agents in one build.
pub const MAX_AGENTS: usize = 10_000;

/// True if `name` is a valid workspace name: `[a-z0-9][a-z0-9-]{0,63}`.
pub fn is_valid_workspace_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.len() <= 63
                && rest
                    .iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        }
        None => false,
    }
}

/// True if `name` is a valid agent name: `[a-zA-Z0-9_-]{1,64}`.
pub fn is_valid_agent_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

fn problem(out: &mut Vec<FieldError>, field: String, detail: impl Into<String>) {
    out.push(FieldError {
        field,
        detail: detail.into(),
    });
}

/// Checks a workspace name and a build; returns every problem found, not just the first.
pub fn validate_build(workspace: &str, build: &NewBuild) -> Result<(), Vec<FieldError>> {
    let mut out = Vec::new();
    if !is_valid_workspace_name(workspace) {
        problem(
            &mut out,
            "workspace".into(),
            "must match [a-z0-9][a-z0-9-]{0,63}",
        );
    }
    if build.resources.len() > MAX_RESOURCES {
        problem(
            &mut out,
            "resources".into(),
            format!("at most {MAX_RESOURCES} resources"),
        );
    }
    let total_agents: usize = build.resources.iter().map(|r| r.agents.len()).sum();
    if total_agents > MAX_AGENTS {
        problem(
            &mut out,
            "resources".into(),
            format!("at most {MAX_AGENTS} agents in a build"),
        );
    }
    if !out.is_empty() {
        return Err(out);
    }

    let mut resource_names = HashSet::new();
    // agent name -> (field path, parent name)
    let mut agents: HashMap<&str, (String, Option<&str>)> = HashMap::new();
    for (ri, r) in build.resources.iter().enumerate() {
        let rf = format!("resources[{ri}]");
        if r.name.is_empty() || r.name.len() > MAX_RESOURCE_FIELD_LEN {
            problem(
                &mut out,
                format!("{rf}.name"),
                format!("must be 1 to {MAX_RESOURCE_FIELD_LEN} bytes"),
            );
        } else if !resource_names.insert(r.name.as_str()) {
            problem(
                &mut out,
                format!("{rf}.name"),
                format!("duplicate resource name {:?}", r.name),
            );
        }
        if r.resource_type.is_empty() || r.resource_type.len() > MAX_RESOURCE_FIELD_LEN {
            problem(
                &mut out,
                format!("{rf}.type"),
                format!("must be 1 to {MAX_RESOURCE_FIELD_LEN} bytes"),
            );
        }
        for (ai, a) in r.agents.iter().enumerate() {
            let af = format!("{rf}.agents[{ai}]");
            if !is_valid_agent_name(&a.name) {
                problem(
                    &mut out,
                    format!("{af}.name"),
                    "must match [a-zA-Z0-9_-]{1,64}",
                );
            } else if agents
                .insert(&a.name, (af.clone(), a.parent.as_deref()))
                .is_some()
            {
                problem(
                    &mut out,
                    format!("{af}.name"),
                    format!("duplicate agent name {:?}", a.name),
                );
            }
            match AgentAuth::parse(&a.auth) {
                None => problem(
                    &mut out,
                    format!("{af}.auth"),
                    "must be one of token, aws-instance-identity, azure-instance-identity, google-instance-identity",
                ),
                Some(auth) if auth.is_instance_identity() => match a.instance_id.as_deref() {
                    None | Some("") => problem(
                        &mut out,
                        format!("{af}.instance_id"),
                        format!("required for auth {}", auth.as_str()),
                    ),
                    Some(id) if id.len() > MAX_INSTANCE_ID_LEN || id.trim() != id => problem(
                        &mut out,
                        format!("{af}.instance_id"),
                        format!("must be 1 to {MAX_INSTANCE_ID_LEN} bytes without surrounding white space"),
                    ),
                    // Sub-agents may carry their parent's instance ID; the candidate query
                    // excludes them, so they can never authenticate with it.
                    Some(_) => {}
                },
                Some(_) => {
                    if a.instance_id.as_deref().is_some_and(|s| !s.is_empty()) {
                        problem(
                            &mut out,
                            format!("{af}.instance_id"),
                            "only allowed with instance identity auth",
                        );
                    }
                }
            }
        }
    }
    // Parents: must exist in the build, and following parents must end at a root agent.
    for (name, (field, parent)) in &agents {
        let Some(first) = parent else { continue };
        if first == name {
            problem(
                &mut out,
                format!("{field}.parent"),
                "an agent cannot be its own parent",
            );
            continue;
        }
        let mut seen = HashSet::from([*name]);
        let mut cur = *first;
        loop {
            match agents.get(cur) {
                None => {
                    problem(
                        &mut out,
                        format!("{field}.parent"),
                        format!("unknown parent agent {cur:?}"),
                    );
                    break;
                }
                Some((_, None)) => break,
                Some((_, Some(next))) => {
                    if !seen.insert(cur) {
                        problem(
                            &mut out,
                            format!("{field}.parent"),
                            "parent chain forms a cycle",
                        );
                        break;
                    }
                    cur = next;
                }
            }
        }
    }
    out.sort_by(|a, b| a.field.cmp(&b.field));
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NewAgent, NewResource};

    fn agent(name: &str, auth: &str, iid: Option<&str>, parent: Option<&str>) -> NewAgent {
        NewAgent {
            name: name.into(),
            auth: auth.into(),
            instance_id: iid.map(Into::into),
            parent: parent.map(Into::into),
            token_hash: None,
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
        let build = NewBuild {
            resources: vec![NewResource {
                name: "vm".into(),
                resource_type: "aws_instance".into(),
                agents: vec![
                    agent("main", "aws-instance-identity", Some("i-1"), None),
                    agent("main", "token", None, None),
                    agent("dev", "aws-instance-identity", None, None),
                    agent("sub", "token", None, Some("ghost")),
                    agent("bad name", "nope", None, None),
                    agent("loop1", "token", None, Some("loop2")),
                    agent("loop2", "token", None, Some("loop1")),
                ],
            }],
        };
        let errs = validate_build("ws", &build).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"resources[0].agents[1].name"), "{errs:?}");
        assert!(fields.contains(&"resources[0].agents[2].instance_id"));
        assert!(fields.contains(&"resources[0].agents[3].parent"));
        assert!(fields.contains(&"resources[0].agents[4].name"));
        assert!(fields.contains(&"resources[0].agents[4].auth"));
        assert!(fields.contains(&"resources[0].agents[5].parent"));
    }

    #[test]
    fn accepts_sub_agents_and_shared_instances() {
        let build = NewBuild {
            resources: vec![NewResource {
                name: "vm".into(),
                resource_type: "aws_instance".into(),
                agents: vec![
                    agent("main", "aws-instance-identity", Some("i-1"), None),
                    agent("dev", "aws-instance-identity", Some("i-1"), None),
                    agent("child", "token", None, Some("main")),
                ],
            }],
        };
        assert_eq!(validate_build("ws", &build), Ok(()));
    }
}
