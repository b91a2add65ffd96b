//! `instauth`: the server and its admin CLI. Wiring only: parse arguments, set up logging,
//! build the pieces from the library crates and run them.

mod access;
mod identity;
mod logsink;
mod trust;
mod workspaces;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use instauth_store::{DatabaseConfig, Store};

#[derive(Parser)]
#[command(
    name = "instauth",
    version,
    about = "Authenticate workspace agents by cloud instance identity"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Server(ServerArgs),
    /// Apply pending database migrations and exit.
    Migrate(DbArgs),
    /// Manage workspaces through the admin API.
    #[command(subcommand)]
    Workspaces(workspaces::Command),
    /// Show exchange attempts from the audit log, or follow it.
    Audit(workspaces::AuditArgs),
    /// Inspect instance identity proofs.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Manage the session signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect the trust material (AWS region certificates, Azure roots and issuing CAs).
    #[command(subcommand)]
    Trust(TrustCommand),
}

#[derive(Subcommand)]
enum TrustCommand {
    /// List every built-in, configured and fetched trust certificate, soonest expiry first;
    /// exit code 1 if one that is still needed expires within 30 days.
    List(trust::TrustListArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Add a new session signing key; tokens signed by the previous keys stay valid until they
    /// expire. Running servers pick the new key up within a minute.
    Rotate(DbArgs),
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Verify an exchange request body offline and print the identity it proves.
    Verify(identity::IdentityVerifyArgs),
}

#[derive(Args, Clone)]
pub(crate) struct DbArgs {
    /// Directory for the embedded database and the admin token.
    /// Default: $XDG_DATA_HOME/instauth or ~/.local/share/instauth.
    #[arg(long, env = "INSTAUTH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://user@host:port/db); when absent the embedded SQLite database
    /// <data-dir>/instauth.db is used.
    #[arg(long, env = "INSTAUTH_POSTGRES_URL")]
    postgres_url: Option<String>,
}

#[derive(Copy, Clone, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Args)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "INSTAUTH_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    #[command(flatten)]
    db: DbArgs,
    /// File holding the admin token; default <data-dir>/admin-token, created (mode 0600) with a
    /// random token on first start.
    #[arg(long, env = "INSTAUTH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    trust: trust::TrustArgs,
    /// Fetch an unknown Azure issuing CA from the signer certificate's AIA URL (Microsoft's
    /// and DigiCert's certificate hosts only; bounded, cached in the database, rate-limited).
    #[arg(long, env = "INSTAUTH_AZURE_AIA", value_enum, default_value = "on")]
    azure_aia: trust::OnOff,
    /// How long a session token is valid (1m to 366d).
    #[arg(long, env = "INSTAUTH_SESSION_TTL", default_value = "24h", value_parser = duration_between("1m", "366d"))]
    session_ttl: Duration,
    /// Expected agent heartbeat interval; an agent is connected for 3 intervals after one
    /// (1s to 1h).
    #[arg(long, env = "INSTAUTH_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = duration_between("1s", "1h"))]
    heartbeat_interval: Duration,
    /// Retry-After of 404 and 409 exchange answers (1s to 1h).
    #[arg(long, env = "INSTAUTH_RETRY_AFTER", default_value = "5s", value_parser = duration_between("1s", "1h"))]
    retry_after: Duration,
    /// Audit records older than this are deleted (1h to 3660d).
    #[arg(long, env = "INSTAUTH_AUDIT_RETENTION", default_value = "30d", value_parser = duration_between("1h", "3660d"))]
    audit_retention: Duration,
    /// How long in-flight requests may take to finish after SIGTERM before connections are
    /// closed (0s to 10m).
    #[arg(long, env = "INSTAUTH_SHUTDOWN_DEADLINE", default_value = "20s", value_parser = duration_between("0s", "10m"))]
    shutdown_deadline: Duration,
    /// Token exchanges per second per client address (bursts of twice that); 0 disables.
    #[arg(long, env = "INSTAUTH_EXCHANGE_RATE_LIMIT", default_value_t = 50)]
    exchange_rate_limit: u32,
    /// Comma-separated CIDRs (or addresses) of proxies whose X-Forwarded-For names the client
    /// (for the rate limit and the audit); from anyone else the header is ignored.
    #[arg(long, env = "INSTAUTH_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Log format.
    #[arg(long, env = "INSTAUTH_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(flatten)]
    allow: access::AllowArgs,
    /// Every exchange must be signed with an agent key; without one an agent gets 401 "Invalid
    /// agent key.". Agents that hold a key bind it on their first exchange either way (see
    /// "Agent keys" in docs/OPERATIONS.md).
    #[arg(long, env = "INSTAUTH_REQUIRE_AGENT_KEYS")]
    require_agent_keys: bool,
}

