//! Validation of names and builds against the data model's rules (SPEC.md §1).

use std::collections::{HashMap, HashSet};

use instauth_types::{AgentAuth, BuildRequest, Provider};

use crate::model::{FieldError, ResourceExpect};

/// Longest accepted instance ID; real ones are far shorter (AWS 19, Azure 36, GCP 20 bytes).
pub const MAX_INSTANCE_ID_LEN: usize = 128;
/// Longest accepted resource name or type.
pub const MAX_RESOURCE_FIELD_LEN: usize = 128;
/// Longest accepted `expect` value; real account IDs, regions and zones are far shorter.
pub const MAX_EXPECT_VALUE_LEN: usize = 128;
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

/// True if `s` holds a control character (NUL, newline, ESC, ...). PostgreSQL cannot store NUL
/// in text, and none belongs in a name or an ID: refused the same way on both backends.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn problem(out: &mut Vec<FieldError>, field: String, detail: impl Into<String>) {
    out.push(FieldError {
        field,
        detail: detail.into(),
    });
}

/// A build that passed [`validate_build`]: the only way to make one, and the only input
/// [`crate::Store::create_build`] takes, so the store never meets an unknown auth method, a
/// dangling parent or a cycle.
#[derive(Debug, Clone)]
pub struct ValidBuild {
    workspace: String,
    pub(crate) resources: Vec<ValidResource>,
    /// In request order.
    pub(crate) agents: Vec<ValidAgent>,
    /// Indexes into `agents`, parents before their sub-agents.
    pub(crate) insert_order: Vec<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct ValidResource {
    pub(crate) name: String,
    pub(crate) resource_type: String,
    pub(crate) expect: Option<ResourceExpect>,
}

/// An agent of a [`ValidBuild`].
#[derive(Debug, Clone)]
pub struct ValidAgent {
    pub(crate) resource: usize,
    pub(crate) name: String,
    pub(crate) auth: AgentAuth,
    pub(crate) instance_id: Option<String>,
    /// Index of the parent in the build's agents.
    pub(crate) parent: Option<usize>,
    pub(crate) token_hash: Option<Vec<u8>>,
    pub(crate) require_agent_key: bool,
}

impl ValidAgent {
    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its authentication method.
    pub fn auth(&self) -> AgentAuth {
        self.auth
    }

    /// Sets the hash of its static agent token (never the token).
    pub fn set_token_hash(&mut self, hash: Vec<u8>) {
        self.token_hash = Some(hash);
    }
}

impl ValidBuild {
    /// The workspace the build is for.
    pub fn workspace(&self) -> &str {
        &self.workspace
    }

    /// The agents, in request order.
    pub fn agents(&self) -> &[ValidAgent] {
        &self.agents
    }

