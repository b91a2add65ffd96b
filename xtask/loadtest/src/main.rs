//! `cargo xtask loadtest`: a fleet's load on a real `instauth server` over loopback, measured
//! against `pgbench -S` on the same PostgreSQL in the same run (issue 11's table).
//!
//! One run per backend and fleet size: start the release server on a free port with a fresh
//! database (a temporary data directory for SQLite, a PostgreSQL database created and dropped),
//! register N agents through the admin API, sign K = min(N, --proofs) AWS proofs with the test
//! region keys, exchange each once for a session token, then run back to back for S seconds each:
//! wrk rotating the exchange bodies, wrk rotating the session tokens on heartbeats, and
//! `pgbench -S -M prepared -c16 -j2`. Any failed request makes the run invalid and the command
//! fail.

mod cluster;
mod cpu;
mod pg;
mod report;
mod seed;
mod server;
mod wrk;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::{Parser, ValueEnum};
use instauth_testkit::TestPki;

use report::{LoadResult, RunResult, EXCHANGE, HEARTBEAT, PGBENCH};

/// Database backend of the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The embedded SQLite file.
    Sqlite,
    /// PostgreSQL at 127.0.0.1:5432.
    Postgres,
    /// Both, one after the other.
    Both,
}

/// Which server loads to run (pgbench always runs: it is the yardstick).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Token exchanges only.
    Exchange,
    /// Heartbeats only.
    Heartbeat,
    /// Exchanges, then heartbeats.
    All,
}

/// Drive a fleet's exchanges and heartbeats against a real server and compare with pgbench -S.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask loadtest")]
struct Args {
    /// Agents to register.
    #[arg(long, default_value_t = 100_000)]
    agents: usize,
    /// Seconds per load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Server database [default: postgres; both with --smoke].
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads (1–2 keep the load generator's share of the 2 cores small).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Loads to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Most distinct proofs and session tokens the loads rotate through.
    #[arg(long, default_value_t = 20_000)]
    proofs: usize,
    /// Run at each of these fleet sizes (e.g. 1000,1000000) and print the latency ratio.
    #[arg(long, value_delimiter = ',')]
    compare_agents: Option<Vec<usize>>,
    /// Exit non-zero when a target of issue 11 is missed.
    #[arg(long)]
    check: bool,
    /// Quick self-test of the tool: 200 agents, 2 s per load, both backends unless --backend.
    #[arg(long)]
    smoke: bool,
    /// PostgreSQL port on 127.0.0.1 (another cluster than the shared one, e.g. with other
    /// settings: the server, its databases and pgbench all run there).
    #[arg(long, default_value_t = pg::DEFAULT_PORT)]
    postgres_port: u16,
    /// Run on a PostgreSQL cluster of this invocation's own with this `shared_buffers` (e.g.
    /// 1GB: sized for the fleet as docs/OPERATIONS.md says), created in a temporary directory on
    /// a free port and removed at exit; the shared cluster is left as it is.
    #[arg(long, value_name = "SIZE", conflicts_with = "postgres_port")]
    shared_buffers: Option<String>,
    /// Use this `instauth` binary instead of building the release one.
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Also run this `instauth` binary (an older build), alternating with the one under test,
    /// and print every measurement as a ratio to it: absolute numbers vary from host to host
    /// and hour to hour, ratios measured side by side much less.
    #[arg(long, conflicts_with = "smoke")]
    baseline: Option<PathBuf>,
    /// Rounds: with --baseline, runs of each binary, alternating, baseline first (default 2);
    /// with --compare-agents alone, passes over the fleet sizes, alternating (default 1).
    #[arg(long)]
    rounds: Option<usize>,
}

/// Everything shared by the runs of one invocation.
struct Context_ {
    postmaster: u32,
    clock_ticks: u64,
    pki: TestPki,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    seconds: u64,
    connections: u32,
    threads: u32,
    scenario: Scenario,
    runs: usize,
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = Args::parse_from(
        std::iter::once("cargo xtask loadtest".to_owned()).chain(argv.iter().cloned()),
    );
    let command = format!("cargo xtask loadtest {}", argv.join(" "));
    let (sizes, seconds) = if args.smoke {
        (vec![200], 2)
    } else {
        (
            args.compare_agents.clone().unwrap_or(vec![args.agents]),
            args.seconds,
        )
    };
    ensure!(sizes.iter().all(|&n| n > 0), "--agents must be positive");
    ensure!(seconds > 0, "--seconds must be positive");
    ensure!(
        args.connections > 0 && args.threads > 0,
        "--connections and --threads must be positive"
    );
    ensure!(
        args.connections >= args.threads,
        "wrk needs at least one connection per thread"
    );
    ensure!(args.rounds != Some(0), "--rounds must be positive");
    ensure!(
        args.rounds.is_none() || args.baseline.is_some() || args.compare_agents.is_some(),
        "--rounds needs --baseline or --compare-agents"
    );
    // Host noise drifts over minutes: repeated runs alternate rather than follow each other.
    let (binary_rounds, size_rounds) = match (&args.baseline, &args.compare_agents) {
        (Some(_), _) => (args.rounds.unwrap_or(2), 1),
        (None, Some(_)) => (1, args.rounds.unwrap_or(1)),
        (None, None) => (1, 1),
    };
    let backends = match args.backend.unwrap_or(if args.smoke {
        Backend::Both
    } else {
        Backend::Postgres
    }) {
        Backend::Both => vec![Backend::Sqlite, Backend::Postgres],
        b => vec![b],
    };

