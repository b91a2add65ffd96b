//! What the dashboard shows, as view models that the HTML templates render and that
//! `/ui/data.json` sends for the live refresh, so both spell every value the same way.
//!
//! Every string here may hold client-controlled text (agent names from builds and exchanges,
//! instance IDs, audit reasons): the templates escape it (askama escapes every `{{ }}` in an
//! `.html` template) and the script only ever assigns it as `textContent`.

use askama::Template;
use chrono::{DateTime, Utc};
use instauth_types::{routes, AgentStatus, AuditEntry, ConnectionStatus, WorkspaceInfo};
use serde::Serialize;

/// Longest run of characters of a client-controlled value that is shown; the rest is cut with an
/// ellipsis so one hostile value cannot stretch the page.
const SHOWN_CHARS: usize = 160;

/// Placeholder for a value that does not exist (an agent without an instance ID).
const NONE: &str = "—";

/// The whole dashboard.
#[derive(Debug, Serialize)]
pub(crate) struct DashboardView {
    /// Workspaces shown (at most [`super::MAX_WORKSPACES_SHOWN`]).
    pub workspaces: Vec<WorkspaceView>,
    /// Live workspaces in all.
    pub workspaces_total: usize,
    /// Newest audit records first.
    pub audit: Vec<AuditView>,
    /// When the view was made, as shown.
    pub generated: String,
}

/// One workspace and its agents.
#[derive(Debug, Serialize)]
pub(crate) struct WorkspaceView {
    /// Name.
    pub name: String,
    /// Latest build number.
    pub build_number: i32,
    /// "2 of 2 agents connected".
    pub summary: String,
    /// Agents of the latest build.
    pub agents: Vec<AgentView>,
}

/// One agent's row.
#[derive(Debug, Default, Serialize)]
pub(crate) struct AgentView {
    /// Agent id (the row's key for the live refresh).
    pub id: String,
    /// Name.
    pub name: String,
    /// "sub-agent of main", or empty.
    pub parent: String,
    /// Resource name.
    pub resource: String,
    /// Resource type (`aws_instance`), or empty.
    pub resource_type: String,
    /// How the agent authenticates.
    pub auth: String,
    /// The cloud instance ID, or a dash.
    pub instance_id: String,
    /// `connecting`, `connected` or `disconnected`.
    pub status: String,
    /// Lifecycle state.
    pub lifecycle: String,
    /// Latest heartbeat as shown, or "never".
    pub last_heartbeat: String,
    /// Latest heartbeat, RFC 3339 (empty when never).
    pub last_heartbeat_iso: String,
    /// The key column: `bound <fingerprint>`, `not bound` or a dash, `(required)` when the
    /// build requires a key.
    pub key: String,
    /// A key is bound (the reset button is offered).
    pub key_bound: bool,
    /// Where the reset-key form posts.
    pub reset_path: String,
}

/// One audit record's row.
#[derive(Debug, Serialize)]
pub(crate) struct AuditView {
    /// Record id (newest is largest).
    pub id: i64,
    /// When, as shown.
    pub time: String,
    /// When, RFC 3339.
    pub time_iso: String,
    /// Cloud.
    pub provider: String,
    /// Verified instance ID, or a dash.
    pub instance_id: String,
    /// Requested agent name, or "(none)".
    pub agent_name: String,
    /// Outcome word.
    pub outcome: String,
    /// `ok` or `rejected`: the outcome's kind (the symbol and colour of the cell).
    pub outcome_kind: &'static str,
    /// Why it was rejected, or a dash.
    pub reason: String,
}

