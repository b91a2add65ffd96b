//! The agent's own HTTP endpoints: Prometheus metrics and a debug health report.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::agent::AgentStatus;
use crate::metrics::Metrics;

/// Serves `GET /metrics` (Prometheus text) on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    async fn handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
        (
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            m.render(),
        )
    }
    let app = Router::new()
        .route("/metrics", get(handler))
        .with_state(metrics);
    axum::serve(listener, app).await
}

/// Serves `GET /debug/health` (JSON: connected, lifecycle state, manifest, last error) on
/// `listener`; 200 while connected, else 503.
pub async fn serve_debug(
    listener: TcpListener,
    status: Arc<Mutex<AgentStatus>>,
) -> std::io::Result<()> {
    async fn handler(State(s): State<Arc<Mutex<AgentStatus>>>) -> impl IntoResponse {
        let snapshot = s.lock().map(|s| s.clone()).unwrap_or_default();
        let code = if snapshot.connected {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, axum::Json(snapshot))
    }
    let app = Router::new()
        .route("/debug/health", get(handler))
        .with_state(status);
    axum::serve(listener, app).await
}
