//! Running the real `instauth` binary in tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest wait for a started server's "listening on" line (migrations included).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `instauth server`, killed on drop if still running.
pub struct Server {
    pub child: Child,
    pub url: String,
    /// What the server wrote to stderr so far, when started with [`Server::start_logged`].
    pub log: Arc<Mutex<String>>,
}

/// The `instauth` command with a clean environment for data directories.
pub fn instauth(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_instauth"));
    cmd.env_remove("XDG_DATA_HOME")
        .env_remove("INSTAUTH_DATA_DIR")
        .env_remove("INSTAUTH_POSTGRES_URL")
        .env_remove("INSTAUTH_LISTEN")
        .env("HOME", home);
    cmd
}

impl Server {
    /// Starts `cmd` (an `instauth server ...` command) and waits, at most [`START_TIMEOUT`],
    /// for its "listening on" line.
    pub fn start(cmd: Command) -> Server {
        Server::spawn(cmd, false)
    }

    /// Like [`Server::start`], keeping stderr in [`Server::log`] (and echoing it).
    pub fn start_logged(cmd: Command) -> Server {
        Server::spawn(cmd, true)
    }

    fn spawn(mut cmd: Command, logged: bool) -> Server {
        cmd.stdout(Stdio::piped()).stderr(if logged {
            Stdio::piped()
        } else {
            Stdio::inherit()
        });
        let mut child = cmd.spawn().expect("spawn instauth");
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        // Read on a thread so the wait has a deadline; it keeps draining stdout afterwards so
        // the server never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        // From here a panic drops the server, which kills the process.
        let mut server = Server {
            child,
            url: String::new(),
            log,
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => server.url = url,
            Err(RecvTimeoutError::Disconnected) => {
                let status = server.child.wait().expect("wait");
                panic!("instauth server exited before listening: {status}");
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("instauth server did not listen within {START_TIMEOUT:?}")
            }
        }
        server
    }

    /// Waits (at most 10 s) until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("instauth did not stop within 5 s of SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