/// A client-controlled value, cut to [`SHOWN_CHARS`] characters.
fn shown(value: &str) -> String {
    if value.chars().count() <= SHOWN_CHARS {
        value.to_owned()
    } else {
        let mut cut: String = value.chars().take(SHOWN_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

fn or_none(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => shown(v),
        _ => NONE.to_owned(),
    }
}

/// A time as the dashboard shows it (UTC, to the second); the script formats the same way.
pub(crate) fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

impl WorkspaceView {
    pub(crate) fn new(w: WorkspaceInfo) -> Self {
        let connected = w
            .agents
            .iter()
            .filter(|a| a.status == ConnectionStatus::Connected)
            .count();
        let total = w.agents.len();
        let summary = format!(
            "{connected} of {total} agent{} connected",
            if total == 1 { "" } else { "s" }
        );
        let resources = w.resources.unwrap_or_default();
        let agents = w
            .agents
            .into_iter()
            .map(|a| {
                let resource_type = resources
                    .iter()
                    .find(|r| r.name == a.resource_name)
                    .map(|r| shown(&r.resource_type))
                    .unwrap_or_default();
                AgentView::new(&w.name, a, resource_type)
            })
            .collect();
        WorkspaceView {
            name: w.name,
            build_number: w.build_number,
            summary,
            agents,
        }
    }
}

impl AgentView {
    fn new(workspace: &str, a: AgentStatus, resource_type: String) -> Self {
        let key = key_text(&a);
        AgentView {
            id: a.id.to_string(),
            parent: a
                .parent
                .as_deref()
                .map(|p| format!("sub-agent of {}", shown(p)))
                .unwrap_or_default(),
            reset_path: routes::ui_reset_key(workspace, &a.name),
            name: shown(&a.name),
            resource: shown(&a.resource_name),
            resource_type,
            auth: a.auth.as_str().to_owned(),
            instance_id: or_none(a.instance_id.as_deref()),
            status: a.status.as_str().to_owned(),
            lifecycle: a.lifecycle_state.as_str().to_owned(),
            last_heartbeat: a
                .last_connected_at
                .map_or_else(|| "never".to_owned(), format_time),
            last_heartbeat_iso: a
                .last_connected_at
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            key,
            key_bound: a.agent_key.is_some(),
        }
    }
}

/// The key column, in the words of `instauth workspaces show`: `bound <fingerprint>`, `not bound`
/// (root instance identity agents, the only ones that can bind a key) or a dash, and
/// `(required)` when the build requires a key.
fn key_text(a: &AgentStatus) -> String {
    let bound = match &a.agent_key {
        Some(k) => format!("bound {}", shown(&k.fingerprint)),
        None if a.auth.is_instance_identity() && a.parent.is_none() => "not bound".to_owned(),
        None => NONE.to_owned(),
    };
    if a.require_agent_key {
        format!("{bound} (required)")
    } else {
        bound
    }
}

impl AuditView {
    pub(crate) fn new(e: AuditEntry) -> Self {
        AuditView {
            id: e.id,
            time: format_time(e.time),
            time_iso: e.time.to_rfc3339(),
            provider: e.provider.as_str().to_owned(),
            instance_id: or_none(Some(&e.instance_id)),
            agent_name: if e.agent_name.is_empty() {
                "(none)".to_owned()
            } else {
                shown(&e.agent_name)
            },
            outcome_kind: if e.outcome == "ok" { "ok" } else { "rejected" },
            outcome: shown(&e.outcome),
            reason: or_none(e.reason.as_deref()),
        }
    }
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "ui/login.html")]
pub(crate) struct LoginPage<'a> {
    /// The sign-in form's CSRF token (also in the login cookie).
    pub login_csrf: &'a str,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
    /// The page reached us over plain HTTP from another machine: the `Secure` session cookie
    /// will not be stored, so say so.
    pub insecure_transport: bool,
}

/// The dashboard page.
#[derive(Template)]
#[template(path = "ui/dashboard.html")]
pub(crate) struct DashboardPage<'a> {
    /// The session's CSRF token, in every form.
    pub csrf: &'a str,
    /// Milliseconds between refreshes.
    pub refresh_ms: u64,
    /// What to show.
    pub view: &'a DashboardView,
    /// An empty agent row: the script clones it for agents that appear later.
    pub blank_agent: AgentView,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(1000);
        let s = shown(&long);
        assert_eq!(s.chars().count(), SHOWN_CHARS);
        assert!(s.ends_with('…'));
        assert_eq!(shown("main"), "main");
        assert_eq!(or_none(Some("")), NONE);
        assert_eq!(or_none(None), NONE);
    }

    #[test]
    fn templates_escape_client_values() {
        let view = DashboardView {
            workspaces: vec![WorkspaceView {
                name: "dev".into(),
                build_number: 1,
                summary: "0 of 1 agent connected".into(),
                agents: vec![AgentView {
                    id: "id".into(),
                    name: "<script>alert(1)</script>".into(),
                    instance_id: "\"><img src=x onerror=alert(1)>".into(),
                    ..AgentView::default()
                }],
            }],
            workspaces_total: 1,
            audit: vec![],
            generated: String::new(),
        };
        let html = DashboardPage {
            csrf: "c",
            refresh_ms: 3000,
            view: &view,
            blank_agent: AgentView::default(),
        }
        .render()
        .expect("renders");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{html}"
        );
    }
}
