//! Headless Chromium driven over the W3C WebDriver protocol (chromedriver), for browser tests of
//! the dashboard.
//!
//! A few endpoints of the protocol spoken with blocking reqwest and serde_json: a WebDriver crate
//! would bring its own HTTP stack for the dozen calls a test makes. Every wait has a deadline.
//!
//! Chromium comes from Debian's `chromium` and `chromium-driver` packages, which
//! `cargo xtask test` installs when they are missing. Without them [`Browser::start`] fails with
//! a message saying so: a browser test never skips.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// The key W3C WebDriver uses for an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Longest wait for one WebDriver command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags for Chromium in a sandboxless, offline test machine: no GPU, no background traffic to
/// Google's services (it would be refused here, and it is not the page's), no first-run UI.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
];

/// A Chromium session behind its own chromedriver; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

/// An executable named by `env` (`CHROME_BINARY`, `CHROMEDRIVER`), else found on `PATH` or in
/// `/usr/bin`; `None` when it does not exist.
fn executable(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session with a
    /// fresh profile and the performance log on (every network request the page makes).
    pub fn start() -> Result<Browser, String> {
        const MISSING: &str = "install Debian's chromium and chromium-driver packages \
            (`cargo xtask test` does: apt-get install -y chromium chromium-driver)";
        let chromium = executable("CHROME_BINARY", &["chromium", "chromium-browser"])
            .ok_or_else(|| format!("Chromium was not found: {MISSING}"))?;
        let chromedriver = executable("CHROMEDRIVER", &["chromedriver"])
            .ok_or_else(|| format!("chromedriver was not found: {MISSING}"))?;
        let mut driver = Command::new(&chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", chromedriver.display()))?;
        let port = match read_port(&mut driver) {
            Ok(p) => p,
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                return Err(e);
            }
        };
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let profile = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": args,
                    },
                    "goog:loggingPrefs": { "performance": "ALL", "browser": "ALL" },
                }
            }
        });
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let created = browser.call("POST", "/session", Some(caps))?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {created}"))?
            .to_owned();
        Ok(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let res = req.send().map_err(|e| format!("{method} {path}: {e}"))?;
        let status = res.status();
        let value: Value = res
            .json()
            .map_err(|e| format!("{method} {path}: bad JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status}: {}", value["value"]));
        }
        Ok(value.get("value").cloned().unwrap_or(value))
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Loads `url` and waits for the document to load.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// Sets the window's outer size.
    pub fn set_window_size(&self, width: u32, height: u32) -> Result<(), String> {
        self.session_call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .map(|_| ())
    }

    /// The first element matching CSS `selector`, now.
    pub fn find(&self, selector: &str) -> Result<String, String> {
        let v = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": selector })),
        )?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no element reference for {selector:?} in {v}"))
    }

    /// Types `text` into element `element`.
    pub fn send_keys(&self, element: &str, text: &str) -> Result<(), String> {
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .map(|_| ())
    }

    /// Clicks element `element`.
    pub fn click(&self, element: &str) -> Result<(), String> {
        self.session_call("POST", &format!("/element/{element}/click"), None)
            .map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its
    /// result.
    pub fn execute(&self, script: &str, args: Value) -> Result<Value, String> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` until it returns something other than `null` or `false`, or fails when
    /// `timeout` passes, saying what it last returned.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.execute(script, json!([]))?;
            if !matches!(last, Value::Null | Value::Bool(false)) {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "timed out after {timeout:?} waiting for {what}; last saw {last}"
        ))
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>, String> {
        let v = self.session_call("GET", "/screenshot", None)?;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| format!("screenshot is not base64: {e}"))
    }

    /// A PNG of the whole page, also what lies below the viewport (DevTools'
    /// `Page.captureScreenshot` through chromedriver).
    pub fn full_page_screenshot(&self) -> Result<Vec<u8>, String> {
        let metrics = self.cdp("Page.getLayoutMetrics", json!({}))?;
        let size = &metrics["cssContentSize"];
        let (width, height) = (
            size["width"].as_f64().unwrap_or(800.0),
            size["height"].as_f64().unwrap_or(600.0),
        );
        let shot = self.cdp(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 },
            }),
        )?;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| format!("screenshot is not base64: {e}"))
    }

    /// Sends a DevTools protocol command to the page.
    pub fn cdp(&self, command: &str, params: Value) -> Result<Value, String> {
        self.session_call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({ "cmd": command, "params": params })),
        )
    }

    /// Writes a PNG of the whole page to `path`.
    pub fn save_full_page_screenshot(&self, path: &Path) -> Result<(), String> {
        write_png(path, &self.full_page_screenshot()?)
    }

    /// Writes a PNG of the viewport to `path`.
    pub fn save_screenshot(&self, path: &Path) -> Result<(), String> {
        write_png(path, &self.screenshot()?)
    }
}

fn write_png(path: &Path, png: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, png).map_err(|e| format!("writing {}: {e}", path.display()))
}

impl Browser {
    /// Every request the browser sent since the last call (chromedriver's performance log:
    /// DevTools `Network.requestWillBeSent` events), in order. This includes the browser's own
    /// pages (a new tab page at start-up, in the same frame as the first page loaded).
    pub fn sent_requests(&self) -> Result<Vec<SentRequest>, String> {
        let entries =
            self.session_call("POST", "/se/log", Some(json!({ "type": "performance" })))?;
        let mut sent = Vec::new();
        for entry in entries.as_array().cloned().unwrap_or_default() {
            let Some(text) = entry["message"].as_str() else {
                continue;
            };
            let Ok(msg) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if msg["message"]["method"] == "Network.requestWillBeSent" {
                let params = &msg["message"]["params"];
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                sent.push(SentRequest {
                    url: text(&params["request"]["url"]),
                    frame_id: text(&params["frameId"]),
                    document_url: text(&params["documentURL"]),
                    resource_type: text(&params["type"]),
                });
            }
        }
        Ok(sent)
    }

    /// Messages of the browser's console since the last call (CSP violations show here).
    pub fn console(&self) -> Result<Vec<String>, String> {
        let entries = self.session_call("POST", "/se/log", Some(json!({ "type": "browser" })))?;
        Ok(entries
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| {
                Some(format!(
                    "{} {}",
                    e["level"].as_str()?,
                    e["message"].as_str()?
                ))
            })
            .collect())
    }
}

/// One request the browser sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRequest {
    /// Where to.
    pub url: String,
    /// The frame that sent it (a page's navigations and subresources share their frame's id).
    pub frame_id: String,
    /// The document it was sent for.
    pub document_url: String,
    /// DevTools' resource type: `Document` for a navigation, `Script`, `Fetch`, ...
    pub resource_type: String,
}

fn read_port(driver: &mut Child) -> Result<u16, String> {
    let stdout = driver.stdout.take().ok_or("chromedriver has no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    let port = rest.trim_end_matches('.').trim().parse::<u16>().ok();
                    let _ = tx.send(port);
                    sent = true;
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Some(port)) => Ok(port),
        Ok(None) => Err("chromedriver printed a port that is not a number".into()),
        Err(_) => Err("chromedriver did not say it was listening within 20 s".into()),
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
