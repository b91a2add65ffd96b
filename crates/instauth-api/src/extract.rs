//! Request extraction with the API's own errors: bounded JSON bodies and the client address.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use instauth_types::ValidationError;
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

/// A JSON body of at most the route's body limit: too large → 413, not JSON → 400; JSON whose
/// fields have the wrong shape → 400 "Validation failed." naming the field (SPEC §2).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body(req, state, ApiError::BadJson).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body. Only a type or value error (well-formed JSON, wrong shape) names its
/// field; broken JSON stays "must be valid JSON".
///
/// Tracking the path costs on every field of every body, and only a refused body needs it: a
/// body is parsed plainly first, and only one with a shape error is parsed again to name it.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(e) if e.classify() == serde_json::error::Category::Data => parse_json_traced(bytes),
        Err(_) => Err(ApiError::BadJson),
    }
}

/// [`parse_json`] with the path of the failing field.
fn parse_json_traced<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() != serde_json::error::Category::Data {
            return ApiError::BadJson;
        }
        ApiError::Validation(vec![shape_error(&path, &inner)])
    })?;
    de.end().map_err(|_| ApiError::BadJson)?;
    Ok(value)
}

/// The field and what is wrong with it, from serde's message without the value it quotes (a
/// misplaced proof or token is not sent back) and without the line and column.
fn shape_error(path: &str, e: &serde_json::Error) -> ValidationError {
    let message = e.to_string();
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => &message,
    };
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        let field = match path {
            "." | "" => name.to_owned(),
            parent => format!("{parent}.{name}"),
        };
        return ValidationError {
            field: bounded(&field),
            detail: "required".into(),
        };
    }
    // A flattened struct's field names itself: "field: what is wrong".
    if matches!(path, "." | "") {
        if let Some((field, detail)) = message.split_once(": ") {
            if !field.is_empty() && field.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                return ValidationError {
                    field: bounded(field),
                    detail: bounded(detail),
                };
            }
        }
    }
    let detail = match (message.find(" \""), message.rfind("\", expected ")) {
        (Some(start), Some(end)) if start < end => {
            format!("{}, {}", &message[..start], &message[end + 3..])
        }
        _ => message.to_owned(),
    };
    ValidationError {
        field: bounded(match path {
            "." | "" => "body",
            p => p,
        }),
        detail: bounded(&detail),
    }
}

/// At most 200 characters: a path or an unknown variant can be as long as the body.
fn bounded(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
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

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        time: Option<i64>,
        name: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }

    fn refusal(body: &str) -> ApiError {
        parse_json::<Outer>(body.as_bytes()).unwrap_err()
    }

    fn one(e: ApiError) -> (String, String) {
        match e {
            ApiError::Validation(v) if v.len() == 1 => (v[0].field.clone(), v[0].detail.clone()),
            other => panic!("not one validation error: {other:?}"),
        }
    }

    #[test]
    fn a_wrong_shape_names_its_field_and_never_quotes_the_value() {
        let (field, detail) = one(refusal(
            r#"{"items":[{"name":"a"},{"name":"b","time":"SECRET-1"}]}"#,
        ));
        assert_eq!(field, "items[1].time");
        assert_eq!(detail, "invalid type: string, expected i64");
        assert_eq!(
            one(refusal(r#"{"items":[{"time":1}]}"#)),
            ("items[0].name".into(), "required".into())
        );
        assert_eq!(one(refusal(r#"{}"#)), ("items".into(), "required".into()));
        assert_eq!(one(refusal("[]")).0, "body");
        let long = format!(r#"{{"items":{{"{}":1}}}}"#, "k".repeat(5000));
        let (field, detail) = one(refusal(&long));
        assert!(field.chars().count() <= 201 && detail.chars().count() <= 201);
    }

    #[test]
    fn broken_json_is_still_not_json() {
        for body in ["", "{", r#"{"items":[]} trailing"#, "\u{0}"] {
            assert!(matches!(refusal(body), ApiError::BadJson), "{body:?}");
        }
        assert!(parse_json::<Outer>(br#"{"items":[{"name":"a","time":3}]}"#).is_ok());
    }

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
