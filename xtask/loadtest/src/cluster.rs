//! A PostgreSQL cluster of the invocation's own (`--shared-buffers`): `initdb` in a temporary
//! directory, started on a free loopback port with the given `shared_buffers`, stopped and
//! removed when the run ends. The machine's shared cluster is never reconfigured or restarted:
//! other work relies on it as it is.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context};

/// Its directory's name in the temporary directory: this, the PID of the load test, a dash.
const PREFIX: &str = "instauth-loadtest-pg-";

/// A running cluster; stopped and deleted on drop.
pub struct OwnCluster {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    // Held for its removal on drop, after the cluster has stopped.
    _dir: tempfile::TempDir,
}

impl OwnCluster {
    /// Creates and starts a cluster with `shared_buffers = shared_buffers` (a PostgreSQL size,
    /// e.g. `1GB`), trust authentication for `postgres`, and otherwise the defaults of `initdb`
    /// (the locale of the machine's cluster, `C.UTF-8`, so text compares the same way).
    pub fn start(shared_buffers: &str) -> anyhow::Result<OwnCluster> {
        ensure!(
            !shared_buffers.is_empty() && shared_buffers.chars().all(|c| c.is_ascii_alphanumeric()),
            "--shared-buffers takes a PostgreSQL size such as 1GB or 512MB, not {shared_buffers:?}"
        );
        let bindir = newest_bindir()?;
        // initdb and postgres refuse to run as root: as root, run them as `postgres`.
        let as_postgres = effective_uid()? == 0;
        stop_orphans(&bindir, as_postgres);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating the cluster's directory")?;
        if as_postgres {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()))?;
        }
        let data = dir.path().join("data");
        let port = free_port()?;
        let cluster = OwnCluster {
            bindir,
            data,
            port,
            as_postgres,
            _dir: dir,
        };
        eprintln!(
            "loadtest: a cluster of its own ({}) on port {port}, shared_buffers = {shared_buffers}",
            cluster.data.display()
        );
        run(cluster
            .command("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--locale=C.UTF-8",
                "--no-sync",
            ]))?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c shared_buffers={shared_buffers}",
            cluster.data.display()
        );
        let log = cluster.data.join("postgresql.log");
        run(cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(&cluster.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"]))?;
        Ok(cluster)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn command(&self, program: &str) -> Command {
        command(&self.bindir, self.as_postgres, program)
    }
}

fn command(bindir: &Path, as_postgres: bool, program: &str) -> Command {
    let path = bindir.join(program);
    if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(path);
        cmd
    } else {
        Command::new(path)
    }
}

/// Stops and removes the clusters of earlier load tests whose process is gone (interrupted
/// runs, which never reached the drop); a running load test's own are left alone.
fn stop_orphans(bindir: &Path, as_postgres: bool) {
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!(
            "loadtest: stopping and removing {}, left by an interrupted load test",
            entry.path().display()
        );
        let _ = command(bindir, as_postgres, "pg_ctl")
            .arg("-D")
            .arg(entry.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        if let Err(e) = std::fs::remove_dir_all(entry.path()) {
            eprintln!("warning: could not remove {}: {e}", entry.path().display());
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .output();
        if !stopped.is_ok_and(|o| o.status.success()) {
            eprintln!(
                "warning: could not stop the cluster at {}",
                self.data.display()
            );
        }
    }
}

/// The `bin` directory of the newest PostgreSQL installed the Debian way
/// (`/usr/lib/postgresql/<major>/bin`), else the one of `initdb` on `PATH`.
fn newest_bindir() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|p| p.join("initdb").is_file())
        .context("no PostgreSQL server binaries (initdb) found: install the postgresql package")
}

/// The effective user ID, from `/proc/self/status` (its `Uid:` line: real, effective, ...).
fn effective_uid() -> anyhow::Result<u32> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_effective_uid(&status).context("no Uid line in /proc/self/status")
}

fn parse_effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A loopback port nothing listens on now.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_uid() {
        let status = "Name:\tcargo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn refuses_a_size_that_is_not_one() {
        let err = OwnCluster::start("1GB -c fsync=off")
            .err()
            .expect("refused");
        assert!(format!("{err}").contains("--shared-buffers"), "{err}");
    }
}
