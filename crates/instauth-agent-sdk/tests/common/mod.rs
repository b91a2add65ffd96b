//! A minimal instauth-like server on 127.0.0.1 implementing the exchange endpoints and the
//! agent API, counting what it is asked. It checks nothing about proofs: the verifiers are
//! tested elsewhere; this is the SDK's counterpart.

#![allow(clippy::unwrap_used, clippy::result_large_err, dead_code, missing_docs)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

#[derive(Default)]
pub struct Recorded {
    /// Raw exchange bodies, by provider path segment ("aws", "azure", "google").
    pub exchanges: Vec<(String, serde_json::Value)>,
    /// Lifecycle states reported, in order.
    pub heartbeats: Vec<String>,
    /// Session tokens presented to the agent API, in order.
    pub tokens_seen: Vec<String>,
    /// Value of `X-Test` on every request.
    pub x_test: Vec<Option<String>>,
}

#[derive(Default)]
pub struct Config {
    /// Answer exchanges with 409 and these names.
    pub conflict: Option<Vec<String>>,
    /// Tokens the agent API accepts.
    pub valid: HashSet<String>,
    /// Delay in the exchange handler (to make concurrent refreshes overlap).
    pub exchange_delay: Duration,
    /// Answer exchanges with this status, body and `Retry-After` (seconds).
    pub exchange_error: Option<(u16, serde_json::Value, Option<u64>)>,
}

pub struct FakeServer {
    pub url: String,
    pub recorded: Arc<Mutex<Recorded>>,
    pub config: Arc<Mutex<Config>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct AppState {
    recorded: Arc<Mutex<Recorded>>,
    config: Arc<Mutex<Config>>,
}

fn error(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn record_header(s: &AppState, headers: &HeaderMap) {
    let v = headers
        .get("x-test")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.recorded.lock().unwrap().x_test.push(v);
}

async fn exchange(
    State(s): State<AppState>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record_header(&s, &headers);
    let provider = kind.trim_end_matches("-instance-identity").to_owned();
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"message": "Request body must be valid JSON."}),
            )
        }
    };
    let n = {
        let mut r = s.recorded.lock().unwrap();
        r.exchanges.push((provider, json));
        r.exchanges.len()
    };
    let (delay, conflict) = {
        let c = s.config.lock().unwrap();
        (c.exchange_delay, c.conflict.clone())
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let injected = s.config.lock().unwrap().exchange_error.clone();
    if let Some((code, body, retry_after)) = injected {
        let mut resp = error(StatusCode::from_u16(code).unwrap(), body);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
        }
        return resp;
    }
    if let Some(names) = conflict {
        return error(
            StatusCode::CONFLICT,
            serde_json::json!({
                "message": format!("Multiple agents found with instance ID \"i-1\". Set CODER_AGENT_NAME to one of: {}", names.join(", ")),
                "agent_names": names,
            }),
        );
    }
    let token = format!("session-{n}");
    s.config.lock().unwrap().valid.insert(token.clone());
    axum::Json(serde_json::json!({"session_token": token})).into_response()
}

fn check_token(s: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    record_header(s, headers);
    let token = headers
        .get("coder-session-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    s.recorded.lock().unwrap().tokens_seen.push(token.clone());
    if s.config.lock().unwrap().valid.contains(&token) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"message": "Invalid session token.", "detail": "unknown or expired"}),
        ))
    }
}

async fn manifest(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = check_token(&s, &headers) {
        return r;
    }
    axum::Json(serde_json::json!({
        "agent_id": "00000000-0000-4000-8000-000000000001",
        "agent_name": "main",
        "workspace_id": "00000000-0000-4000-8000-000000000002",
        "workspace_name": "ws",
        "build_number": 1,
        "resource_name": "dev",
        "resource_type": "aws_instance",
    }))
    .into_response()
}

async fn heartbeat(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_token(&s, &headers) {
        return r;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    s.recorded
        .lock()
        .unwrap()
        .heartbeats
        .push(v["lifecycle_state"].as_str().unwrap().to_owned());
    StatusCode::NO_CONTENT.into_response()
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let state = AppState {
            recorded: Arc::default(),
            config: Arc::default(),
        };
        let app = Router::new()
            .route("/api/v2/workspaceagents/{kind}", post(exchange))
            .route("/api/v2/workspaceagents/me/manifest", get(manifest))
            .route("/api/v2/workspaceagents/me/heartbeat", post(heartbeat))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeServer {
            url,
            recorded: state.recorded,
            config: state.config,
            task,
        }
    }

    pub fn exchange_count(&self) -> usize {
        self.recorded.lock().unwrap().exchanges.len()
    }

    pub fn revoke_all(&self) {
        self.config.lock().unwrap().valid.clear();
    }

    pub fn heartbeats(&self) -> Vec<String> {
        self.recorded.lock().unwrap().heartbeats.clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
