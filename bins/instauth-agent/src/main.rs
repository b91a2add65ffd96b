//! instauth workspace agent: proves where it runs, and keeps its session alive.
//!
//! This file parses arguments, sets up logging and wires the SDK's pieces; the behaviour lives
//! in `instauth-agent-sdk`.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use instauth_agent_sdk::{agent_key, AgentAuth, AgentKey, GoogleIdentity};
use instauth_agent_sdk::{
    header_command, ops, parse_header, Agent, AgentOptions, Client, ClientOptions, Credentials,
    MetadataClient, MetadataEndpoints, Metrics, Session,
};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `--auth` values: the project's one spelling of the methods (SPEC §1).
fn auth_parser() -> impl clap::builder::TypedValueParser<Value = AgentAuth> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(AgentAuth::NAMES).try_map(|s| s.parse::<AgentAuth>())
}

/// Starts the workspace agent.
///
/// The agent authenticates to the server with a token or with this instance's cloud identity,
/// fetches its manifest and sends heartbeats until it receives SIGTERM or SIGINT.
///
/// Metadata service endpoints can be overridden with AWS_EC2_METADATA_SERVICE_ENDPOINT,
/// CODER_AGENT_AZURE_METADATA_URL and GCE_METADATA_HOST.
#[derive(Debug, Parser)]
#[command(name = "instauth-agent", version, max_term_width = 100)]
struct Args {
    /// Specify the authentication type to use for the agent.
    #[arg(long, env = "CODER_AGENT_AUTH", value_parser = auth_parser(), default_value = "token")]
    auth: AgentAuth,

    /// The name of this agent, required when several agents run on one instance.
    #[arg(long, env = "CODER_AGENT_NAME")]
    agent_name: Option<String>,

    /// An agent authentication token.
    #[arg(long, env = "CODER_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,

    /// A file containing an agent authentication token (re-read when the server refuses it).
    #[arg(long, env = "CODER_AGENT_TOKEN_FILE")]
    agent_token_file: Option<PathBuf>,

    /// URL for an agent to access your deployment.
    #[arg(long, env = "CODER_AGENT_URL")]
    agent_url: String,

    /// Additional HTTP headers added to all requests. Provide as key=value. Can be specified
    /// multiple times.
    #[arg(long, env = "CODER_AGENT_HEADER", value_delimiter = ',')]
    agent_header: Vec<String>,

    /// An external command that outputs additional HTTP headers added to all requests. The
    /// command must output each header as `key=value` on its own line.
    #[arg(long, env = "CODER_AGENT_HEADER_COMMAND")]
    agent_header_command: Option<String>,

    /// Output human-readable logs to a given file.
    #[arg(long, env = "CODER_AGENT_LOGGING_HUMAN", default_value = "/dev/stderr")]
    log_human: PathBuf,

    /// Output JSON logs to a given file.
    #[arg(long, env = "CODER_AGENT_LOGGING_JSON")]
    log_json: Option<PathBuf>,

    /// Specify the location for the agent log files (instauth-agent.log).
    #[arg(long, env = "CODER_AGENT_LOG_DIR")]
    log_dir: Option<PathBuf>,

    /// The bind address to serve Prometheus metrics (empty: do not serve).
    #[arg(
        long,
        env = "CODER_AGENT_PROMETHEUS_ADDRESS",
        default_value = "127.0.0.1:2112"
    )]
    prometheus_address: String,

    /// The bind address to serve a debug HTTP server (empty: do not serve).
    #[arg(
        long,
        env = "CODER_AGENT_DEBUG_ADDRESS",
        default_value = "127.0.0.1:2113"
    )]
    debug_address: String,

    /// The audience of the Google identity token; must match the server's.
    #[arg(long, env = "CODER_AGENT_GOOGLE_AUDIENCE", default_value = "coder")]
    google_audience: String,

    /// The service account whose Google identity token is used.
    #[arg(
        long,
        env = "CODER_AGENT_GOOGLE_SERVICE_ACCOUNT",
        default_value = "default"
    )]
    google_service_account: String,

    /// The file holding this agent's Ed25519 key (PKCS#8 DER), created (mode 0600, in a 0700
    /// directory) on first start; every exchange is signed with it and the server binds it to
    /// the agent name. Default: $XDG_STATE_HOME/instauth-agent/<agent name or "default">.key
    /// (else ~/.local/state/...). `none` sends no key.
    #[arg(long, env = "CODER_AGENT_KEY_FILE", value_name = "FILE")]
    agent_key_file: Option<PathBuf>,

    /// Time between heartbeats.
    #[arg(long, env = "CODER_AGENT_HEARTBEAT_INTERVAL", default_value = "15s",
          value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,

    /// Log debug messages too.
    #[arg(long, short, env = "CODER_AGENT_VERBOSE")]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_logging(&args) {
        eprintln!("instauth-agent: {e:#}");
        return ExitCode::FAILURE;
    }
    // One thread: the agent makes a request every few seconds; this keeps its memory small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("instauth-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let credentials = credentials(&args)?;
    let mut headers = args
        .agent_header
        .iter()
        .filter(|h| !h.trim().is_empty())
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(cmd) = args
        .agent_header_command
        .as_deref()
        .filter(|c| !c.trim().is_empty())
    {
        headers.extend(header_command(cmd).await?);
    }
    let client = Client::new(
        &args.agent_url,
        ClientOptions {
            headers,
            ..ClientOptions::default()
        },
    )?;
    let metrics = Arc::new(Metrics::default());
    let mut session =
        Session::new(client, credentials, args.agent_name.as_deref()).with_metrics(metrics.clone());
    if let Some(key) = agent_key(&args)? {
        session = session.with_agent_key(key);
    }
    let session = Arc::new(session);
    let agent = Agent::new(
        session,
        AgentOptions {
            heartbeat_interval: args.heartbeat_interval,
            ..AgentOptions::default()
        },
    );

    if let Some(listener) = bind(&args.prometheus_address, "Prometheus metrics").await {
        tokio::spawn(ops::serve_metrics(listener, metrics));
    }
    if let Some(listener) = bind(&args.debug_address, "the debug endpoint").await {
        tokio::spawn(ops::serve_debug(listener, agent.status()));
    }

    tracing::info!(
        url = %args.agent_url,
        auth = %args.auth,
        agent.name = args.agent_name.as_deref().unwrap_or(""),
        "Starting the agent."
    );
    agent.run(shutdown_signal()).await;
    tracing::info!("Stopped.");
    Ok(())
}