    /// The agents, in request order, to attach token hashes.
    pub fn agents_mut(&mut self) -> &mut [ValidAgent] {
        &mut self.agents
    }
}

/// Checks a workspace name and a build; returns every problem found, not just the first.
pub fn validate_build(workspace: &str, build: BuildRequest) -> Result<ValidBuild, Vec<FieldError>> {
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
    let mut resources = Vec::with_capacity(build.resources.len());
    let mut agents: Vec<ValidAgent> = Vec::with_capacity(total_agents);
    // Per agent, in request order: its field path and its parent's name.
    let mut fields: Vec<(String, Option<String>)> = Vec::with_capacity(total_agents);
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (ri, r) in build.resources.into_iter().enumerate() {
        let rf = format!("resources[{ri}]");
        if has_control(&r.name) {
            problem(
                &mut out,
                format!("{rf}.name"),
                "must not contain control characters",
            );
        } else if r.name.trim().is_empty() || r.name.len() > MAX_RESOURCE_FIELD_LEN {
            problem(
                &mut out,
                format!("{rf}.name"),
                format!("must be 1 to {MAX_RESOURCE_FIELD_LEN} bytes, not blank"),
            );
        } else if !resource_names.insert(r.name.clone()) {
            problem(
                &mut out,
                format!("{rf}.name"),
                format!("duplicate resource name {:?}", r.name),
            );
        }
        if has_control(&r.resource_type) {
            problem(
                &mut out,
                format!("{rf}.type"),
                "must not contain control characters",
            );
        } else if r.resource_type.trim().is_empty()
            || r.resource_type.len() > MAX_RESOURCE_FIELD_LEN
        {
            problem(
                &mut out,
                format!("{rf}.type"),
                format!("must be 1 to {MAX_RESOURCE_FIELD_LEN} bytes, not blank"),
            );
        }
        // The clouds of the resource's root agents: what its `expect` may name.
        let mut clouds: Vec<Provider> = Vec::new();
        for (ai, a) in r.agents.into_iter().enumerate() {
            let af = format!("{rf}.agents[{ai}]");
            if !is_valid_agent_name(&a.name) {
                problem(
                    &mut out,
                    format!("{af}.name"),
                    "must match [a-zA-Z0-9_-]{1,64}",
                );
            } else if by_name.insert(a.name.clone(), agents.len()).is_some() {
                problem(
                    &mut out,
                    format!("{af}.name"),
                    format!("duplicate agent name {:?}", a.name),
                );
            }
            let instance_id = a.instance_id.filter(|s| !s.is_empty());
            let auth = match a.auth.known() {
                None => {
                    problem(
                        &mut out,
                        format!("{af}.auth"),
                        format!("must be one of {}", AgentAuth::NAMES.join(", ")),
                    );
                    AgentAuth::Token
                }
                Some(auth) => auth,
            };
            match (auth.is_instance_identity(), instance_id.as_deref()) {
                (true, None) if a.auth.known().is_some() => problem(
                    &mut out,
                    format!("{af}.instance_id"),
                    format!("required for auth {auth}"),
                ),
                (_, Some(id)) if has_control(id) => problem(
                    &mut out,
                    format!("{af}.instance_id"),
                    "must not contain control characters",
                ),
                (true, Some(id)) if id.len() > MAX_INSTANCE_ID_LEN || id.trim() != id => problem(
                    &mut out,
                    format!("{af}.instance_id"),
                    format!(
                        "must be 1 to {MAX_INSTANCE_ID_LEN} bytes without surrounding white space"
                    ),
                ),
                // Sub-agents may carry their parent's instance ID; the candidate query
                // excludes them, so they can never authenticate with it.
                (false, Some(_)) if a.auth.known().is_some() => problem(
                    &mut out,
                    format!("{af}.instance_id"),
                    "only allowed with instance identity auth",
                ),
                _ => {}
            }
            // Only a root agent that exchanges a cloud proof ever presents an agent key.
            if a.require_agent_key && (!auth.is_instance_identity() || a.parent.is_some()) {
                problem(
                    &mut out,
                    format!("{af}.require_agent_key"),
                    "only for root agents with instance identity auth",
                );
            }
            if a.parent.is_none() {
                clouds.extend(auth.provider());
            }
            fields.push((af, a.parent));
            agents.push(ValidAgent {
                resource: ri,
                name: a.name,
                auth,
                instance_id,
                parent: None,
                token_hash: None,
                require_agent_key: a.require_agent_key,
            });
        }
        let expect = r
            .expect
            .and_then(|e| validate_expect(&mut out, &rf, e, &clouds));
        resources.push(ValidResource {
            name: r.name,
            resource_type: r.resource_type,
            expect,
        });
    }
    // Parents: must exist in the build, and following parents must end at a root agent.
    for (i, (field, parent)) in fields.iter().enumerate() {
        let Some(first) = parent.as_deref() else {
            continue;
        };
        if first == agents[i].name {
            problem(
                &mut out,
                format!("{field}.parent"),
                "an agent cannot be its own parent",
            );
            continue;
        }
        let mut seen = HashSet::from([i]);
        let mut cur = first;
        loop {
            match by_name.get(cur) {
                None => {
                    problem(
                        &mut out,
                        format!("{field}.parent"),
                        format!("unknown parent agent {cur:?}"),
                    );
                    break;
                }
                Some(&j) => {
                    if !seen.insert(j) {
                        problem(
                            &mut out,
                            format!("{field}.parent"),
                            "parent chain forms a cycle",
                        );
                        break;
                    }
                    match fields[j].1.as_deref() {
                        None => break,
                        Some(next) => cur = next,
                    }
                }
            }
        }
    }
    if !out.is_empty() {
        out.sort_by(|a, b| a.field.cmp(&b.field));
        return Err(out);
    }
    // Every chain ends at a root (checked above), so parents resolve and a depth-first order
    // puts each parent before its sub-agents.
    for (i, (_, parent)) in fields.iter().enumerate() {
        agents[i].parent = parent.as_deref().and_then(|p| by_name.get(p).copied());
    }
    let insert_order = parents_first(&agents);
    Ok(ValidBuild {
        workspace: workspace.to_owned(),
        resources,
        agents,
        insert_order,
    })
}

/// Agent indexes ordered so that every parent comes before its sub-agents (the parent chains are
/// known to be acyclic).
fn parents_first(agents: &[ValidAgent]) -> Vec<usize> {
    let mut depth = vec![0usize; agents.len()];
    for (i, d) in depth.iter_mut().enumerate() {
        let mut cur = agents[i].parent;
        while let Some(p) = cur {
            *d += 1;
            cur = agents[p].parent;
        }
    }
    let mut order: Vec<usize> = (0..agents.len()).collect();
    order.sort_by_key(|&i| depth[i]);
    order
}

mod expect;
#[cfg(test)]
mod tests;

use expect::validate_expect;
