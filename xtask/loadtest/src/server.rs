//! The `instauth server` under test: started from the release binary on a free loopback port,
//! stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a start (including migrations on a fresh database) may take.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a graceful stop (finishing requests, flushing the audit log) may take.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Where the server keeps its data.
pub enum Database {
    /// The embedded SQLite file in the data directory.
    Sqlite,
    /// PostgreSQL at this URL.
    Postgres(String),
}

/// A running server, killed on drop if still running.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its process ID, for `/proc/<pid>/stat`.
    pub pid: u32,
    log: PathBuf,
}

impl Server {
    /// Starts `binary server` with its data in `dir` and waits for its `listening on` line.
    pub fn start(
        binary: &Path,
        dir: &Path,
        database: &Database,
        admin_token_file: &Path,
        aws_certificates: &Path,
    ) -> anyhow::Result<Server> {
        let data_dir = dir.join("data");
        let log = dir.join("server.log");
        let mut cmd = Command::new(binary);
        // Only the flags below configure it: no INSTAUTH_* variable of the caller leaks in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("INSTAUTH_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("server")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--admin-token-file")
            .arg(admin_token_file)
            .arg("--aws-certificates")
            .arg(aws_certificates)
            .args(["--exchange-rate-limit", "0"]);
        if let Database::Postgres(url) = database {
            cmd.args(["--postgres-url", url]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("creating the server log")?);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads the `listening on` line, then keeps draining so the server never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        let _ = tx.send(url.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let started = Instant::now();
        let url = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(url) => break url,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait().context("waiting for the server")? {
                        bail!(
                            "the server exited before listening ({status}):\n{}",
                            tail(&log)
                        );
                    }
                    if started.elapsed() > START_DEADLINE {
                        let _ = child.kill();
                        bail!(
                            "the server did not listen within {START_DEADLINE:?}:\n{}",
                            tail(&log)
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().context("waiting for the server")?;
                    bail!(
                        "the server exited before listening ({status}):\n{}",
                        tail(&log)
                    );
                }
            }
        };
        Ok(Server {
            pid: child.id(),
            child,
            url,
            log,
        })
    }

    /// Fails, with the end of its log, when the server is no longer running.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("polling the server")? {
            bail!("the server exited ({status}):\n{}", tail(&self.log));
        }
        Ok(())
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the server")? {
                if !status.success() {
                    bail!("the server exited with {status}:\n{}", tail(&self.log));
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("the server did not stop within {STOP_DEADLINE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
