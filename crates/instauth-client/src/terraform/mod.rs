//! A build (`POST /api/v2/workspaces/{workspace}/builds`) from a Terraform state, as
//! `terraform show -json` prints it (Terraform's "JSON Output Format", `format_version` 1.x:
//! `values.root_module.resources` and nested `child_modules`, each resource with `address`,
//! `mode`, `type`, `name`, `index` and `values`).
//!
//! The rules follow Coder's provisioner where the state tells:
//! - every managed `coder_agent` is an agent named after the resource's `name` (not its `index`:
//!   a `count` or `for_each` of two agents is a duplicate name, as in Coder, which compares names
//!   without case); `auth` from its `auth` attribute (absent: `token`, the provider's default);
//! - compute resources are `aws_instance` (instance ID from `id`), `google_compute_instance`
//!   (`instance_id`), `azurerm_linux_virtual_machine` and `azurerm_windows_virtual_machine`
//!   (`virtual_machine_id`); each is a resource of the build (named by its `name`, or by its
//!   address where two would share a name), with or without agents;
//! - an agent with instance identity auth takes the `instance_id` of the `coder_agent_instance`
//!   whose `agent_id` is its `id`, and sits on the resource holding that instance ID; without such
//!   a link it sits on the state's only compute resource and takes its instance ID;
//! - a token agent sits on the resource its `coder_agent_instance` names (Coder ignores the
//!   instance ID of token agents, and so does this import), else on the only compute resource;
//! - an agent with no resource to sit on gets one of its own, named after the agent's address,
//!   of type `coder_agent` (Coder places it by the dependency graph, which the state lacks);
//! - every `coder_devcontainer` is a sub-agent, named after the resource (Coder's name for a dev
//!   container's agent unless devcontainer.json's `customizations.coder.name` overrides it at run
//!   time, which no state can tell), with token auth, on the resource of the agent its `agent_id`
//!   names, which is its parent.
//!
//! Every problem is reported at once, each with the address of the resource at fault. Attribute
//! values are never echoed except names, `auth` and instance IDs: a state holds secrets (the
//! agents' `token` among them).

mod import;

use std::fmt;

use instauth_types::BuildRequest;
use serde_json::{Map, Value};

/// Largest state read.
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;

/// One thing wrong with a state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The address of the resource at fault (`module.vm.coder_agent.dev[1]`), or the JSON path
    /// of a malformed part, or empty for the document as a whole.
    pub address: String,
    /// What is wrong and, where it helps, what to do.
    pub detail: String,
}

impl Problem {
    fn new(address: impl Into<String>, detail: impl Into<String>) -> Problem {
        Problem {
            address: address.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.address.is_empty() {
            f.write_str(&self.detail)
        } else {
            write!(f, "{}: {}", self.address, self.detail)
        }
    }
}

/// Why a state could not become a build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Over [`MAX_STATE_BYTES`].
    #[error("the state is larger than {MAX_STATE_BYTES} bytes")]
    TooLarge,
    /// Not JSON at all (the message names a line and column, never content).
    #[error("the state is not JSON: {0}")]
    Json(String),
    /// JSON, but with problems, all of them listed.
    #[error("{}", problems_message(.0))]
    Problems(Vec<Problem>),
}

fn problems_message(problems: &[Problem]) -> String {
    let n = problems.len();
    let mut out = format!(
        "{n} problem{} in the Terraform state:",
        if n == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&crate::render::escape_controls(&p.to_string()));
    }
    out
}

/// A resource of the state.
#[derive(Debug)]
struct TfResource<'a> {
    address: &'a str,
    mode: &'a str,
    kind: &'a str,
    name: &'a str,
    values: Option<&'a Map<String, Value>>,
}

impl<'a> TfResource<'a> {
    fn str_value(&self, key: &str) -> Option<&'a str> {
        self.values?.get(key)?.as_str()
    }

    /// A non-empty string attribute, or why not (never its value).
    fn required(&self, key: &str) -> Result<&'a str, String> {
        match self.values.and_then(|v| v.get(key)) {
            None | Some(Value::Null) => Err(format!("`{key}` is missing")),
            Some(Value::String(s)) if s.is_empty() => Err(format!("`{key}` is empty")),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(format!("`{key}` is not a string")),
        }
    }
}

