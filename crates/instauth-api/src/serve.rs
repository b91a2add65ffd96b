//! The HTTP server loop: hyper with the timeouts an Internet-facing server needs, client
//! addresses for every request, and a graceful shutdown with a deadline.
//!
//! - Headers must arrive within [`ServeConfig::header_read_timeout`]; hyper starts that timer
//!   again whenever a keep-alive connection waits for its next request, so it is also the idle
//!   keep-alive timeout. A client that sends half a request is disconnected.
//! - A request body must arrive within [`ServeConfig::body_read_timeout`] (408 otherwise).
//! - On shutdown the listener closes, idle connections close at once, in-flight requests may
//!   finish until [`ServeConfig::shutdown_deadline`], then the remaining connections are
//!   dropped.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Timeouts of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeConfig {
    /// Longest wait for a request's headers, and for the next request on an idle connection.
    pub header_read_timeout: Duration,
    /// Longest wait for a request's whole body.
    pub body_read_timeout: Duration,
    /// Longest wait for in-flight requests after shutdown begins.
    pub shutdown_deadline: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            shutdown_deadline: Duration::from_secs(20),
        }
    }
}

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every connection finished within the deadline.
    Graceful,
    /// The deadline passed; this many connections were still open and were dropped.
    DeadlineReached(usize),
}

/// Serves `app` on `listener` until `signal` completes, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServeConfig,
    signal: impl Future<Output = ()>,
) -> Shutdown {
    // HTTP/1.1 only: agents and the admin CLI speak it, and it keeps HTTP/2's code out.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_timeout = config.body_read_timeout;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let req = req.map(|body| {
                axum::body::Body::new(tower_http::timeout::TimeoutBody::new(body_timeout, body))
            });
            let app = app.clone();
            async move {
                let Ok(response) = app.oneshot(req).await;
                Ok::<_, Infallible>(response)
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(peer = %peer, error = %e, "Connection ended with an error.");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(connections = open, "Stopped accepting connections.");
    match tokio::time::timeout(config.shutdown_deadline, graceful.shutdown()).await {
        Ok(()) => Shutdown::Graceful,
        Err(_) => Shutdown::DeadlineReached(open),
    }
}