fn credentials(args: &Args) -> anyhow::Result<Credentials> {
    let Some(provider) = args.auth.provider() else {
        return match (&args.agent_token, &args.agent_token_file) {
            (Some(t), _) if !t.trim().is_empty() => Ok(Credentials::Token(t.clone())),
            (_, Some(path)) => Ok(Credentials::TokenFile(path.clone())),
            _ => bail!(
                "--auth token needs --agent-token (CODER_AGENT_TOKEN) or --agent-token-file \
                 (CODER_AGENT_TOKEN_FILE)"
            ),
        };
    };
    Ok(Credentials::InstanceIdentity {
        provider,
        metadata: MetadataClient::new(MetadataEndpoints::from_env())?,
        google: GoogleIdentity {
            service_account: args.google_service_account.clone(),
            audience: args.google_audience.clone(),
        },
    })
}

/// The agent key of `--agent-key-file`, loaded or created; none for token auth (which never
/// exchanges a proof) or with `--agent-key-file none`.
fn agent_key(args: &Args) -> anyhow::Result<Option<AgentKey>> {
    if !args.auth.is_instance_identity() {
        return Ok(None);
    }
    let path = match args.agent_key_file.as_deref() {
        Some(p) if p.as_os_str() == agent_key::NO_KEY => {
            tracing::info!("No agent key (--agent-key-file none): exchanges are not signed.");
            return Ok(None);
        }
        Some(p) => p.to_path_buf(),
        None => agent_key::default_path(args.agent_name.as_deref())?,
    };
    let (key, created) = AgentKey::load_or_create(&path)?;
    tracing::info!(
        path = %path.display(),
        fingerprint = %key.fingerprint(),
        "{}",
        if created {
            "Created a new agent key; the first exchange binds it to this agent."
        } else {
            "Loaded the agent key."
        }
    );
    Ok(Some(key))
}

/// Binds `addr`; a failure is logged, not fatal (several agents on one host share defaults).
async fn bind(addr: &str, what: &str) -> Option<tokio::net::TcpListener> {
    let addr = addr.trim();
    if addr.is_empty() {
        return None;
    }
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            if let Ok(local) = l.local_addr() {
                tracing::info!(address = %local, "Serving {what}.");
            }
            Some(l)
        }
        Err(e) => {
            tracing::warn!(address = addr, error = %e, "Cannot serve {what}; continuing without.");
            None
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => tracing::info!("Received SIGTERM."),
        _ = tokio::signal::ctrl_c() => tracing::info!("Received SIGINT."),
    }
}

fn open_log(path: &Path) -> anyhow::Result<BoxMakeWriter> {
    match path.to_str() {
        Some("/dev/stderr") => return Ok(BoxMakeWriter::new(std::io::stderr)),
        Some("/dev/stdout") => return Ok(BoxMakeWriter::new(std::io::stdout)),
        _ => {}
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log file {}", path.display()))?;
    Ok(BoxMakeWriter::new(Mutex::new(file)))
}

fn init_logging(args: &Args) -> anyhow::Result<()> {
    let level = if args.verbose { "debug" } else { "info" };
    let filter = || {
        EnvFilter::try_from_env("INSTAUTH_AGENT_LOG").unwrap_or_else(|_| {
            EnvFilter::new(format!(
                "warn,instauth_agent={level},instauth_agent_sdk={level}"
            ))
        })
    };
    let human_ansi =
        args.log_human.to_str() == Some("/dev/stderr") && std::io::stderr().is_terminal();
    let human = (!args.log_human.as_os_str().is_empty())
        .then(|| open_log(&args.log_human))
        .transpose()?
        .map(|w| {
            tracing_subscriber::fmt::layer()
                .with_writer(w)
                .with_ansi(human_ansi)
                .with_filter(filter())
        });
    let json = args
        .log_json
        .as_deref()
        .map(open_log)
        .transpose()?
        .map(|w| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(w)
                .with_filter(filter())
        });
    let dir = match &args.log_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("create log directory {}", dir.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(open_log(&dir.join("instauth-agent.log"))?)
                    .with_ansi(false)
                    .with_filter(filter()),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(human)
        .with(json)
        .with(dir)
        .try_init()
        .context("install the log subscriber")?;
    Ok(())
}
