//! From the resources of a state to a build: agents, their compute resources and instance IDs,
//! sub-agents, resource names (the rules are in the parent module's documentation).

use std::collections::HashMap;

use instauth_types::{AgentAuth, AgentSpec, BuildRequest, Provider, ResourceSpec};
use serde_json::Value;

use super::{quoted, Problem, TfResource};

/// Compute resource types whose instance ID is read from the state: (type, attribute, the cloud
/// that vouches for such an instance).
const COMPUTE: &[(&str, &str, Provider)] = &[
    ("aws_instance", "id", Provider::Aws),
    ("google_compute_instance", "instance_id", Provider::Gcp),
    (
        "azurerm_linux_virtual_machine",
        "virtual_machine_id",
        Provider::Azure,
    ),
    (
        "azurerm_windows_virtual_machine",
        "virtual_machine_id",
        Provider::Azure,
    ),
];

/// Where a `coder_agent_instance`'s instance ID is looked for on resources of other types
/// (`aws_spot_instance_request.spot_instance_id`, a module's own VM type, ...).
const OTHER_ID_ATTRIBUTES: &[&str] = &[
    "id",
    "instance_id",
    "spot_instance_id",
    "virtual_machine_id",
];

/// The instance identity auth methods, for messages.
const COMPUTE_TYPES: &str = "aws_instance, google_compute_instance, \
                             azurerm_linux_virtual_machine or azurerm_windows_virtual_machine";
/// Agent names as the server accepts them: `[a-zA-Z0-9_-]{1,64}`.
fn valid_agent_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

struct Agent<'s, 'a> {
    res: &'s TfResource<'a>,
    id: Option<&'a str>,
    auth: Option<AgentAuth>,
}

struct Compute<'s, 'a> {
    res: &'s TfResource<'a>,
    provider: Provider,
    instance_id: Result<&'a str, String>,
}

/// Where an agent goes.
#[derive(Clone, Copy)]
enum Slot<'s, 'a> {
    /// On a resource of the state.
    Resource(&'s TfResource<'a>),
    /// On a resource of its own.
    Own(&'s TfResource<'a>),
}

impl Slot<'_, '_> {
    fn key(&self) -> String {
        match self {
            Slot::Resource(r) => r.address.to_owned(),
            Slot::Own(a) => format!("own:{}", a.address),
        }
    }
}

pub(super) struct Import<'s, 'a, 'p> {
    resources: &'s [TfResource<'a>],
    problems: &'p mut Vec<Problem>,
    agents: Vec<Agent<'s, 'a>>,
    compute: Vec<Compute<'s, 'a>>,
    /// agent id -> (link address, instance ID)
    links: HashMap<&'a str, (&'a str, &'a str)>,
}

