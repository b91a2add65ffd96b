//! `instauth workspaces apply|list|show|delete`: an admin client over the HTTP API.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use instauth_types::{BuildRequest, BuildResponse, ErrorResponse, WorkspaceInfo};

/// Output format.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The API's JSON, for scripts.
    Json,
}

/// How to reach the admin API.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Server URL.
    #[arg(
        long,
        env = "INSTAUTH_URL",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    url: String,
    /// Admin token; default: read from --admin-token-file or <data-dir>/admin-token.
    #[arg(
        long,
        env = "INSTAUTH_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "INSTAUTH_ADMIN_TOKEN_FILE", global = true)]
    admin_token_file: Option<PathBuf>,
    /// The server's data directory (where the admin token file is by default).
    #[arg(long, env = "INSTAUTH_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    output: Output,
}

/// Workspace commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new build of a workspace (creating the workspace if needed).
    Apply {
        /// Workspace name.
        name: String,
        /// Build JSON: {"resources": [{"name", "type", "agents": [{"name", "auth", "instance_id"?, "parent"?}]}]}
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List workspaces.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a workspace's latest build and its agents' status.
    Show {
        /// Workspace name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a workspace: its agents can no longer authenticate.
    Delete {
        /// Workspace name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    output: Output,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let path = match (&self.admin_token_file, &self.data_dir) {
                    (Some(p), _) => p.clone(),
                    (None, Some(d)) => d.join("admin-token"),
                    (None, None) => crate::default_data_dir()?.join("admin-token"),
                };
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "reading the admin token from {} (pass --token or set INSTAUTH_ADMIN_TOKEN)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()?,
            url: self.url.trim_end_matches('/').to_owned(),
            token,
            output: self.output,
        })
    }
}

impl Client {
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let res = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        if res.status().is_success() {
            return Ok(res);
        }
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorResponse>(&text) {
            Ok(e) => {
                let mut msg = format!("{status}: {}", e.message);
                if let Some(d) = e.detail {
                    msg.push_str(&format!(" ({d})"));
                }
                for v in e.validations {
                    msg.push_str(&format!("\n  {}: {}", v.field, v.detail));
                }
                bail!(msg)
            }
            Err(_) => bail!("{status}: {text}"),
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn agent_rows(w: &WorkspaceInfo) -> Vec<Vec<String>> {
    let mut rows = vec![vec![
        "AGENT".into(),
        "RESOURCE".into(),
        "AUTH".into(),
        "INSTANCE".into(),
        "PARENT".into(),
        "STATUS".into(),
        "LIFECYCLE".into(),
    ]];
    for a in &w.agents {
        rows.push(vec![
            a.name.clone(),
            a.resource_name.clone(),
            a.auth.to_string(),
            a.instance_id.clone().unwrap_or_default(),
            a.parent.clone().unwrap_or_default(),
            a.status.to_string(),
            a.lifecycle_state.to_string(),
        ]);
    }
    rows
}

/// Runs a workspace command.
pub async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Apply { name, file, client } => {
            let c = client.client()?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: BuildRequest = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a build JSON", file.display()))?;
            let res: BuildResponse = c
                .send(
                    c.http
                        .post(format!("{}/api/v2/workspaces/{name}/builds", c.url))
                        .json(&body),
                )
                .await?
                .json()
                .await?;
            match c.output {
                Output::Json => print_json(&res)?,
                Output::Table => {
                    println!("workspace {} build {}", res.workspace, res.build_number);
                    let mut rows = vec![vec!["AGENT".into(), "ID".into(), "TOKEN".into()]];
                    for a in res.agents {
                        rows.push(vec![a.name, a.id.to_string(), a.token.unwrap_or_default()]);
                    }
                    table(rows);
                }
            }
        }
        Command::List { client } => {
            let c = client.client()?;
            let res: Vec<WorkspaceInfo> = c
                .send(c.http.get(format!("{}/api/v2/workspaces", c.url)))
                .await?
                .json()
                .await?;
            match c.output {
                Output::Json => print_json(&res)?,
                Output::Table => {
                    let mut rows = vec![vec!["WORKSPACE".into(), "BUILD".into(), "AGENTS".into()]];
                    for w in res {
                        let agents: Vec<String> = w
                            .agents
                            .iter()
                            .map(|a| format!("{} ({})", a.name, a.status))
                            .collect();
                        rows.push(vec![w.name, w.build_number.to_string(), agents.join(", ")]);
                    }
                    table(rows);
                }
            }
        }
        Command::Show { name, client } => {
            let c = client.client()?;
            let w: WorkspaceInfo = c
                .send(c.http.get(format!("{}/api/v2/workspaces/{name}", c.url)))
                .await?
                .json()
                .await?;
            match c.output {
                Output::Json => print_json(&w)?,
                Output::Table => {
                    println!("workspace {} build {}", w.name, w.build_number);
                    table(agent_rows(&w));
                }
            }
        }
        Command::Delete { name, client } => {
            let c = client.client()?;
            c.send(c.http.delete(format!("{}/api/v2/workspaces/{name}", c.url)))
                .await?;
            if let Output::Table = c.output {
                println!("workspace {name} deleted");
            }
        }
    }
    Ok(())
}
