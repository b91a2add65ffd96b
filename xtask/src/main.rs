//! Project automation (`cargo xtask <task>`):
//! - `test`: make sure PostgreSQL answers (starting the local cluster if needed), then run every
//!   test of the workspace (cargo-nextest when installed, else cargo test).
//! - `ci`: what CI runs: `cargo fmt --check`, `cargo clippy -D warnings`, then `test`.
//! - `bench`: the criterion benchmarks.
//! - `loadtest`: a fleet's exchanges and heartbeats against the release server, beside
//!   `pgbench -S` (`cargo xtask loadtest --help`; docs/BENCHMARKS.md "Fleet load").

mod loadtest;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The workspace root (the parent of `xtask/`).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn postgres_answers() -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], 5432));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Tests use PostgreSQL for real. When INSTAUTH_TEST_POSTGRES_URL names another server, that is
/// the caller's to run; otherwise start the local cluster if it is down.
pub(crate) fn ensure_postgres() -> anyhow::Result<()> {
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

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn test() -> anyhow::Result<()> {
    ensure_postgres()?;
    if has_nextest() {
        run(cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]))?;
        run(cargo().args(["test", "--workspace", "--doc"]))
    } else {
        run(cargo().args(["test", "--workspace", "--no-fail-fast"]))
    }
}

fn ci() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    test()
}

fn bench() -> anyhow::Result<()> {
    run(cargo().args(["bench", "--workspace"]))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str).unwrap_or_default() {
        "test" => test(),
        "ci" => ci(),
        "bench" => bench(),
        "loadtest" => loadtest::main(&args[1..]),
        _ => bail!("usage: cargo xtask <test|ci|bench|loadtest>"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every crate and binary folder is named in the codemap.
    #[test]
    fn architecture_codemap_names_every_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
        let mut checked = 0;
        for dir in ["crates", "bins"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let entry = entry.unwrap();
                if entry.path().is_dir() {
                    let name = format!("`{dir}/{}`", entry.file_name().to_string_lossy());
                    assert!(doc.contains(&name), "docs/ARCHITECTURE.md lacks {name}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 12, "found only {checked} crates");
    }
}
