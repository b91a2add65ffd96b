//! `instauth`: the server and its admin CLI. Wiring only: parse arguments, set up logging,
//! build the pieces from the library crates and run them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
}

#[derive(Args, Clone)]
struct DbArgs {
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
    /// Log format.
    #[arg(long, env = "INSTAUTH_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
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

    fn database(&self) -> anyhow::Result<DatabaseConfig> {
        Ok(match &self.postgres_url {
            Some(url) => DatabaseConfig::Postgres { url: url.clone() },
            None => DatabaseConfig::Sqlite {
                path: instauth_store::sqlite_path(&self.data_dir()?),
            },
        })
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INSTAUTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn open_store(db: &DbArgs) -> anyhow::Result<Store> {
    let config = db.database()?;
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("Shutting down: finishing in-flight requests.");
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let store = open_store(&args.db).await?;
    let app = instauth_api::router(instauth_api::AppState::new(store));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    println!("listening on http://{addr}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("serving HTTP")?;
    tracing::info!("Stopped.");
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => server(args).await,
        Command::Migrate(args) => migrate(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
