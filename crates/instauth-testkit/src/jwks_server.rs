//! A JWKS endpoint on 127.0.0.1 whose response tests can change and whose hits they can count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

#[derive(Debug)]
struct Shared {
    response: Mutex<(u16, String, Option<u64>)>,
    hits: AtomicUsize,
}

/// A running JWKS server. Dropping it stops the server.
#[derive(Debug)]
pub struct JwksServer {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.hits.fetch_add(1, Ordering::SeqCst);
    let (status, body, max_age) = shared.response.lock().unwrap().clone();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let cache = max_age.map_or_else(
        || "no-store".to_string(),
        |a| format!("public, max-age={a}, must-revalidate"),
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
}

impl JwksServer {
    /// Starts serving `body` with `Cache-Control: max-age=<max_age>` (no max-age if `None`).
    /// Must be called inside a tokio runtime. Returns once the socket is bound.
    pub async fn start(body: String, max_age: Option<u64>) -> Self {
        let shared = Arc::new(Shared {
            response: Mutex::new((200, body, max_age)),
            hits: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/oauth2/v3/certs", get(serve))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://{addr}/oauth2/v3/certs"),
            shared,
            task,
        }
    }

    /// The JWKS URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many requests were served.
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Serves `body` with status 200 from now on.
    pub fn set_body(&self, body: String, max_age: Option<u64>) {
        *self.shared.response.lock().unwrap() = (200, body, max_age);
    }

    /// Fails every request with `status` from now on.
    pub fn fail_with(&self, status: u16) {
        *self.shared.response.lock().unwrap() = (status, "{\"error\":\"down\"}".into(), None);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
