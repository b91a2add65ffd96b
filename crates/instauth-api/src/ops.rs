//! Operations endpoints (SPEC.md §5): no authentication.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use instauth_types::{routes, ErrorResponse};

use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(routes::HEALTHZ, get(healthz))
        .route(routes::READYZ, get(readyz))
        .route(routes::METRICS, get(metrics))
}

/// 200 while the process runs.
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// 200 when the database answers, else 503 with `Retry-After`.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.inner.store.ping().await {
        Ok(()) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "Readiness check failed: the database does not answer.");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                Json(ErrorResponse {
                    message: "Database unavailable.".into(),
                    ..Default::default()
                }),
            )
                .into_response()
        }
    }
}

/// Prometheus text.
async fn metrics(State(state): State<AppState>) -> Response {
    // An issuing CA admitted from an AIA download since the last scrape joins the expiry
    // gauge (a reload refreshes it too).
    if state.inner.verifiers.take_trust_changed() {
        state.refresh_trust_metrics();
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.inner.metrics.render(),
    )
        .into_response()
}