    // Lives until the end of main: the cluster stops when it drops.
    let own_cluster = match &args.shared_buffers {
        Some(size) => Some(cluster::OwnCluster::start(size)?),
        None => None,
    };
    match &own_cluster {
        Some(c) => pg::use_port(c.port()),
        None => {
            if args.postgres_port == pg::DEFAULT_PORT {
                xtask::ensure_postgres()?;
            }
            pg::use_port(args.postgres_port);
        }
    }
    wrk::ensure_installed()?;
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => build_release()?,
    };
    // Each run: the binary, and its label when compared with a baseline.
    let binaries: Vec<(PathBuf, Option<String>)> = match &args.baseline {
        None => vec![(binary, None)],
        Some(base) => {
            ensure!(base.is_file(), "no baseline binary at {}", base.display());
            (1..=binary_rounds)
                .flat_map(|round| {
                    [
                        (base.clone(), Some(format!("baseline {round}"))),
                        (binary.clone(), Some(format!("candidate {round}"))),
                    ]
                })
                .collect()
        }
    };
    pg::ensure_pgbench_database()?;
    pg::drop_orphaned_databases()?;
    let ctx = Context_ {
        postmaster: pg::postmaster_pid()?,
        clock_ticks: cpu::clock_ticks(),
        pki: TestPki::new(),
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?,
        client: reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?,
        seconds,
        connections: args.connections,
        threads: args.threads,
        scenario: args.scenario,
        runs: 0,
    };
    let mut ctx = ctx;

    let mut signed = Vec::new();
    for &n in &sizes {
        let sampled = seed::sample(n, args.proofs.max(1));
        step(&format!(
            "signing {} AWS proofs (rsa2048 PKCS#7 + signature)",
            sampled.len()
        ));
        let started = Instant::now();
        let bodies = seed::proofs(&ctx.pki, &sampled)?;
        signed.push((n, bodies, started.elapsed().as_secs_f64()));
    }
    let mut results = Vec::new();
    for round in 1..=size_rounds {
        for (n, bodies, proofs_s) in &signed {
            for &backend in &backends {
                for (binary, label) in &binaries {
                    let mut r = run_one(&mut ctx, binary, *n, backend, bodies)?;
                    r.proofs_s = *proofs_s;
                    r.binary = label
                        .clone()
                        .or_else(|| (size_rounds > 1).then(|| format!("round {round}")));
                    results.push(r);
                }
            }
        }
    }