/// A duration flag's parser that accepts `min..=max` only, so a typo fails at start with an
/// error naming the flag (clap adds it) instead of overflowing later.
fn duration_between(
    min: &'static str,
    max: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let d = humantime::parse_duration(s.trim()).map_err(|e| e.to_string())?;
        let (lo, hi) = (
            humantime::parse_duration(min).map_err(|e| e.to_string())?,
            humantime::parse_duration(max).map_err(|e| e.to_string())?,
        );
        if d < lo || d > hi {
            return Err(format!("must be between {min} and {max}"));
        }
        Ok(d)
    }
}

/// A CIDR, or a single address (a /32 or /128).
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8) or an IP address"))
}

/// Logs each permission that was tightened.
fn log_tightened(changed: Vec<instauth_store::files::Tightened>) {
    for t in changed {
        tracing::warn!(
            path = %t.path.display(),
            was = format!("{:o}", t.was),
            now = format!("{:o}", t.now),
            "Tightened permissions: the file was readable by other users."
        );
    }
}

/// Reads the admin token from `path`, or creates it (mode 0600) with a random token.
fn admin_token(path: &Path) -> anyhow::Result<String> {
    log_tightened(instauth_store::files::private_file(path)?);
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => anyhow::bail!("admin token file {} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            instauth_store::files::private_dir(dir)?;
        }
    }
    let token = format!("iadm_{}", hex_token());
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{token}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("admin token written to {}", path.display());
    Ok(token)
}

fn hex_token() -> String {
    instauth_api::session::random_secret()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("instauth"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("neither XDG_DATA_HOME nor HOME is set: pass --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/instauth"))
}

impl DbArgs {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => default_data_dir(),
        }
    }

    pub(crate) fn database(&self) -> anyhow::Result<DatabaseConfig> {
        Ok(match &self.postgres_url {
            Some(url) => DatabaseConfig::Postgres { url: url.clone() },
            None => DatabaseConfig::Sqlite {
                path: instauth_store::sqlite_path(&self.data_dir()?),
            },
        })
    }
}

fn init_logging(format: LogFormat) {
    init_logging_to(format, std::io::stderr);
}

/// The server's logging: lines are written by a thread of their own (module `logsink`); the
/// guard writes out what is left when the server stops.
fn init_server_logging(format: LogFormat) -> anyhow::Result<logsink::FlushGuard> {
    let (sink, guard) =
        logsink::LogSink::spawn(std::io::stderr()).context("starting the log writer")?;
    init_logging_to(format, sink);
    Ok(guard)
}

