//! What `cargo xtask` and the load test (`xtask/loadtest`) share: running cargo and other
//! programs, the workspace root, a PostgreSQL that answers. Kept to `anyhow` and `std` so that
//! `cargo xtask test` compiles only this before the tests' own build starts.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// Runs `cmd`, echoing it first; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// A cargo command for the cargo that runs this task. `cargo run` hands its program the package
/// variables of the package it ran; ring's build script tracks `CARGO_MANIFEST_DIR`, so passing
/// them on would make a nested build differ from a plain one (and rebuild the release tree on
/// every load test).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*key,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn postgres_answers() -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], 5432));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Tests use PostgreSQL for real. When INSTAUTH_TEST_POSTGRES_URL names another server, that is
/// the caller's to run; otherwise start the local cluster if it is down.
pub fn ensure_postgres() -> anyhow::Result<()> {
    if std::env::var_os("INSTAUTH_TEST_POSTGRES_URL").is_some() || postgres_answers() {
        return Ok(());
    }
    eprintln!("PostgreSQL is not answering on 127.0.0.1:5432: starting the local cluster");
    let versions = std::fs::read_dir("/etc/postgresql")
        .context("PostgreSQL is not installed (no /etc/postgresql); install it or set INSTAUTH_TEST_POSTGRES_URL")?;
    for v in versions.flatten() {
        let version = v.file_name().to_string_lossy().into_owned();
        run(Command::new("pg_ctlcluster").args([
            "--skip-systemctl-redirect",
            &version,
            "main",
            "start",
        ]))?;
    }
    for _ in 0..50 {
        if postgres_answers() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("PostgreSQL did not come up on 127.0.0.1:5432")
}
