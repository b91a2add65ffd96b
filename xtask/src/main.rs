//! Project automation (`cargo xtask <task>`):
//! - `test`: make sure PostgreSQL answers (starting the local cluster if needed) and that Chromium
//!   and chromedriver are installed for the dashboard's browser test (installing Debian's
//!   packages if needed), then run every test of the workspace (cargo-nextest when installed,
//!   else cargo test).
//! - `ci`: what CI runs (`.ci/run` calls it): `cargo fmt --check`, the unused-dependency check
//!   (cargo-machete, installed when missing, and the workspace's own dependency table), `cargo
//!   clippy -D warnings`, then `test`.
//! - `bench`: the criterion benchmarks.
//! - `loadtest`: a fleet's exchanges and heartbeats against the release server, beside
//!   `pgbench -S` (`cargo xtask loadtest --help`; docs/BENCHMARKS.md "Fleet load").

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use xtask::{cargo, ensure_postgres, run};

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True if `program` runs and reports a version.
fn answers(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The dashboard's browser test drives Debian's Chromium through chromedriver: install both when
/// missing. If that fails the other tests still run and the browser test fails, saying what is
/// missing; it never skips.
fn ensure_chromium() {
    if answers("chromium") && answers("chromedriver") {
        return;
    }
    eprintln!(
        "Chromium or chromedriver is missing: installing Debian's chromium and chromium-driver"
    );
    let installed = run(Command::new("apt-get").arg("update")).and_then(|()| {
        run(Command::new("apt-get")
            .args(["install", "-y", "chromium", "chromium-driver"])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    });
    if let Err(e) = installed {
        eprintln!(
            "error: installing chromium and chromium-driver failed ({e:#}); the dashboard's \
             browser test will fail. Install them as root: apt-get install -y chromium chromium-driver"
        );
    }
}

fn test() -> anyhow::Result<()> {
    ensure_postgres()?;
    ensure_chromium();
    if has_nextest() {
        run(cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]))?;
        run(cargo().args(["test", "--workspace", "--doc"]))
    } else {
        run(cargo().args(["test", "--workspace", "--no-fail-fast"]))
    }
}

fn ci() -> anyhow::Result<()> {
    // A CI run builds everything once from a clean tree: incremental compilation only costs it
    // time and gigabytes of disk. (Every cargo started from here inherits this.)
    std::env::set_var("CARGO_INCREMENTAL", "0");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    unused_dependencies()?;
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

/// The cargo-machete release CI installs when it is missing; pinned so that a new release
/// cannot fail CI on code that did not change.
const MACHETE: &str = "cargo-machete@0.9.2";

/// Fails on a dependency that no code uses: cargo-machete for each package (with cargo
/// metadata, so renamed libraries such as `rustls-webpki` -> `webpki` are matched), then the
/// workspace's own `[workspace.dependencies]`, which cargo-machete does not read.
fn unused_dependencies() -> anyhow::Result<()> {
    // cargo-machete takes itself for a cargo subcommand only when `CARGO_PKG_NAME` is unset,
    // and `cargo run` (which runs this task) sets it.
    let machete = || {
        let mut cmd = cargo();
        cmd.env_remove("CARGO_PKG_NAME").arg("machete");
        cmd
    };
    let installed = machete()
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !installed {
        run(cargo().args(["install", "--locked", MACHETE]))?;
    }
    run(machete().arg("--with-metadata"))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let unused = unused_workspace_dependencies(&root)?;
    if !unused.is_empty() {
        bail!(
            "[workspace.dependencies] entries no member inherits (remove them): {}",
            unused.join(", ")
        );
    }
    Ok(())
}

fn manifest(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse()
        .with_context(|| format!("parsing {}", path.display()))
}

/// `[workspace.dependencies]` entries of the manifest in `root` that no member inherits.
fn unused_workspace_dependencies(root: &Path) -> anyhow::Result<Vec<String>> {
    let workspace = manifest(&root.join("Cargo.toml"))?;
    let patterns = workspace
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array)
        .context("the root manifest has no [workspace] members")?;
    let mut members = Vec::new();
    for pattern in patterns {
        let pattern = pattern
            .as_str()
            .context("a workspace member is not a string")?;
        // The members are `dir/*` or plain paths; anything else would be skipped silently.
        let dirs = match pattern.strip_suffix("/*") {
            Some(parent) => std::fs::read_dir(root.join(parent))
                .with_context(|| format!("listing {parent}"))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()?,
            None if !pattern.contains(['*', '?', '[']) => vec![root.join(pattern)],
            None => bail!("unsupported workspace member pattern {pattern:?}"),
        };
        for dir in dirs {
            let path = dir.join("Cargo.toml");
            if path.is_file() {
                members.push(manifest(&path)?);
            }
        }
    }
    Ok(never_inherited(&workspace, &members))
}

/// Names in `workspace`'s `[workspace.dependencies]` that no manifest of `members` inherits
/// (`name.workspace = true` in any dependency table, target-specific ones included).
fn never_inherited(workspace: &toml::Table, members: &[toml::Table]) -> Vec<String> {
    const TABLES: [&str; 3] = ["dependencies", "dev-dependencies", "build-dependencies"];
    fn tables(t: &toml::Table) -> impl Iterator<Item = &toml::Table> {
        TABLES
            .iter()
            .filter_map(|name| t.get(*name).and_then(toml::Value::as_table))
    }
    let mut inherited = BTreeSet::new();
    for member in members {
        let targets = member
            .get("target")
            .and_then(toml::Value::as_table)
            .into_iter()
            .flat_map(|t| t.values().filter_map(toml::Value::as_table));
        for deps in tables(member).chain(targets.flat_map(tables)) {
            for (name, spec) in deps {
                if spec.get("workspace").and_then(toml::Value::as_bool) == Some(true) {
                    inherited.insert(name.as_str());
                }
            }
        }
    }
    workspace
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(toml::Value::as_table)
        .into_iter()
        .flat_map(|deps| deps.keys())
        .filter(|name| !inherited.contains(name.as_str()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
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
        // The load test is its own package so that its dependencies (the test PKI, an HTTP
        // client, clap) are not compiled before every `cargo xtask test`.
        "loadtest" => run(cargo()
            .args(["run", "--quiet", "--package", "loadtest", "--"])
            .args(&args[1..])),
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

    /// The repository itself passes the workspace half of the unused-dependency check.
    #[test]
    fn every_workspace_dependency_is_inherited() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        assert_eq!(
            super::unused_workspace_dependencies(&root).unwrap(),
            Vec::<String>::new()
        );
    }

    /// The workspace dependency check finds entries no member inherits, in any table.
    #[test]
    fn never_inherited_lists_workspace_dependencies_no_member_uses() {
        let workspace: toml::Table = r#"
            [workspace]
            members = ["crates/*"]
            [workspace.dependencies]
            used = "1"
            dev-only = "1"
            target-only = "1"
            unused = "1"
            declared-locally = "1"
        "#
        .parse()
        .unwrap();
        let a: toml::Table = r#"
            [dependencies]
            used.workspace = true
            declared-locally = "1"
            [dev-dependencies]
            dev-only = { workspace = true, features = ["x"] }
        "#
        .parse()
        .unwrap();
        let b: toml::Table = r#"
            [target.'cfg(unix)'.dependencies]
            target-only.workspace = true
        "#
        .parse()
        .unwrap();
        assert_eq!(
            super::never_inherited(&workspace, &[a, b]),
            ["declared-locally", "unused"]
        );
    }
}