fn init_logging_to<W>(format: LogFormat, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("INSTAUTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a log file or journald would keep the escapes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn open_store(db: &DbArgs) -> anyhow::Result<Store> {
    let config = db.database()?;
    if let DatabaseConfig::Sqlite { path } = &config {
        log_tightened(instauth_store::files::private_sqlite(path)?);
    }
    let what = config.describe();
    let store = Store::connect(config)
        .await
        .with_context(|| format!("connecting to {what}"))?;
    let applied = store
        .migrate()
        .await
        .with_context(|| format!("migrating {what}"))?;
    tracing::info!(database = %what, applied = applied.len(), "Database ready.");
    Ok(store)
}

/// Re-reads the trust files on every SIGHUP for as long as the server runs. The handler is
/// installed when this is called (before "listening on"): SIGHUP's default action ends the
/// process.
fn reload_on_sighup(
    state: instauth_api::AppState,
    files: instauth_api::TrustFiles,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let (state, files) = (state.clone(), files.clone());
                // Reading and parsing certificates is blocking work.
                let reloaded =
                    tokio::task::spawn_blocking(move || state.reload_trust(&files)).await;
                match reloaded {
                    Ok(Ok(())) => tracing::info!("SIGHUP: reloaded the trust files."),
                    Ok(Err(e)) => tracing::error!(
                        error = %e,
                        "SIGHUP: reloading the trust files failed; the previous trust material stays in use."
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: reloading the trust files failed; the previous trust material stays in use."
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (state, files);
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a signal that arrives right after "listening on" must not find the
/// default action (exit without flushing) still in place.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Shutting down: finishing in-flight requests.");
    })
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let _log = init_server_logging(args.log_format)?;
    let token_path = match &args.admin_token_file {
        Some(p) => p.clone(),
        None => args.db.data_dir()?.join("admin-token"),
    };
    let shutdown = shutdown_signal()?;
    let admin_token = admin_token(&token_path)?;
    let mut verifiers = args
        .trust
        .verifiers(Arc::new(instauth_verify::SystemClock))?;
    instauth_api::verifiers::warn_expiring(&verifiers.trust_certificates(), chrono::Utc::now());
    let store = open_store(&args.db).await?;
    if args.azure_aia == trust::OnOff::On {
        let cache = instauth_api::aia_cache::StoreAiaCache::new(store.clone());
        let fetcher = instauth_verify_azure::AiaFetcher::new(Some(Arc::new(cache)))
            .context("setting up --azure-aia")?;
        verifiers = verifiers.with_aia(fetcher);
    }
    let (state, audit) = instauth_api::AppState::new(
        store,
        verifiers,
        instauth_api::ApiConfig {
            session_ttl: args.session_ttl,
            heartbeat_interval: args.heartbeat_interval,
            admin_token,
            exchange_rate_limit: args.exchange_rate_limit,
            retry_after: args.retry_after,
            audit_retention: args.audit_retention,
            trusted_proxies: args.trusted_proxies.clone(),
            allow_lists: args.allow.lists(),
            require_agent_keys: args.require_agent_keys,
            clock: Arc::new(instauth_verify::SystemClock),
        },
    )
    .await
    .context("loading the session key")?;
    tracing::info!(admin_token_file = %token_path.display(), "Admin token ready.");
    reload_on_sighup(state.clone(), args.trust.files())?;
    let app = instauth_api::router(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!("listening on http://{addr}");
    let serve_config = instauth_api::serve::ServeConfig {
        shutdown_deadline: args.shutdown_deadline,
        ..Default::default()
    };
    match instauth_api::serve::serve(listener, app, serve_config, shutdown).await {
        instauth_api::serve::Shutdown::Graceful => {}
        instauth_api::serve::Shutdown::DeadlineReached(open) => tracing::warn!(
            connections = open,
            deadline = ?args.shutdown_deadline,
            "Shutdown deadline reached: closing the remaining connections."
        ),
    }
    audit.shutdown().await;
    tracing::info!("Stopped.");
    Ok(())
}

async fn rotate_keys(args: DbArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Human);
    let store = open_store(&args).await?;
    let id = store
        .rotate_session_key(instauth_api::session::random_secret())
        .await
        .context("adding a session key")?;
    println!(
        "session key {id} now signs new tokens; tokens signed by earlier keys stay valid until \
         they expire (running servers pick the key up within a minute)"
    );
    Ok(())
}

async fn migrate(args: DbArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Human);
    let config = args.database()?;
    let what = config.describe();
    let store = Store::connect(config).await?;
    let applied = store
        .migrate()
        .await
        .with_context(|| format!("migrating {what}"))?;
    if applied.is_empty() {
        println!("{what}: up to date");
    } else {
        println!("{what}: applied {}", applied.join(", "));
    }
    Ok(())
}

/// mimalloc rather than glibc's malloc: an exchange allocates on an HTTP worker and frees on a
/// verification thread (and back), and glibc's per-arena locks made that cross-thread traffic
/// about a fifth of the server's CPU under load (docs/BENCHMARKS.md "Exchange profile").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => server(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Keys(KeysCommand::Rotate(args)) => rotate_keys(args).await,
        Command::Workspaces(cmd) => workspaces::run(cmd).await,
        Command::Audit(args) => workspaces::audit(args).await,
        Command::Identity(IdentityCommand::Verify(args)) => {
            return identity::run(args).await.unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            })
        }
        Command::Trust(TrustCommand::List(args)) => {
            return trust::list(args).await.unwrap_or_else(|e| {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
