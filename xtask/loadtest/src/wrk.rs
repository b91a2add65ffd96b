//! The HTTP load generator: wrk from Debian's packages, driven by a Lua script that rotates
//! prepared requests (exchange bodies or session tokens) and prints its own summary as JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Installs wrk with apt when it is not on the PATH.
pub fn ensure_installed() -> anyhow::Result<()> {
    if is_installed() {
        return Ok(());
    }
    eprintln!("wrk is missing: installing it from Debian's packages");
    let script = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk";
    let status = Command::new("sh")
        .args(["-c", script])
        .status()
        .context("running apt-get")?;
    if !status.success() || !is_installed() {
        bail!("could not install wrk ({status}); install it with `apt-get install wrk`");
    }
    Ok(())
}

fn is_installed() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wrk"))
        .unwrap_or(false)
}

/// What a load sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `POST` each line of the file as an AWS exchange body.
    Exchange,
    /// `POST {"lifecycle_state":"ready"}` as a heartbeat, with each line as the session token.
    Heartbeat,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Exchange => "exchange",
            Mode::Heartbeat => "heartbeat",
        }
    }
}

/// Requests are formatted once per thread in `init`, so `request` only picks the next one: the
/// Lua per request stays a table lookup. `done` prints the summary as one JSON line (latencies
/// in microseconds) so nothing has to be scraped from wrk's human report.
const SCRIPT: &str = r#"-- Written by `cargo xtask loadtest`.
local mode = os.getenv("LOADTEST_MODE")
local file = os.getenv("LOADTEST_FILE")
local threads = tonumber(os.getenv("LOADTEST_THREADS") or "1")
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

local reqs = {}
local n = 0
local i = 0

function init(args)
  local json = { ["Content-Type"] = "application/json" }
  for line in io.lines(file) do
    if line ~= "" then
      n = n + 1
      if mode == "exchange" then
        reqs[n] = wrk.format("POST", "/api/v2/workspaceagents/aws-instance-identity", json, line)
      else
        local h = { ["Content-Type"] = "application/json", ["Coder-Session-Token"] = line }
        reqs[n] = wrk.format("POST", "/api/v2/workspaceagents/me/heartbeat", h,
                             '{"lifecycle_state":"ready"}')
      end
    end
  end
  if n == 0 then error("no requests in " .. file) end
  -- Threads start at different places so that they do not send the same agent in step.
  i = math.floor(((tid or 0) * n) / threads)
end

function request()
  i = i % n + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LOADTEST_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.status, e.connect, e.read, e.write,
    e.timeout))
end
"#;

/// Writes the Lua script into `dir`.
pub fn write_script(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("loadtest.lua");
    std::fs::write(&path, SCRIPT).context("writing the wrk script")?;
    Ok(path)
}

/// wrk's summary of one load.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WrkResult {
    /// Completed requests.
    pub requests: u64,
    /// Measured time, µs.
    pub duration_us: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 90th percentile latency, µs.
    pub p90_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Slowest request, µs.
    pub max_us: u64,
    /// Responses with a status of 400 or more.
    pub status_errors: u64,
    /// Connections that could not be opened.
    pub connect_errors: u64,
    /// Socket read errors.
    pub read_errors: u64,
    /// Socket write errors.
    pub write_errors: u64,
    /// Requests that timed out.
    pub timeouts: u64,
}

impl WrkResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        if self.duration_us == 0 {
            return 0.0;
        }
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }

    /// Requests that did not get a 2xx answer, or got none.
    pub fn failures(&self) -> u64 {
        self.status_errors
            + self.connect_errors
            + self.read_errors
            + self.write_errors
            + self.timeouts
    }
}

/// Finds the script's `LOADTEST_RESULT` line in wrk's output.
pub fn parse_result(stdout: &str) -> anyhow::Result<WrkResult> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOADTEST_RESULT "))
        .context("wrk printed no LOADTEST_RESULT line")?;
    serde_json::from_str(line).context("parsing wrk's result line")
}

/// How to run one load.
pub struct Load<'a> {
    /// `http://127.0.0.1:PORT`.
    pub url: &'a str,
    /// The Lua script from [`write_script`].
    pub script: &'a Path,
    /// What to send.
    pub mode: Mode,
    /// One request body or session token per line.
    pub file: &'a Path,
    /// wrk threads.
    pub threads: u32,
    /// Open connections.
    pub connections: u32,
    /// Duration.
    pub seconds: u64,
}

impl Load<'_> {
    /// The wrk arguments.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.seconds),
            "--timeout".into(),
            "10s".into(),
            "--latency".into(),
            "-s".into(),
            self.script.display().to_string(),
            self.url.to_owned(),
        ]
    }

    /// Runs wrk and returns its summary and its full report.
    pub fn run(&self) -> anyhow::Result<(WrkResult, String)> {
        let out = Command::new("wrk")
            .args(self.args())
            .env("LOADTEST_MODE", self.mode.as_str())
            .env("LOADTEST_FILE", self.file)
            .env("LOADTEST_THREADS", self.threads.to_string())
            .output()
            .context("running wrk")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "wrk failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((parse_result(&stdout)?, stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_script_summary() {
        let out = "Running 2s test @ http://127.0.0.1:1\n  1 threads and 8 connections\n\
                   LOADTEST_RESULT {\"requests\":2000,\"duration_us\":2000000,\"p50_us\":310,\
                   \"p90_us\":600,\"p99_us\":1500,\"mean_us\":350.5,\"max_us\":9000,\
                   \"status_errors\":1,\"connect_errors\":0,\"read_errors\":2,\
                   \"write_errors\":0,\"timeouts\":3}\n";
        let r = parse_result(out).expect("parses");
        assert_eq!(r.requests, 2000);
        assert!((r.rps() - 1000.0).abs() < 1e-9);
        assert_eq!(r.p99_us, 1500);
        assert_eq!(r.failures(), 6);
    }

    #[test]
    fn missing_summary_is_an_error() {
        assert!(parse_result("Running 2s test\nunable to connect").is_err());
    }

    #[test]
    fn script_rotates_and_reports_every_error_kind() {
        for needle in [
            "aws-instance-identity",
            "/me/heartbeat",
            "Coder-Session-Token",
            "lifecycle_state",
            "e.status",
            "e.timeout",
            "latency:percentile(99)",
        ] {
            assert!(SCRIPT.contains(needle), "script lacks {needle}");
        }
    }

    #[test]
    fn zero_duration_is_zero_rate() {
        let r: WrkResult = serde_json::from_str(
            r#"{"requests":0,"duration_us":0,"p50_us":0,"p90_us":0,"p99_us":0,"mean_us":0,
            "max_us":0,"status_errors":0,"connect_errors":0,"read_errors":0,"write_errors":0,
            "timeouts":0}"#,
        )
        .expect("parses");
        assert_eq!(r.rps(), 0.0);
    }
}