    println!("\n## {command}\n");
    println!("{}", report::markdown(&results));
    print!("{}", report::setup_lines(&results));
    if backends.contains(&Backend::Postgres) {
        println!("{}", pg::describe_cluster()?);
    }
    let mut missed = Vec::new();
    // With a baseline, its runs are the yardstick, not candidates for the targets.
    for r in results.iter().filter(|r| !r.is_baseline()) {
        let t = report::targets(r);
        if !t.is_empty() {
            println!(
                "\n{}",
                report::targets_markdown(
                    &format!("issue 11 target ({}, {} agents)", r.backend, r.agents),
                    &t
                )
            );
        }
        missed.extend(t.into_iter().filter(|t| !t.met));
    }
    if args.baseline.is_some() {
        for &n in &sizes {
            for &backend in &backends {
                let name = backend_name(backend);
                let runs: Vec<&RunResult> = results
                    .iter()
                    .filter(|r| r.backend == name && r.agents == n)
                    .collect();
                let (table, relative) = report::versus(&runs);
                println!("\n{table}");
                if !relative.is_empty() {
                    println!(
                        "{}",
                        report::targets_markdown(
                            &format!("issue 11 target as a ratio to the baseline ({name})"),
                            &relative
                        )
                    );
                }
            }
        }
    }
    if sizes.len() > 1 {
        for &backend in &backends {
            let name = backend_name(backend);
            let of_backend: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.backend == name && !r.is_baseline())
                .collect();
            let sized = |n: Option<&usize>| -> Vec<&RunResult> {
                of_backend
                    .iter()
                    .copied()
                    .filter(|r| Some(&r.agents) == n)
                    .collect()
            };
            let (small, large) = (sized(sizes.first()), sized(sizes.last()));
            if !small.is_empty() && !large.is_empty() {
                let (table, checks) = report::compare(&small, &large);
                println!("\n{table}");
                println!("{}", report::targets_markdown("scale target", &checks));
                missed.extend(checks.into_iter().filter(|t| !t.met));
            }
        }
    }
    if args.smoke {
        smoke_checks(&results, &backends, args.proofs)?;
    }
    if args.check && !missed.is_empty() {
        bail!(
            "{} target(s) of issue 11 missed: {}",
            missed.len(),
            missed
                .iter()
                .map(|t| format!("{} {} (target {})", t.what, t.measured, t.target))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("loadtest: {what}");
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres | Backend::Both => "postgres",
    }
}

/// Builds the release `instauth` and returns its path.
fn build_release() -> anyhow::Result<PathBuf> {
    step("building the release instauth binary");
    let mut cmd = xtask::cargo();
    cmd.args(["build", "--release", "-p", "instauth", "--bin", "instauth"]);
    xtask::run(&mut cmd)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| xtask::workspace_root().join("target"));
    let binary = target.join("release/instauth");
    ensure!(binary.is_file(), "no binary at {}", binary.display());
    Ok(binary)
}

/// A 0600 file with a fresh random admin token; returns the token.
fn write_admin_token(path: &Path) -> anyhow::Result<String> {
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom")?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .context("creating the admin token file")?;
    f.write_all(token.as_bytes())
        .context("writing the admin token file")?;
    Ok(token)
}

/// CPU ticks at one instant.
struct Snapshot {
    server: u64,
    postgres: cpu::PgTicks,
    children: u64,
}

fn snapshot(
    ctx: &Context_,
    server_pid: Option<u32>,
    database: Option<&str>,
) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        server: match server_pid {
            Some(pid) => cpu::read_stat(pid)?.own(),
            None => 0,
        },
        postgres: cpu::postgres_ticks(ctx.postmaster, database)?,
        children: cpu::reaped_children_ticks()?,
    })
}

/// µs of CPU per request for a tick delta.
fn per_request(ctx: &Context_, ticks: u64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| ticks as f64 * 1e6 / ctx.clock_ticks as f64 / requests as f64)
}

