//! A plain HTTP/1.1 server on 127.0.0.1 standing in for certificate download hosts
//! (`www.microsoft.com`, `cacerts.digicert.com`): each path answers as the test says, and hits
//! are counted. Written on a bare `TcpListener` so that a test controls every byte and its
//! timing (slow bodies, missing lengths, redirects).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a path answers.
#[derive(Debug, Clone)]
pub enum AiaResponse {
    /// 200 with this body and its Content-Length.
    Body(Vec<u8>),
    /// 200 with this body and no Content-Length (read until the connection closes).
    BodyWithoutLength(Vec<u8>),
    /// 302 to this location.
    Redirect(String),
    /// This status, empty body.
    Status(u16),
    /// 200 with this body's length announced, then one byte per `delay`.
    Slow {
        /// The body.
        body: Vec<u8>,
        /// Pause before each byte.
        delay: Duration,
    },
}

#[derive(Debug, Default)]
struct Shared {
    routes: Mutex<HashMap<String, AiaResponse>>,
    hits: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
}

/// A running server. Dropping it stops it.
#[derive(Debug)]
pub struct AiaServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl AiaServer {
    /// Starts serving (404 for unknown paths). Call inside a tokio runtime; returns once bound.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream, serving.clone()));
            }
        });
        AiaServer { addr, shared, task }
    }

    /// The address (map the allow-listed host names to it).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets how `path` (e.g. `/pkiops/certs/x.crt`) answers.
    pub fn route(&self, path: &str, response: AiaResponse) {
        self.shared
            .routes
            .lock()
            .unwrap()
            .insert(path.to_string(), response);
    }

    /// Requests served for `path`.
    pub fn hits(&self, path: &str) -> usize {
        *self.shared.hits.lock().unwrap().get(path).unwrap_or(&0)
    }

    /// Requests served in all.
    pub fn total_hits(&self) -> usize {
        self.shared.total.load(Ordering::SeqCst)
    }
}

impl Drop for AiaServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    shared.total.fetch_add(1, Ordering::SeqCst);
    *shared.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let response = shared.routes.lock().unwrap().get(&path).cloned();
    let head = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n{extra}\r\n").into_bytes()
    };
    let _ = match response {
        None => {
            stream
                .write_all(&head("404 Not Found", "Content-Length: 0\r\n"))
                .await
        }
        Some(AiaResponse::Body(body)) => {
            let mut out = head("200 OK", &format!("Content-Length: {}\r\n", body.len()));
            out.extend_from_slice(&body);
            stream.write_all(&out).await
        }
        Some(AiaResponse::BodyWithoutLength(body)) => {
            let mut out = head("200 OK", "");
            out.extend_from_slice(&body);
            stream.write_all(&out).await
        }
        Some(AiaResponse::Redirect(location)) => {
            let extra = format!("Location: {location}\r\nContent-Length: 0\r\n");
            stream.write_all(&head("302 Found", &extra)).await
        }
        Some(AiaResponse::Status(code)) => {
            let status = format!("{code} Status");
            stream
                .write_all(&head(&status, "Content-Length: 0\r\n"))
                .await
        }
        Some(AiaResponse::Slow { body, delay }) => {
            let extra = format!("Content-Length: {}\r\n", body.len());
            if stream.write_all(&head("200 OK", &extra)).await.is_ok() {
                for b in body {
                    tokio::time::sleep(delay).await;
                    if stream.write_all(&[b]).await.is_err() {
                        break;
                    }
                }
            }
            Ok(())
        }
    };
    let _ = stream.shutdown().await;
}
