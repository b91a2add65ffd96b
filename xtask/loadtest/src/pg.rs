//! PostgreSQL through its own clients only (`psql`, `pgbench`): the server's throw-away
//! database, the transaction counters of `pg_stat_database`, and the `pgbench -S` yardstick.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Host, default port and user of the cluster (trust authentication).
const HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 5432;
const USER: &str = "postgres";

/// The port of the cluster this invocation runs on ([`use_port`]; the shared one by default).
static PORT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Runs everything on the cluster at `port` instead of the shared one (e.g. a cluster of one's
/// own with other settings). Call once, before anything else here.
pub fn use_port(port: u16) {
    let _ = PORT.set(port.to_string());
}

fn port() -> &'static str {
    PORT.get().map_or("5432", String::as_str)
}

/// The database `pgbench -i` fills once and later runs reuse.
pub const PGBENCH_DB: &str = "instauth_pgbench";
/// `pgbench -i -s` scale: 10 → 1 M accounts, 160 MB, small enough to stay cached.
pub const PGBENCH_SCALE: u32 = 10;

/// PostgreSQL ≥ 15 flushes a backend's counters at most once a second while it is busy, and
/// within 10 s (PGSTAT_IDLE_INTERVAL) of it going idle; read no sooner than this after the last
/// request.
pub const STATS_IDLE_FLUSH: Duration = Duration::from_secs(11);

fn psql_command(database: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", HOST, "-p", port(), "-U", USER, "-d", database])
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE");
    cmd
}

/// Runs `sql` in `database` and returns its trimmed output.
pub fn psql(database: &str, sql: &str) -> anyhow::Result<String> {
    let out = psql_command(database)
        .args(["-c", sql])
        .output()
        .context("running psql (is the postgresql-client package installed?)")?;
    if !out.status.success() {
        bail!(
            "psql -d {database} -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A database made for one run and dropped (with its connections) when this goes out of scope.
pub struct TempDatabase {
    name: String,
    dropped: bool,
}

impl TempDatabase {
    /// Creates `name` (which must be a plain identifier).
    pub fn create(name: &str) -> anyhow::Result<TempDatabase> {
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            bail!("not a plain database name: {name:?}");
        }
        psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(TempDatabase {
            name: name.to_owned(),
            dropped: false,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL for `instauth server --postgres-url`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@{HOST}:{}/{}", port(), self.name)
    }

    /// Drops it now, reporting failure.
    pub fn drop_now(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .map(|_| ())
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        if !self.dropped {
            if let Err(e) = psql(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ) {
                eprintln!("warning: could not drop database {}: {e:#}", self.name);
            }
        }
    }
}

/// Drops the databases of earlier load tests whose process is gone (interrupted runs); a
/// running load test's own, named after its live PID, are left alone.
pub fn drop_orphaned_databases() -> anyhow::Result<()> {
    let names = psql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datname LIKE 'instauth\\_load\\_%'",
    )?;
    for name in names.lines() {
        let pid = name
            .strip_prefix("instauth_load_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("dropping {name}, left by an interrupted load test");
                psql(
                    "postgres",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )?;
            }
        }
    }
    Ok(())
}

/// One line for the record: which cluster the run used and the settings that size it.
pub fn describe_cluster() -> anyhow::Result<String> {
    let settings = psql(
        "postgres",
        "SELECT current_setting('server_version') || ', shared_buffers ' || \
         current_setting('shared_buffers') || ', effective_cache_size ' || \
         current_setting('effective_cache_size')",
    )?;
    Ok(format!("PostgreSQL {settings}, at {HOST}:{}", port()))
}

/// True when a database of that name exists.
pub fn database_exists(name: &str) -> anyhow::Result<bool> {
    Ok(psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
    )? == "1")
}

/// The postmaster's PID: the parent of the checkpointer, a process that lives as long as the
/// cluster does.
pub fn postmaster_pid() -> anyhow::Result<u32> {
    let pid: u32 = psql(
        "postgres",
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
    )?
    .parse()
    .context("reading the checkpointer's PID")?;
    Ok(super::cpu::read_stat(pid)?.ppid)
}

/// Committed plus rolled-back transactions of `database` as `pg_stat_database` shows them now.
pub fn xacts(database: &str) -> anyhow::Result<u64> {
    // Queried from another database so that the query itself is not counted, and in a fresh
    // session each time so that no cached statistics snapshot is read.
    psql(
        "postgres",
        &format!(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{database}'"
        ),
    )?
    .parse()
    .with_context(|| format!("reading pg_stat_database for {database}"))
}

/// The counter once every backend has flushed: at least [`STATS_IDLE_FLUSH`] after `last_activity`,
/// then until two reads half a second apart agree (bounded by a deadline).
pub fn settled_xacts(database: &str, last_activity: Instant) -> anyhow::Result<u64> {
    let ready = last_activity + STATS_IDLE_FLUSH;
    if let Some(wait) = ready.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = xacts(database)?;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = xacts(database)?;
        if now == last {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("pg_stat_database for {database} kept moving ({last} -> {now}) for 30 s");
        }
        last = now;
    }
}