fn run_one(
    ctx: &mut Context_,
    binary: &Path,
    agents: usize,
    backend: Backend,
    bodies: &[String],
) -> anyhow::Result<RunResult> {
    let name = backend_name(backend);
    ctx.runs += 1;
    step(&format!("{name}, {agents} agents: starting the server"));
    let loadavg_before = cpu::loadavg();
    let dir = tempfile::Builder::new()
        .prefix("instauth-loadtest-")
        .tempdir()
        .context("creating a temporary directory")?;
    let token_file = dir.path().join("admin-token");
    let admin_token = write_admin_token(&token_file)?;
    let certs = dir.path().join("aws-certificates.pem");
    std::fs::write(&certs, ctx.pki.aws_certificates_pem(seed::REGION))
        .context("writing the test AWS certificates")?;
    let db = match backend {
        Backend::Postgres | Backend::Both => Some(pg::TempDatabase::create(&format!(
            "instauth_load_{}_{}",
            std::process::id(),
            ctx.runs
        ))?),
        Backend::Sqlite => None,
    };
    let database = match &db {
        Some(db) => server::Database::Postgres(db.url()),
        None => server::Database::Sqlite,
    };
    let db_name = db.as_ref().map(|d| d.name().to_owned());
    let db_name = db_name.as_deref();
    let mut srv = server::Server::start(binary, dir.path(), &database, &token_file, &certs)?;
    eprintln!("  {} (pid {})", srv.url, srv.pid);

    step(&format!(
        "registering {agents} agents through the admin API"
    ));
    let seed_s = ctx
        .rt
        .block_on(seed::seed(&ctx.client, &srv.url, &admin_token, agents))?
        .as_secs_f64();
    eprintln!("  {seed_s:.1} s");
    if let Some(db) = db_name {
        // As a maintained database would be: fresh planner statistics, no autovacuum of the
        // seeded tables running into the measurements.
        pg::psql(db, "VACUUM (ANALYZE)")?;
    }

    let bodies_file = dir.path().join("exchange-bodies.jsonl");
    std::fs::write(&bodies_file, bodies.join("\n")).context("writing the exchange bodies")?;
    step(&format!(
        "exchanging {} proofs once for session tokens",
        bodies.len()
    ));
    let started = Instant::now();
    let tokens = ctx
        .rt
        .block_on(seed::exchange_all(&ctx.client, &srv.url, bodies))?;
    let tokens_s = started.elapsed().as_secs_f64();
    // Steady state: every agent of a running fleet has heartbeated before (the server's
    // liveness cache knows it). Only a restarted server meets each agent once, uncached.
    step(&format!(
        "one heartbeat per session token ({})",
        tokens.len()
    ));
    ctx.rt
        .block_on(seed::heartbeat_all(&ctx.client, &srv.url, &tokens))?;
    let tokens_file = dir.path().join("session-tokens.txt");
    std::fs::write(&tokens_file, tokens.join("\n")).context("writing the session tokens")?;
    let script = wrk::write_script(dir.path())?;

    let modes: &[wrk::Mode] = match ctx.scenario {
        Scenario::Exchange => &[wrk::Mode::Exchange],
        Scenario::Heartbeat => &[wrk::Mode::Heartbeat],
        Scenario::All => &[wrk::Mode::Exchange, wrk::Mode::Heartbeat],
    };
    let mut last_activity = Instant::now();
    let mut xacts = match db_name {
        Some(db) => {
            step("waiting for pg_stat_database to settle");
            Some(pg::settled_xacts(db, last_activity)?)
        }
        None => None,
    };
    let url = srv.url.clone();
    let mut loads = Vec::new();
    for &mode in modes {
        let (label, file) = match mode {
            wrk::Mode::Exchange => (EXCHANGE, &bodies_file),
            wrk::Mode::Heartbeat => (HEARTBEAT, &tokens_file),
        };
        let load = wrk::Load {
            url: &url,
            script: &script,
            mode,
            file,
            threads: ctx.threads,
            connections: ctx.connections,
            seconds: ctx.seconds,
        };
        step(&format!("{label} load: wrk {}", load.args().join(" ")));
        srv.check_running()?;
        let before = snapshot(ctx, Some(srv.pid), db_name)?;
        let (w, text) = load.run()?;
        let after = snapshot(ctx, Some(srv.pid), db_name)?;
        last_activity = Instant::now();
        srv.check_running()?;
        eprint!("{text}");
        if w.failures() > 0 {
            bail!(
                "INVALID RUN: {label} load had {} failed requests (status ≥ 400: {}, connect {}, \
                 read {}, write {}, timeouts {}) of {}",
                w.failures(),
                w.status_errors,
                w.connect_errors,
                w.read_errors,
                w.write_errors,
                w.timeouts,
                w.requests
            );
        }
        ensure!(
            w.requests > 0,
            "INVALID RUN: {label} load completed no request"
        );
        let xacts_per_request = match (db_name, xacts) {
            (Some(db), Some(x0)) => {
                step("waiting for pg_stat_database to settle");
                let x1 = pg::settled_xacts(db, last_activity)?;
                xacts = Some(x1);
                Some(x1.saturating_sub(x0) as f64 / w.requests as f64)
            }
            _ => None,
        };
        let postgres = db_name.is_some();
        loads.push(LoadResult {
            name: label.into(),
            requests: w.requests,
            rps: w.rps(),
            p50_us: Some(w.p50_us as f64),
            p99_us: Some(w.p99_us as f64),
            xacts_per_request,
            server_cpu_us: per_request(ctx, after.server.saturating_sub(before.server), w.requests),
            pg_cpu_us: postgres
                .then(|| {
                    per_request(
                        ctx,
                        after.postgres.total.saturating_sub(before.postgres.total),
                        w.requests,
                    )
                })
                .flatten(),
            pg_backends_cpu_us: postgres
                .then(|| {
                    per_request(
                        ctx,
                        after
                            .postgres
                            .database_backends
                            .saturating_sub(before.postgres.database_backends),
                        w.requests,
                    )
                })
                .flatten(),
            client_cpu_us: per_request(
                ctx,
                after.children.saturating_sub(before.children),
                w.requests,
            ),
            failures: 0,
        });
    }

    step(&format!(
        "pgbench {}",
        pg::pgbench_args(ctx.seconds).join(" ")
    ));
    let before = snapshot(ctx, None, None)?;
    let p = pg::run_pgbench(ctx.seconds)?;
    cpu::wait_backends_reaped(ctx.postmaster, pg::PGBENCH_DB)?;
    let after = snapshot(ctx, None, None)?;
    eprintln!(
        "  tps {:.0}, {} transactions, latency average {:.3} ms, {} failed",
        p.tps, p.transactions, p.latency_avg_ms, p.failed
    );
    if p.failed > 0 {
        bail!("INVALID RUN: pgbench had {} failed transactions", p.failed);
    }
    loads.push(LoadResult {
        name: PGBENCH.into(),
        requests: p.transactions,
        rps: p.tps,
        pg_cpu_us: per_request(
            ctx,
            after.postgres.total.saturating_sub(before.postgres.total),
            p.transactions,
        ),
        client_cpu_us: per_request(
            ctx,
            after.children.saturating_sub(before.children),
            p.transactions,
        ),
        ..Default::default()
    });

    srv.check_running()?;
    srv.stop()?;
    if let Some(db) = db {
        db.drop_now()?;
    }
    dir.close().context("removing the temporary directory")?;
    Ok(RunResult {
        backend: name.into(),
        agents,
        distinct: bodies.len(),
        seconds: ctx.seconds,
        connections: ctx.connections,
        seed_s,
        proofs_s: 0.0,
        tokens_s,
        loads,
        loadavg: (loadavg_before, cpu::loadavg()),
        binary: None,
    })
}