/// Reads a resource object; `Err` names the missing field.
fn resource(v: &Value) -> Result<TfResource<'_>, String> {
    let field = |key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("a resource without `{key}`"))
    };
    Ok(TfResource {
        address: field("address")?,
        mode: field("mode")?,
        kind: field("type")?,
        name: field("name")?,
        values: v.get("values").and_then(Value::as_object),
    })
}

/// Appends the resources of `module` and its child modules, depth first in document order.
fn collect<'a>(
    module: &'a Value,
    path: &str,
    out: &mut Vec<TfResource<'a>>,
    problems: &mut Vec<Problem>,
) {
    if !module.is_object() {
        problems.push(Problem::new(path, "expected a module object"));
        return;
    }
    match module.get("resources") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, r) in list.iter().enumerate() {
                match resource(r) {
                    Ok(r) => out.push(r),
                    Err(e) => problems.push(Problem::new(format!("{path}.resources[{i}]"), e)),
                }
            }
        }
        Some(_) => problems.push(Problem::new(
            format!("{path}.resources"),
            "expected an array",
        )),
    }
    match module.get("child_modules") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (i, child) in list.iter().enumerate() {
                let child_path = child
                    .get("address")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("{path}.child_modules[{i}]"), str::to_owned);
                collect(child, &child_path, out, problems);
            }
        }
        Some(_) => problems.push(Problem::new(
            format!("{path}.child_modules"),
            "expected an array",
        )),
    }
}

/// A user-supplied string fit for a message: bounded and quoted.
fn quoted(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    format!("{short:?}")
}

fn one(address: &str, detail: impl Into<String>) -> ImportError {
    ImportError::Problems(vec![Problem::new(address, detail)])
}

/// The build described by `state`, the output of `terraform show -json`.
pub fn build_request(state: &[u8]) -> Result<BuildRequest, ImportError> {
    if state.len() > MAX_STATE_BYTES {
        return Err(ImportError::TooLarge);
    }
    // Into a `Value` first: its errors are syntax errors with a position, whereas typed
    // deserialisation would quote mismatched values, and values may be secrets.
    let doc: Value = serde_json::from_slice(state).map_err(|e| ImportError::Json(e.to_string()))?;
    let Some(top) = doc.as_object() else {
        return Err(one(
            "",
            "expected a JSON object, the output of `terraform show -json`",
        ));
    };
    match top.get("format_version").and_then(Value::as_str) {
        Some(v) if v.split('.').next() == Some("1") => {}
        Some(v) => {
            return Err(one(
                "format_version",
                format!("{} is not supported: this import reads 1.x", quoted(v)),
            ))
        }
        None if top.contains_key("version") && top.contains_key("resources") => {
            return Err(one(
                "",
                "this is a raw state file (terraform.tfstate); import what \
                 `terraform show -json` prints",
            ))
        }
        None => {
            return Err(one(
                "",
                "no format_version: not the output of `terraform show -json`",
            ))
        }
    }
    let root = match top.get("values").and_then(|v| v.get("root_module")) {
        Some(root) => root,
        None if top.contains_key("planned_values") => {
            return Err(one(
                "",
                "this is a plan; after `terraform apply`, import the state: \
                 `terraform show -json > state.json`",
            ))
        }
        None => {
            return Err(one(
                "",
                "the state holds no resources: run `terraform apply` first",
            ))
        }
    };
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    collect(root, "values.root_module", &mut resources, &mut problems);
    // Data sources (`data.coder_workspace.me`) describe, they are not resources of a build.
    resources.retain(|r| r.mode == "managed");
    let build = import::Import::new(&resources, &mut problems).build();
    if problems.is_empty() {
        Ok(build)
    } else {
        problems.sort();
        problems.dedup();
        Err(ImportError::Problems(problems))
    }
}
