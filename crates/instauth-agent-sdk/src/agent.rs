//! The agent's life: connect, heartbeat, retry with backoff, report shutdown.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use instauth_types::Manifest;
use rand::Rng;

use crate::client::LifecycleState;
use crate::error::Error;
use crate::session::Session;

/// Capped exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
    /// Relative jitter: each delay is scaled by a random factor in `1 ± jitter`.
    pub jitter: f64,
    next: Duration,
}

impl Default for Backoff {
    /// 1 s doubling to 30 s, ±20 %.
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.2)
    }
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`, with relative `jitter` (clamped to 0..=1).
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Self {
        Backoff {
            initial,
            max,
            jitter: jitter.clamp(0.0, 1.0),
            next: initial,
        }
    }

    /// The next delay (at least `floor`, e.g. a server's `Retry-After`), and doubles the base.
    pub fn next_delay(&mut self, floor: Option<Duration>) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = if self.jitter > 0.0 {
            rand::thread_rng().gen_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        base.mul_f64(factor).max(floor.unwrap_or_default())
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Time between heartbeats once connected.
    pub heartbeat_interval: Duration,
    /// Delays between failed attempts.
    pub backoff: Backoff,
    /// How long the `shutting_down`/`off` reports may take on shutdown.
    pub shutdown_timeout: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            heartbeat_interval: Duration::from_secs(15),
            backoff: Backoff::default(),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// What the agent knows about itself, for the debug endpoint.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentStatus {
    /// True while the last heartbeat succeeded.
    pub connected: bool,
    /// The last lifecycle state reported.
    pub lifecycle_state: Option<&'static str>,
    /// The manifest, once fetched.
    pub manifest: Option<Manifest>,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// Runs an agent: obtains a session token, fetches the manifest, sends heartbeats
/// (`starting`, then `ready` every interval), and reports `shutting_down` then `off` when the
/// shutdown future completes.
#[derive(Debug)]
pub struct Agent {
    session: Arc<Session>,
    options: AgentOptions,
    status: Arc<Mutex<AgentStatus>>,
}

impl Agent {
    /// An agent using `session`.
    pub fn new(session: Arc<Session>, options: AgentOptions) -> Self {
        Agent {
            session,
            options,
            status: Arc::default(),
        }
    }

    /// Shared view of the agent's status.
    pub fn status(&self) -> Arc<Mutex<AgentStatus>> {
        self.status.clone()
    }

    fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Runs until `shutdown` completes, then reports the shutdown and returns. Failures are
    /// logged and retried with backoff; they never end the run.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = self.options.backoff.clone();
        backoff.reset();

        // Connect: a session token and the manifest.
        let manifest = loop {
            let result = tokio::select! {
                () = &mut shutdown => return,
                r = self.session.manifest() => r,
            };
            match result {
                Ok(m) => break m,
                Err(e) => {
                    self.failed(&e, "fetch the manifest");
                    let delay = backoff.next_delay(e.retry_after());
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        tracing::debug!(
            agent.name = %manifest.agent_name,
            workspace = %manifest.workspace_name,
            build_number = manifest.build_number,
            "Fetched the manifest."
        );
        self.update(|s| s.manifest = Some(manifest.clone()));
        backoff.reset();

        let mut state = LifecycleState::Starting;
        let mut connected = false;
        loop {
            let result = tokio::select! {
                () = &mut shutdown => break,
                r = self.session.heartbeat(state) => r,
            };
            let delay = match result {
                Ok(()) => {
                    if !connected {
                        connected = true;
                        tracing::info!(
                            agent.name = %manifest.agent_name,
                            workspace = %manifest.workspace_name,
                            url = self.session.client().url(),
                            "connected"
                        );
                    }
                    self.session.metrics().set_connected(true);
                    self.update(|s| {
                        s.connected = true;
                        s.lifecycle_state = Some(state.as_str());
                        s.last_error = None;
                    });
                    backoff.reset();
                    if state == LifecycleState::Starting {
                        // Nothing to start: ready right away.
                        state = LifecycleState::Ready;
                        continue;
                    }
                    self.options.heartbeat_interval
                }
                Err(e) => {
                    // Log `connected` again once a heartbeat gets through.
                    connected = false;
                    self.session.metrics().set_connected(false);
                    self.failed(&e, "send a heartbeat");
                    backoff.next_delay(e.retry_after())
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(delay) => {}
            }
        }

        tracing::info!("Shutting down.");
        let report = async {
            for state in [LifecycleState::ShuttingDown, LifecycleState::Off] {
                if let Err(e) = self.session.heartbeat(state).await {
                    tracing::warn!(error = %e, lifecycle_state = %state, "Could not report the lifecycle state.");
                    return;
                }
                self.update(|s| s.lifecycle_state = Some(state.as_str()));
            }
        };
        if tokio::time::timeout(self.options.shutdown_timeout, report)
            .await
            .is_err()
        {
            tracing::warn!("Reporting the shutdown timed out.");
        }
        self.session.metrics().set_connected(false);
        self.update(|s| s.connected = false);
    }

    fn failed(&self, e: &Error, what: &str) {
        self.update(|s| {
            s.connected = false;
            s.last_error = Some(e.to_string());
        });
        log_failure_for(e, what, self.session.agent_name());
    }
}

/// Logs a failure with what to do about it.
pub fn log_failure(e: &Error, what: &str) {
    log_failure_for(e, what, None)
}

/// Logs a failure of the agent named `agent_name` with what to do about it.
pub fn log_failure_for(e: &Error, what: &str, agent_name: Option<&str>) {
    match e {
        Error::Unauthorized {
            message, detail, ..
        } if e.is_agent_key_refusal() => {
            let detail = detail.as_deref().unwrap_or(message);
            let agent = agent_name.unwrap_or("AGENT");
            tracing::error!(
                detail,
                "The server refused this agent's key: {detail}. Could not {what}. If this agent's \
                 VM was rebuilt in place or its key file was replaced, an admin can reset the \
                 binding with `instauth workspaces reset-key WORKSPACE {agent}`; otherwise another \
                 process already holds this agent's name."
            )
        }
        Error::Status {
            status: 403,
            message,
            detail,
            ..
        } => {
            let detail = detail.as_deref().unwrap_or(message);
            tracing::error!(
                detail,
                "The server does not allow this instance's identity: {detail}. Could not {what}; \
                 check the server's allow-lists (--aws-accounts, --gcp-projects, \
                 --azure-subscriptions) and the resource's expect."
            )
        }
        Error::Conflict {
            message,
            agent_names,
            ..
        } => tracing::error!(
            agent_names = %agent_names.join(", "),
            server_message = %message,
            "Several agents run on this instance and this one has no (unique) name: set CODER_AGENT_NAME to one of: {}",
            agent_names.join(", ")
        ),
        Error::NotFound {
            message,
            agent_names,
            ..
        } if !agent_names.is_empty() => tracing::error!(
            agent_names = %agent_names.join(", "),
            server_message = %message,
            "No agent of this name runs on this instance: set CODER_AGENT_NAME to one of: {}",
            agent_names.join(", ")
        ),
        Error::NotFound { message, .. } => tracing::error!(
            server_message = %message,
            "No workspace agent is registered for this instance: check the workspace's latest build and the instance ID."
        ),
        Error::Unauthorized {
            message,
            detail,
            endpoint,
        } => tracing::error!(
            %endpoint,
            server_message = %message,
            detail = detail.as_deref().unwrap_or(""),
            "The server refused the credentials; could not {what}."
        ),
        other => tracing::warn!(error = %other, "Could not {what}; retrying."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.0);
        let d: Vec<u64> = (0..7).map(|_| b.next_delay(None).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(None), Duration::from_secs(1));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(10))),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn backoff_jitter_stays_in_bounds() {
        let mut b = Backoff::default();
        for _ in 0..100 {
            b.reset();
            let d = b.next_delay(None);
            assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200));
        }
    }
}
