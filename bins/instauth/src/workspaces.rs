//! The admin commands (`instauth workspaces ...`, `instauth audit`): flags and wiring to
//! `instauth-client`, which holds the HTTP client, the Terraform import and the renderers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use instauth_client::{render, terraform, Client, ClientError};
use instauth_types::BuildRequest;

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
    #[command(group(ArgGroup::new("source").required(true).args(["file", "terraform_state"])))]
    Apply {
        /// Workspace name.
        name: String,
        /// Build JSON: {"resources": [{"name", "type", "agents": [{"name", "auth", "instance_id"?, "parent"?}]}]}
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// The JSON `terraform show -json` prints for the workspace's applied template: agents
        /// from `coder_agent`, instance IDs from the compute resources.
        #[arg(long, value_name = "FILE")]
        terraform_state: Option<PathBuf>,
        /// Print the build body and exit without contacting the server.
        #[arg(long)]
        dry_run: bool,
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
    /// Forget the key bound to an agent (after its VM was rebuilt in place) and end its
    /// sessions; the agent's next signed exchange binds its key again.
    ResetKey {
        /// Workspace name.
        workspace: String,
        /// Agent name.
        agent: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `instauth audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// How many of the newest records to show (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Keep running and print new records as they are written (oldest first; one JSON object
    /// per line with -o json).
    #[arg(short = 'f', long)]
    follow: bool,
    /// How often --follow asks the server for new records.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    interval: Duration,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err("must be between 100ms and 1h".into());
    }
    Ok(d)
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
        Ok(Client::new(&self.url, &token)?)
    }
}

fn print(output: Output, table: impl FnOnce() -> String, json: impl FnOnce() -> String) {
    match output {
        Output::Table => print!("{}", table()),
        Output::Json => print!("{}", json()),
    }
}

/// Reads at most `cap` bytes of `path` (one more tells that it is larger).
fn read_file(path: &Path, cap: usize) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    file.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(out)
}

fn build_body(file: Option<&Path>, state: Option<&Path>) -> anyhow::Result<BuildRequest> {
    match (file, state) {
        (Some(file), None) => {
            let bytes = read_file(file, instauth_api::ADMIN_BODY_LIMIT)?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a build JSON", file.display()))
        }
        (None, Some(state)) => {
            let bytes = read_file(state, terraform::MAX_STATE_BYTES)?;
            terraform::build_request(&bytes)
                .with_context(|| format!("importing {}", state.display()))
        }
        // clap's "source" group makes exactly one of them present.
        _ => bail!("pass either -f BUILD.json or --terraform-state FILE"),
    }
}

/// Runs a workspace command.
pub async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Apply {
            name,
            file,
            terraform_state,
            dry_run,
            client,
        } => {
            let body = build_body(file.as_deref(), terraform_state.as_deref())?;
            if dry_run {
                print!("{}", render::json(&body));
                return Ok(());
            }
            let res = client.client()?.apply_build(&name, &body).await?;
            print(client.output, || render::build(&res), || render::json(&res));
        }
        Command::List { client } => {
            let res = client.client()?.list_workspaces().await?;
            print(
                client.output,
                || render::workspaces(&res),
                || render::json(&res),
            );
        }
        Command::Show { name, client } => {
            let w = client.client()?.workspace(&name).await?;
            print(client.output, || render::workspace(&w), || render::json(&w));
        }
        Command::Delete { name, client } => {
            client.client()?.delete_workspace(&name).await?;
            if let Output::Table = client.output {
                println!("workspace {} deleted", render::escape_controls(&name));
            }
        }
        Command::ResetKey {
            workspace,
            agent,
            client,
        } => {
            client.client()?.reset_agent_key(&workspace, &agent).await?;
            if let Output::Table = client.output {
                println!(
                    "agent {} of workspace {}: key binding reset, sessions ended; its next \
                     signed exchange binds its key",
                    render::escape_controls(&agent),
                    render::escape_controls(&workspace)
                );
            }
        }
    }
    Ok(())
}

/// A failure `--follow` outlasts: the server is away or busy for a moment.
fn transient(e: &ClientError) -> bool {
    matches!(e, ClientError::Request { .. }) || e.status().is_some_and(|s| s == 429 || s >= 500)
}

/// Runs `instauth audit`.
pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let c = args.client.client()?;
    let output = args.client.output;
    let mut entries = c.audit(Some(args.limit)).await?;
    if !args.follow {
        print(
            output,
            || render::audit(&entries),
            || render::json(&entries),
        );
        return Ok(());
    }
    // A tail: oldest first, then each new record as it is written.
    entries.reverse();
    if let Output::Table = output {
        print!("{}", render::audit_header());
    }
    let mut last = 0;
    loop {
        for e in &entries {
            print(output, || render::audit_line(e), || render::json_line(e));
            last = e.id;
        }
        tokio::time::sleep(args.interval).await;
        entries = match c.audit_after(last, Some(1000)).await {
            Ok(new) => new,
            Err(e) if transient(&e) => {
                eprintln!("warning: {e}; retrying");
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
    }
}
