//! Request extraction with the API's own errors: bounded JSON bodies and the client address.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// The whole body, within the route's limit (else 413) and the body read timeout (else 408);
/// any other failure to read it is `unreadable`.
async fn body<S: Send + Sync>(
    req: Request,
    state: &S,
    unreadable: ApiError,
) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else if is_timeout(&e) {
            ApiError::BodyTimeout
        } else {
            unreadable
        }
    })
}

/// A JSON body of at most the route's body limit: too large → 413, not JSON → 400.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body(req, state, ApiError::BadJson).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|_| ApiError::BadJson)
    }
}

/// A form body (`application/x-www-form-urlencoded`) of at most the route's body limit: too large
/// → 413, not a form of the expected fields → 400.
pub struct FormBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for FormBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body(req, state, ApiError::BadForm).await?;
        serde_urlencoded::from_bytes(&bytes)
            .map(FormBody)
            .map_err(|_| ApiError::BadForm)
    }
}

/// True when reading the body failed because the body read timeout passed.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A path parameter; an undecodable segment is a JSON 400, like every other error.
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e| ApiError::BadPath(e.body_text()))
    }
}

/// The client an exchange is from: the peer, or — when the peer is a trusted proxy
/// (`--trusted-proxies`) — the address it forwarded in `X-Forwarded-For`. The rate limit keys on
/// it and the audit records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client's IP, when known.
    pub ip: Option<IpAddr>,
    /// For the audit: `ip:port` of a direct peer, the IP of a forwarded client.
    pub text: String,
}

/// The client behind `peer`: walking `X-Forwarded-For` from the right (the entries the trusted
/// proxies appended), the first address that is not itself a trusted proxy. A header from an
/// untrusted peer is ignored, and so is a malformed entry (the peer is then the client).
pub fn client_addr(peer: Option<SocketAddr>, forwarded: &[&str], trusted: &[IpNet]) -> ClientAddr {
    let direct = ClientAddr {
        ip: peer.map(|p| p.ip()),
        text: peer.map(|p| p.to_string()).unwrap_or_default(),
    };
    let Some(peer) = peer else { return direct };
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer.ip()) {
        return direct;
    }
    let hops = forwarded
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            return direct;
        };
        if !is_trusted(&ip) {
            return ClientAddr {
                ip: Some(ip),
                text: ip.to_string(),
            };
        }
    }
    direct
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let trusted = state.trusted_proxies();
        if trusted.is_empty() {
            return Ok(client_addr(peer, &[], trusted));
        }
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Ok(client_addr(peer, &forwarded, trusted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:6000".parse().unwrap();
        let via = |peer, h: &[&str]| client_addr(Some(peer), h, &trusted);
        assert_eq!(via(proxy, &["198.51.100.7"]).text, "198.51.100.7");
        assert_eq!(
            via(proxy, &["1.1.1.1, 198.51.100.7, 10.9.9.9"]).text,
            "198.51.100.7",
            "the rightmost untrusted hop; what the client wrote to the left is not believed"
        );
        assert_eq!(
            via(proxy, &["1.1.1.1", "198.51.100.7"]).text,
            "198.51.100.7"
        );
        assert_eq!(via(stranger, &["198.51.100.7"]).text, "203.0.113.9:6000");
        assert_eq!(via(proxy, &["not-an-ip"]).text, "10.1.2.3:5000");
        assert_eq!(via(proxy, &[]).text, "10.1.2.3:5000");
        assert_eq!(client_addr(None, &[], &trusted).ip, None);
    }
}
