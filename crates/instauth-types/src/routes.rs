//! The one route table of the HTTP API: the server registers these paths, the agent SDK and the
//! admin client build their URLs from them, so a path is spelled in exactly one place.
//!
//! Constants are axum-style templates (`{workspace}`); the builders fill them in with each path
//! segment percent-encoded, so a name holding `/`, `?`, `#` or `%` stays one segment instead of
//! reaching another route.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// `POST`: exchange an AWS instance identity proof for a session token.
pub const AWS_INSTANCE_IDENTITY: &str = "/api/v2/workspaceagents/aws-instance-identity";
/// `POST`: exchange an Azure attested document for a session token.
pub const AZURE_INSTANCE_IDENTITY: &str = "/api/v2/workspaceagents/azure-instance-identity";
/// `POST`: exchange a Google identity token for a session token.
pub const GOOGLE_INSTANCE_IDENTITY: &str = "/api/v2/workspaceagents/google-instance-identity";
/// `GET`: the calling agent's manifest.
pub const AGENT_MANIFEST: &str = "/api/v2/workspaceagents/me/manifest";
/// `POST`: the calling agent's heartbeat.
pub const AGENT_HEARTBEAT: &str = "/api/v2/workspaceagents/me/heartbeat";
/// `GET`: every workspace.
pub const WORKSPACES: &str = "/api/v2/workspaces";
/// `GET`, `DELETE`: one workspace; see [`workspace`].
pub const WORKSPACE: &str = "/api/v2/workspaces/{workspace}";
/// `POST`: a new build of a workspace; see [`workspace_builds`].
pub const WORKSPACE_BUILDS: &str = "/api/v2/workspaces/{workspace}/builds";
/// `DELETE`: forget the key bound to an agent of a workspace's latest build; see [`agent_key`].
pub const AGENT_KEY: &str = "/api/v2/workspaces/{workspace}/agents/{agent}/key";
/// `DELETE`: end every session of an agent; see [`agent_sessions`].
pub const AGENT_SESSIONS: &str = "/api/v2/workspaceagents/{agent_id}/sessions";
/// `GET`: exchange attempts; see [`audit`].
pub const AUDIT: &str = "/api/v2/audit";
/// `GET`: liveness.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: readiness (the database answers).
pub const READYZ: &str = "/readyz";
/// `GET`: Prometheus text.
pub const METRICS: &str = "/metrics";
/// `GET`: the operators' dashboard (SPEC §5.1), or its sign-in form without a session.
pub const UI: &str = "/ui";
/// `POST`: sign in to the dashboard with the admin token (a form).
pub const UI_LOGIN: &str = "/ui/login";
/// `POST`: end the dashboard session.
pub const UI_LOGOUT: &str = "/ui/logout";
/// `GET`: what the dashboard shows, as JSON, for its live refresh.
pub const UI_DATA: &str = "/ui/data.json";
/// `POST`: reset an agent's key from the dashboard; see [`ui_reset_key`].
pub const UI_RESET_KEY: &str = "/ui/workspaces/{workspace}/agents/{agent}/reset-key";
/// `GET`: the dashboard's script.
pub const UI_SCRIPT: &str = "/ui/app.js";
/// `GET`: the dashboard's style sheet.
pub const UI_STYLE: &str = "/ui/style.css";

/// Every route as (method, path template), in the order of docs/API.md.
pub const ALL: &[(&str, &str)] = &[
    ("POST", AWS_INSTANCE_IDENTITY),
    ("POST", AZURE_INSTANCE_IDENTITY),
    ("POST", GOOGLE_INSTANCE_IDENTITY),
    ("GET", AGENT_MANIFEST),
    ("POST", AGENT_HEARTBEAT),
    ("GET", WORKSPACES),
    ("GET", WORKSPACE),
    ("DELETE", WORKSPACE),
    ("POST", WORKSPACE_BUILDS),
    ("DELETE", AGENT_KEY),
    ("DELETE", AGENT_SESSIONS),
    ("GET", AUDIT),
    ("GET", HEALTHZ),
    ("GET", READYZ),
    ("GET", METRICS),
    ("GET", UI),
    ("POST", UI_LOGIN),
    ("POST", UI_LOGOUT),
    ("GET", UI_DATA),
    ("POST", UI_RESET_KEY),
    ("GET", UI_SCRIPT),
    ("GET", UI_STYLE),
];