/// Creates and initialises the pgbench database unless a complete one is there already.
pub fn ensure_pgbench_database() -> anyhow::Result<()> {
    if database_exists(PGBENCH_DB)? {
        let branches = psql(PGBENCH_DB, "SELECT count(*) FROM pgbench_branches").ok();
        if branches.as_deref() == Some(&PGBENCH_SCALE.to_string()) {
            return Ok(());
        }
        psql(
            "postgres",
            &format!("DROP DATABASE {PGBENCH_DB} WITH (FORCE)"),
        )?;
    }
    eprintln!("initialising {PGBENCH_DB} (pgbench -i -s {PGBENCH_SCALE}, kept for later runs)");
    psql("postgres", &format!("CREATE DATABASE {PGBENCH_DB}"))?;
    let status = Command::new("pgbench")
        .args(["-h", HOST, "-p", port(), "-U", USER, "-i", "-q"])
        .args(["-s", &PGBENCH_SCALE.to_string(), PGBENCH_DB])
        .status()
        .context("running pgbench (is the postgresql-contrib or postgresql package installed?)")?;
    if !status.success() {
        bail!("pgbench -i failed: {status}");
    }
    Ok(())
}

/// The outcome of `pgbench -S`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pgbench {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    /// Transactions processed.
    pub transactions: u64,
    /// Average latency in milliseconds.
    pub latency_avg_ms: f64,
    /// Failed transactions (pgbench ≥ 15 reports them).
    pub failed: u64,
}

/// The `pgbench` command line of the yardstick, for the record.
pub fn pgbench_args(seconds: u64) -> Vec<String> {
    [
        "-h",
        HOST,
        "-p",
        port(),
        "-U",
        USER,
        "-S",
        "-M",
        "prepared",
        "-c16",
        "-j2",
        "-T",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([seconds.to_string(), PGBENCH_DB.to_string()])
    .collect()
}

/// Runs `pgbench -S -M prepared -c16 -j2 -T seconds` against [`PGBENCH_DB`].
pub fn run_pgbench(seconds: u64) -> anyhow::Result<Pgbench> {
    let out = Command::new("pgbench")
        .args(pgbench_args(seconds))
        .output()
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_pgbench(&stdout)
}

/// Reads tps, transactions, latency and failures from pgbench's report.
pub fn parse_pgbench(text: &str) -> anyhow::Result<Pgbench> {
    let number_after = |prefix: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
    };
    let tps = number_after("tps = ").context("pgbench printed no tps")?;
    let transactions = number_after("number of transactions actually processed: ")
        .context("pgbench printed no transaction count")?;
    Ok(Pgbench {
        tps,
        transactions: transactions as u64,
        latency_avg_ms: number_after("latency average = ").unwrap_or(f64::NAN),
        failed: number_after("number of failed transactions: ").unwrap_or(0.0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_15: &str = "pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 20 s
number of transactions actually processed: 812345
number of failed transactions: 0 (0.000%)
latency average = 0.394 ms
initial connection time = 21.345 ms
tps = 40617.250000 (without initial connection time)
";

    #[test]
    fn parses_pgbench_report() {
        let p = parse_pgbench(PGBENCH_15).expect("parses");
        assert_eq!(p.transactions, 812_345);
        assert_eq!(p.failed, 0);
        assert!((p.tps - 40617.25).abs() < 1e-6);
        assert!((p.latency_avg_ms - 0.394).abs() < 1e-9);
    }

    #[test]
    fn pgbench_report_without_tps_is_an_error() {
        assert!(parse_pgbench("pgbench: error: connection refused").is_err());
    }

    #[test]
    fn pgbench_command_is_the_documented_one() {
        let args = pgbench_args(20).join(" ");
        assert!(
            args.contains("-S -M prepared -c16 -j2 -T 20 instauth_pgbench"),
            "{args}"
        );
    }

    #[test]
    fn refuses_odd_database_names() {
        assert!(TempDatabase::create("x; DROP DATABASE postgres").is_err());
    }
}