/// What `--smoke` asserts about a finished invocation, beyond the checks every run makes
/// (no failed request, server alive, clean stop, database dropped).
fn smoke_checks(results: &[RunResult], backends: &[Backend], proofs: usize) -> anyhow::Result<()> {
    ensure!(
        results.len() == backends.len(),
        "smoke: {} runs for {} backends",
        results.len(),
        backends.len()
    );
    let mut checks = 0;
    for r in results {
        for name in [EXCHANGE, HEARTBEAT, PGBENCH] {
            let l = r
                .load(name)
                .with_context(|| format!("smoke: {} run has no {name} load", r.backend))?;
            ensure!(
                l.requests > 0 && l.rps > 0.0,
                "smoke: {} {name}: no requests",
                r.backend
            );
            ensure!(l.failures == 0, "smoke: {} {name}: failures", r.backend);
            ensure!(
                l.client_cpu_us.is_some_and(|x| x.is_finite()),
                "smoke: {} {name}: no client CPU",
                r.backend
            );
            checks += 3;
            if name != PGBENCH {
                ensure!(
                    l.p50_us.is_some_and(|p| p > 0.0) && l.p99_us >= l.p50_us,
                    "smoke: {} {name}: latencies {:?} {:?}",
                    r.backend,
                    l.p50_us,
                    l.p99_us
                );
                ensure!(
                    l.server_cpu_us.is_some(),
                    "smoke: {} {name}: no server CPU",
                    r.backend
                );
                checks += 2;
                if r.backend == "postgres" {
                    ensure!(
                        l.xacts_per_request
                            .is_some_and(|x| x.is_finite() && x >= 0.0)
                            && l.pg_cpu_us.is_some(),
                        "smoke: postgres {name}: no database numbers"
                    );
                    checks += 1;
                }
            }
        }
        ensure!(
            r.distinct == r.agents.min(proofs.max(1)),
            "smoke: {} distinct proofs",
            r.distinct
        );
        checks += 1;
    }
    let leftover = pg::psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'instauth_load_{}_%'",
            std::process::id()
        ),
    )?;
    ensure!(
        leftover == "0",
        "smoke: {leftover} load test databases left behind"
    );
    checks += 1;
    println!("\nsmoke: {checks} checks passed");
    Ok(())
}