/// Everything but RFC 3986's unreserved characters is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value` percent-encoded as one path segment.
///
/// `.` and `..` come back unchanged: URL parsers resolve them (also when encoded as `%2E`), so
/// callers that take names from users reject them before building a URL.
pub fn segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

/// True if `value` survives as one path segment of a URL: not empty, `.` or `..`.
pub fn is_usable_segment(value: &str) -> bool {
    !matches!(value, "" | "." | "..")
}

/// The path of [`WORKSPACE`] for `workspace`.
pub fn workspace(workspace: &str) -> String {
    format!("{WORKSPACES}/{}", segment(workspace))
}

/// The path of [`WORKSPACE_BUILDS`] for `workspace`.
pub fn workspace_builds(workspace: &str) -> String {
    format!("{WORKSPACES}/{}/builds", segment(workspace))
}

/// The path of [`AGENT_KEY`] for agent `agent` of `workspace`.
pub fn agent_key(workspace: &str, agent: &str) -> String {
    format!(
        "{WORKSPACES}/{}/agents/{}/key",
        segment(workspace),
        segment(agent)
    )
}

/// The path of [`AGENT_SESSIONS`] for the agent `agent_id`.
pub fn agent_sessions(agent_id: &str) -> String {
    format!("/api/v2/workspaceagents/{}/sessions", segment(agent_id))
}

/// The path of [`UI_RESET_KEY`] for agent `agent` of `workspace`.
pub fn ui_reset_key(workspace: &str, agent: &str) -> String {
    format!(
        "/ui/workspaces/{}/agents/{}/reset-key",
        segment(workspace),
        segment(agent)
    )
}

/// The path and query of [`AUDIT`]: at most `limit` records (server default when `None`); with
/// `after`, only records with a larger `id`, oldest first.
pub fn audit(limit: Option<u32>, after: Option<i64>) -> String {
    let mut query = Vec::new();
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    if let Some(after) = after {
        query.push(format!("after={after}"));
    }
    if query.is_empty() {
        AUDIT.to_owned()
    } else {
        format!("{AUDIT}?{}", query.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_the_templates() {
        assert_eq!(workspace("dev"), WORKSPACE.replace("{workspace}", "dev"));
        assert_eq!(
            workspace_builds("dev"),
            WORKSPACE_BUILDS.replace("{workspace}", "dev")
        );
        let id = "6f1c1d3e-0000-4000-8000-000000000001";
        assert_eq!(agent_sessions(id), AGENT_SESSIONS.replace("{agent_id}", id));
        assert_eq!(
            ui_reset_key("dev", "main"),
            UI_RESET_KEY
                .replace("{workspace}", "dev")
                .replace("{agent}", "main")
        );
        assert_eq!(audit(None, None), "/api/v2/audit");
        assert_eq!(audit(Some(5), None), "/api/v2/audit?limit=5");
        assert_eq!(audit(Some(5), Some(42)), "/api/v2/audit?limit=5&after=42");
        assert_eq!(audit(None, Some(42)), "/api/v2/audit?after=42");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(workspace("a/b"), "/api/v2/workspaces/a%2Fb");
        assert_eq!(
            workspace_builds("x?y#z%"),
            "/api/v2/workspaces/x%3Fy%23z%25/builds"
        );
        assert_eq!(segment("dev-1_a.b~c"), "dev-1_a.b~c");
        assert_eq!(segment("é "), "%C3%A9%20");
    }

    #[test]
    fn dot_segments_are_not_usable() {
        for bad in ["", ".", ".."] {
            assert!(!is_usable_segment(bad), "{bad:?}");
        }
        for good in ["...", "a.", "dev"] {
            assert!(is_usable_segment(good), "{good:?}");
        }
    }

    #[test]
    fn every_template_is_listed_once_per_method() {
        let mut seen = std::collections::HashSet::new();
        for route in ALL {
            assert!(seen.insert(route), "{route:?} listed twice");
            assert!(route.1.starts_with('/'));
        }
    }
}
