//! Tables for people and JSON for scripts, from the admin API's answers.
//!
//! Every cell passes through [`escape_controls`]: audit records carry what unauthenticated
//! clients sent (the requested agent name), and an escape sequence in it must not reach the
//! operator's terminal.

use instauth_types::{AgentStatus, AuditEntry, BuildResponse, WorkspaceInfo};

/// `s` with every control character written as a Rust escape (`\u{1b}`), newlines excepted.
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\n') {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A cell: control characters escaped, and newlines too (a row is one line).
fn cell(s: &str) -> String {
    escape_controls(s).replace('\n', "\\n")
}

/// Pretty JSON followed by a newline.
pub fn json<T: serde::Serialize>(value: &T) -> String {
    // Serialising the API's own types cannot fail: they hold no maps with non-string keys.
    let mut out = serde_json::to_string_pretty(value).unwrap_or_default();
    out.push('\n');
    out
}

/// One JSON object per line (`--follow -o json`).
pub fn json_line<T: serde::Serialize>(value: &T) -> String {
    let mut out = serde_json::to_string(value).unwrap_or_default();
    out.push('\n');
    out
}

/// Left-aligned columns two spaces apart, as wide as their widest cell (at least `min`).
fn columns(rows: &[Vec<String>], min: &[usize]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
                .max(min.get(i).copied().unwrap_or(0))
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => cell(s),
        _ => "-".to_owned(),
    }
}

/// `instauth workspaces apply`: the build number and each new agent's id and, for token agents,
/// its token (shown once).
pub fn build(b: &BuildResponse) -> String {
    let mut rows = vec![vec!["AGENT".into(), "ID".into(), "TOKEN".into()]];
    for a in &b.agents {
        rows.push(vec![
            cell(&a.name),
            a.id.to_string(),
            a.token.as_deref().map(cell).unwrap_or_default(),
        ]);
    }
    format!(
        "workspace {} build {}\n{}",
        cell(&b.workspace),
        b.build_number,
        columns(&rows, &[])
    )
}

/// `instauth workspaces list`: one line per workspace with its agents' status.
pub fn workspaces(list: &[WorkspaceInfo]) -> String {
    let mut rows = vec![vec!["WORKSPACE".into(), "BUILD".into(), "AGENTS".into()]];
    for w in list {
        let agents: Vec<String> = w
            .agents
            .iter()
            .map(|a| format!("{} ({})", cell(&a.name), a.status))
            .collect();
        rows.push(vec![
            cell(&w.name),
            w.build_number.to_string(),
            agents.join(", "),
        ]);
    }
    columns(&rows, &[])
}

/// `instauth workspaces show`: the latest build's agents, one line each.
pub fn workspace(w: &WorkspaceInfo) -> String {
    let mut rows = vec![[
        "AGENT",
        "RESOURCE",
        "AUTH",
        "INSTANCE",
        "PARENT",
        "STATUS",
        "LIFECYCLE",
        "LAST HEARTBEAT",
        "KEY",
    ]
    .map(String::from)
    .to_vec()];
    for a in &w.agents {
        rows.push(vec![
            cell(&a.name),
            cell(&a.resource_name),
            a.auth.to_string(),
            or_dash(a.instance_id.as_deref()),
            or_dash(a.parent.as_deref()),
            a.status.to_string(),
            a.lifecycle_state.to_string(),
            time(a.last_connected_at),
            agent_key(a),
        ]);
    }
    let expects: String = w
        .resources
        .iter()
        .flatten()
        .filter_map(|r| {
            let claims: Vec<String> = r
                .expect
                .as_ref()?
                .iter()
                .map(|(k, v)| format!("{}={}", cell(k), cell(v)))
                .collect();
            Some(format!(
                "resource {} expects {}\n",
                cell(&r.name),
                claims.join(" ")
            ))
        })
        .collect();
    format!(
        "workspace {} build {}\n{expects}{}",
        cell(&w.name),
        w.build_number,
        columns(&rows, &[])
    )
}

/// An agent's key column: `bound <fingerprint>` or `not bound` (root instance identity agents,
/// the only ones that can bind a key), `(required)` when the build requires one.
fn agent_key(a: &AgentStatus) -> String {
    let bound = match &a.agent_key {
        Some(k) => format!("bound {}", cell(&k.fingerprint)),
        None if a.auth.is_instance_identity() && a.parent.is_none() => "not bound".into(),
        None => "-".into(),
    };
    if a.require_agent_key {
        format!("{bound} (required)")
    } else {
        bound
    }
}

/// Minimum audit column widths, so that lines printed one by one (`--follow`) line up under the
/// header: id, time (RFC 3339 to the second), provider, outcome, instance (AWS 19, GCP 20, Azure
/// 36), agent, remote address; the reason, last, takes what it needs.
const AUDIT_WIDTHS: [usize; 8] = [6, 20, 8, 12, 20, 12, 21, 0];

fn audit_cells(e: &AuditEntry) -> Vec<String> {
    vec![
        e.id.to_string(),
        time(Some(e.time)),
        e.provider.to_string(),
        cell(&e.outcome),
        or_dash(Some(&e.instance_id)),
        or_dash(Some(&e.agent_name)),
        cell(&e.remote_addr),
        or_dash(e.reason.as_deref()),
    ]
}