impl<'s, 'a, 'p> Import<'s, 'a, 'p> {
    pub(super) fn new(resources: &'s [TfResource<'a>], problems: &'p mut Vec<Problem>) -> Self {
        let mut import = Import {
            resources,
            problems,
            agents: Vec::new(),
            compute: Vec::new(),
            links: HashMap::new(),
        };
        import.read_agents();
        import.read_compute();
        import.read_links();
        import
    }

    fn problem(&mut self, address: &str, detail: impl Into<String>) {
        self.problems.push(Problem::new(address, detail));
    }

    fn of_kind(&self, kind: &'s str) -> impl Iterator<Item = &'s TfResource<'a>> + 's {
        self.resources.iter().filter(move |r| r.kind == kind)
    }

    fn read_agents(&mut self) {
        let found: Vec<_> = self.of_kind("coder_agent").collect();
        for res in found {
            let auth = match res.values.and_then(|v| v.get("auth")) {
                // The provider's default.
                None | Some(Value::Null) => Some(AgentAuth::Token),
                Some(Value::String(s)) => {
                    let auth = s.parse::<AgentAuth>().ok();
                    if auth.is_none() {
                        self.problem(
                            res.address,
                            format!(
                                "auth {} is not one of {}",
                                quoted(s),
                                AgentAuth::NAMES.join(", ")
                            ),
                        );
                    }
                    auth
                }
                Some(_) => {
                    self.problem(res.address, "`auth` is not a string");
                    None
                }
            };
            self.agents.push(Agent {
                res,
                id: res.str_value("id").filter(|s| !s.is_empty()),
                auth,
            });
        }
        if self.agents.is_empty() {
            self.problem(
                "",
                "the state holds no coder_agent resource: there is nothing to authenticate",
            );
        }
    }

    fn read_compute(&mut self) {
        for res in self.resources {
            if let Some((_, key, provider)) = COMPUTE.iter().find(|(kind, _, _)| *kind == res.kind)
            {
                self.compute.push(Compute {
                    res,
                    provider: *provider,
                    instance_id: res.required(key).map_err(|e| {
                        format!("{e}: the instance ID of {} is read from it", res.kind)
                    }),
                });
            }
        }
    }

    fn read_links(&mut self) {
        let found: Vec<_> = self.of_kind("coder_agent_instance").collect();
        for link in found {
            let agent_id = link.required("agent_id");
            let instance_id = link.required("instance_id");
            let (agent_id, instance_id) = match (agent_id, instance_id) {
                (Ok(a), Ok(i)) => (a, i),
                (a, i) => {
                    for e in [a.err(), i.err()].into_iter().flatten() {
                        self.problem(link.address, e);
                    }
                    continue;
                }
            };
            if !self.agents.iter().any(|a| a.id == Some(agent_id)) {
                self.problem(link.address, "agent_id matches no coder_agent in the state");
                continue;
            }
            match self.links.get(agent_id) {
                Some((first, earlier)) if *earlier != instance_id => {
                    let first = first.to_string();
                    self.problem(
                        link.address,
                        format!("links the same coder_agent as {first} to another instance"),
                    );
                }
                Some(_) => {}
                None => {
                    self.links.insert(agent_id, (link.address, instance_id));
                }
            }
        }
    }

    /// The resource holding `instance_id`: a compute resource, else any other resource with it
    /// in one of [`OTHER_ID_ATTRIBUTES`].
    fn holder_of(&self, instance_id: &str) -> Option<&'s TfResource<'a>> {
        if let Some(c) = self
            .compute
            .iter()
            .find(|c| c.instance_id.as_deref() == Ok(instance_id))
        {
            return Some(c.res);
        }
        self.resources.iter().find(|r| {
            !r.kind.starts_with("coder_")
                && OTHER_ID_ATTRIBUTES
                    .iter()
                    .any(|key| r.str_value(key) == Some(instance_id))
        })
    }

    /// Where an agent goes and which instance ID it gets; `None` after reporting why not.
    fn place(
        &mut self,
        agent: &Agent<'s, 'a>,
        auth: AgentAuth,
    ) -> Option<(Slot<'s, 'a>, Option<String>)> {
        let link = agent.id.and_then(|id| self.links.get(id).copied());
        if auth == AgentAuth::Token {
            let slot = match (link, self.compute.as_slice()) {
                (Some((_, iid)), _) => self
                    .holder_of(iid)
                    .map_or(Slot::Own(agent.res), Slot::Resource),
                (None, [only]) => Slot::Resource(only.res),
                (None, _) => Slot::Own(agent.res),
            };
            return Some((slot, None));
        }
        let (slot, instance_id) = match (link, self.compute.as_slice()) {
            (Some((_, iid)), _) => (
                self.holder_of(iid)
                    .map_or(Slot::Own(agent.res), Slot::Resource),
                Ok(iid),
            ),
            (None, [only]) => (
                Slot::Resource(only.res),
                only.instance_id
                    .clone()
                    .map_err(|e| Problem::new(only.res.address, e)),
            ),
            (None, []) => {
                self.problems.push(Problem::new(
                    agent.res.address,
                    format!(
                        "auth {} needs an instance, but the state holds no compute resource \
                         ({COMPUTE_TYPES}) and no coder_agent_instance links this agent",
                        auth.as_str()
                    ),
                ));
                return None;
            }
            (None, many) => {
                let names: Vec<&str> = many.iter().map(|c| c.res.address).collect();
                self.problems.push(Problem::new(
                    agent.res.address,
                    format!(
                        "auth {} needs an instance, but the state holds {} compute resources \
                         ({}) and no coder_agent_instance links this agent to one",
                        auth.as_str(),
                        many.len(),
                        names.join(", ")
                    ),
                ));
                return None;
            }
        };
        // An instance of another cloud can never produce a proof this agent's auth accepts.
        let mut fits = true;
        if let Slot::Resource(res) = slot {
            if let Some(c) = self.compute.iter().find(|c| std::ptr::eq(c.res, res)) {
                if auth.provider() != Some(c.provider) {
                    fits = false;
                    self.problems.push(Problem::new(
                        agent.res.address,
                        format!(
                            "auth {} cannot be proved by {}, which runs on {}",
                            auth.as_str(),
                            res.address,
                            c.provider.label()
                        ),
                    ));
                }
            }
        }
        match instance_id {
            Ok(iid) => fits.then(|| (slot, Some(iid.to_owned()))),
            Err(problem) => {
                self.problems.push(problem);
                None
            }
        }
    }

    fn check_names(&mut self) {
        let named: Vec<&TfResource<'a>> = self
            .agents
            .iter()
            .map(|a| a.res)
            .chain(self.of_kind("coder_devcontainer"))
            .collect();
        // Coder compares agent names without case: `Dev` and `dev` would be one agent there.
        let mut seen: HashMap<String, &str> = HashMap::new();
        for res in named {
            if !valid_agent_name(res.name) {
                self.problem(
                    res.address,
                    "the name must match [a-zA-Z0-9_-]{1,64} to be an agent name",
                );
                continue;
            }
            match seen.get(&res.name.to_ascii_lowercase()) {
                Some(first) => {
                    let detail =
                        format!("duplicate agent name {} (also {first})", quoted(res.name));
                    self.problem(res.address, detail);
                }
                None => {
                    seen.insert(res.name.to_ascii_lowercase(), res.address);
                }
            }
        }
    }

    pub(super) fn build(mut self) -> BuildRequest {
        self.check_names();
        // Slots in order: compute resources as the state lists them, then the others as agents
        // are placed on them.
        let mut slots: Vec<(Slot<'s, 'a>, Vec<AgentSpec>)> = self
            .compute
            .iter()
            .map(|c| (Slot::Resource(c.res), Vec::new()))
            .collect();
        let mut index: HashMap<String, usize> = slots
            .iter()
            .enumerate()
            .map(|(i, (s, _))| (s.key(), i))
            .collect();
        // agent id -> (name, slot index), for sub-agents.
        let mut parents: HashMap<&'a str, (&'a str, usize)> = HashMap::new();
        let agents = std::mem::take(&mut self.agents);
        for agent in &agents {
            let Some(auth) = agent.auth else { continue };
            let Some((slot, instance_id)) = self.place(agent, auth) else {
                continue;
            };
            let i = *index.entry(slot.key()).or_insert_with(|| {
                slots.push((slot, Vec::new()));
                slots.len() - 1
            });
            slots[i].1.push(AgentSpec {
                name: agent.res.name.to_owned(),
                auth: auth.into(),
                instance_id,
                parent: None,
                require_agent_key: false,
            });
            if let Some(id) = agent.id {
                parents.insert(id, (agent.res.name, i));
            }
        }
        let containers: Vec<_> = self.of_kind("coder_devcontainer").collect();
        for dc in containers {
            let parent = match dc.required("agent_id") {
                Ok(id) => match parents.get(id) {
                    Some(p) => Some(*p),
                    None if agents.iter().any(|a| a.id == Some(id)) => None,
                    None => {
                        self.problem(dc.address, "agent_id matches no coder_agent in the state");
                        None
                    }
                },
                Err(e) => {
                    self.problem(dc.address, e);
                    None
                }
            };
            // A parent that could not be placed has its own problem reported already.
            let Some((parent, i)) = parent else { continue };
            slots[i].1.push(AgentSpec {
                name: dc.name.to_owned(),
                auth: AgentAuth::Token.into(),
                instance_id: None,
                parent: Some(parent.to_owned()),
                require_agent_key: false,
            });
        }
        self.resources_of(slots)
    }

    /// Names the slots: a resource's `name`, or its address where two would share a name; an
    /// agent's own resource after the agent's address (which no compute resource shares).
    fn resources_of(&self, slots: Vec<(Slot<'s, 'a>, Vec<AgentSpec>)>) -> BuildRequest {
        let tentative = |s: &Slot<'s, 'a>| match s {
            Slot::Resource(r) => r.name,
            Slot::Own(a) => a.address,
        };
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (s, _) in &slots {
            *count.entry(tentative(s)).or_default() += 1;
        }
        BuildRequest {
            resources: slots
                .into_iter()
                .map(|(slot, agents)| {
                    let (name, kind) = match slot {
                        Slot::Resource(r) if count.get(r.name) == Some(&1) => (r.name, r.kind),
                        Slot::Resource(r) => (r.address, r.kind),
                        Slot::Own(a) => (a.address, "coder_agent"),
                    };
                    ResourceSpec {
                        name: name.to_owned(),
                        resource_type: kind.to_owned(),
                        agents,
                        expect: None,
                    }
                })
                .collect(),
        }
    }
}