fn audit_header_cells() -> Vec<String> {
    [
        "ID", "TIME", "PROVIDER", "OUTCOME", "INSTANCE", "AGENT", "REMOTE", "REASON",
    ]
    .map(String::from)
    .to_vec()
}

/// `instauth audit`: a header and one line per record, in the order given.
pub fn audit(entries: &[AuditEntry]) -> String {
    let mut rows = vec![audit_header_cells()];
    rows.extend(entries.iter().map(audit_cells));
    columns(&rows, &AUDIT_WIDTHS)
}

/// The header line of [`audit_line`]s.
pub fn audit_header() -> String {
    columns(&[audit_header_cells()], &AUDIT_WIDTHS)
}

/// One audit record as a line under [`audit_header`] (`--follow`).
pub fn audit_line(e: &AuditEntry) -> String {
    columns(&[audit_cells(e)], &AUDIT_WIDTHS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use instauth_types::{AgentStatus, CreatedAgent};

    fn entry(id: i64, agent_name: &str) -> AuditEntry {
        AuditEntry {
            id,
            time: "2024-05-01T10:00:00Z".parse().unwrap(),
            provider: instauth_types::Provider::Aws,
            instance_id: "i-076e9b91f7c420782".into(),
            agent_name: agent_name.into(),
            outcome: "conflict".into(),
            agent_id: None,
            remote_addr: "127.0.0.1:50000".into(),
            reason: Some("2 candidates".into()),
        }
    }

    #[test]
    fn audit_lines_line_up_with_the_header() {
        let header = audit_header();
        let line = audit_line(&entry(7, "main"));
        let table = audit(&[entry(7, "main")]);
        assert_eq!(table, format!("{header}{line}"));
        assert_eq!(
            header.find("OUTCOME"),
            line.find("conflict"),
            "{header}{line}"
        );
        assert_eq!(
            table,
            "ID      TIME                  PROVIDER  OUTCOME       INSTANCE              AGENT         REMOTE                 REASON\n\
             7       2024-05-01T10:00:00Z  aws       conflict      i-076e9b91f7c420782   main          127.0.0.1:50000        2 candidates\n"
        );
        // An empty name or instance shows as "-".
        assert!(audit_line(&entry(8, "")).contains(" -  "));
    }

    #[test]
    fn cells_escape_terminal_controls() {
        let line = audit_line(&entry(1, "x\u{1b}]0;owned\u{7}\nmore"));
        assert!(!line.contains('\u{1b}') && !line.contains('\u{7}'));
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(line.contains(r"x\u{1b}]0;owned\u{7}\nmore"), "{line}");
    }

    #[test]
    fn workspace_tables() {
        let main = AgentStatus {
            id: uuid::Uuid::nil(),
            name: "main".into(),
            resource_name: "dev".into(),
            auth: instauth_types::AgentAuth::AwsInstanceIdentity,
            instance_id: Some("i-1".into()),
            parent: None,
            status: instauth_types::ConnectionStatus::Connected,
            lifecycle_state: instauth_types::LifecycleState::Ready,
            first_connected_at: None,
            last_connected_at: Some("2024-05-01T10:00:05Z".parse().unwrap()),
            require_agent_key: false,
            agent_key: None,
        };
        let mut w = WorkspaceInfo {
            name: "alice".into(),
            build_number: 2,
            resources: None,
            agents: vec![main.clone()],
        };
        assert_eq!(
            workspace(&w),
            "workspace alice build 2\n\
             AGENT  RESOURCE  AUTH                   INSTANCE  PARENT  STATUS     LIFECYCLE  LAST HEARTBEAT        KEY\n\
             main   dev       aws-instance-identity  i-1       -       connected  ready      2024-05-01T10:00:05Z  not bound\n"
        );
        let bound = AgentStatus {
            name: "dev".into(),
            require_agent_key: true,
            agent_key: Some(instauth_types::AgentKeyInfo {
                public_key: "k".into(),
                fingerprint: "Vkdap1RjR0wChd9d".into(),
                bound_at: "2024-05-01T10:00:00Z".parse().unwrap(),
            }),
            ..main.clone()
        };
        let with_keys = WorkspaceInfo {
            resources: Some(vec![instauth_types::ResourceInfo {
                name: "dev".into(),
                resource_type: "aws_instance".into(),
                expect: Some(
                    [("account_id", "111"), ("region", "us-east-1")]
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .into(),
                ),
            }]),
            agents: vec![bound, main],
            ..w.clone()
        };
        let table = workspace(&with_keys);
        assert!(
            table.starts_with(
                "workspace alice build 2\nresource dev expects account_id=111 region=us-east-1\n"
            ),
            "{table}"
        );
        assert!(
            table.contains("  bound Vkdap1RjR0wChd9d (required)\n"),
            "{table}"
        );
        w.resources = None;
        assert_eq!(
            workspaces(&[w]),
            "WORKSPACE  BUILD  AGENTS\nalice      2      main (connected)\n"
        );
        let b = BuildResponse {
            workspace: "alice".into(),
            build_number: 3,
            agents: vec![CreatedAgent {
                id: uuid::Uuid::nil(),
                name: "ci".into(),
                token: Some("iat_x".into()),
            }],
        };
        assert_eq!(
            build(&b),
            "workspace alice build 3\nAGENT  ID                                    TOKEN\n\
             ci     00000000-0000-0000-0000-000000000000  iat_x\n"
        );
    }
}
