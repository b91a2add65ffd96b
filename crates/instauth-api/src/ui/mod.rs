//! The operators' dashboard at `/ui` (SPEC §5.1): server-rendered HTML (askama templates under
//! `templates/ui/`), a small script that refreshes it from `/ui/data.json`, a style sheet, and the
//! sign-in with the admin token.
//!
//! - Signing in: `GET /ui` without a session shows a form whose CSRF token is also set as a
//!   SameSite=Strict cookie (double submit); `POST /ui/login` checks both, then the admin token in
//!   constant time, and sets the session cookie (a random id, HttpOnly, SameSite=Strict, Secure
//!   unless the page is plain HTTP on loopback). Failed sign-ins are limited per client.
//! - Every POST made in a session carries the session's CSRF token (synchronizer token, compared
//!   in constant time) and is refused with 403 when it is missing or wrong, or when the browser
//!   says the request came from another site (`Sec-Fetch-Site`, `Origin`).
//! - Every response carries a strict Content-Security-Policy (only this server's script and
//!   styles, no inline script, no framing), `Referrer-Policy: no-referrer` and `nosniff`; no asset
//!   comes from anywhere else.
//!
//! Architecture invariant: the dashboard reads and writes (its one write: the key reset) through
//! the same store calls and wire types as the admin API ([`crate::admin`]); it adds no query of
//! its own.

mod auth;
mod view;

use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use instauth_types::routes;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::extract::{ClientAddr, FormBody, PathParam};
use crate::{token_hash, AppState};

pub use auth::{
    LOGIN_COOKIE, LOGIN_FAILURE_BURST, LOGIN_FAILURE_REFILL_SECS, MAX_SESSIONS, SESSION_COOKIE,
    SESSION_TTL,
};

/// Largest body of a dashboard POST (a form of two short fields).
pub const UI_BODY_LIMIT: usize = 4 * 1024;
/// Most workspaces the dashboard lists; the CLI lists them all.
pub const MAX_WORKSPACES_SHOWN: usize = 100;
/// Audit records the dashboard shows.
pub const AUDIT_SHOWN: i64 = 50;
/// How often the page refreshes itself.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(3);

/// The policy of every dashboard response: only this server's script, styles, images and
/// endpoints; no inline script or style; no plugins; no framing; forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// The dashboard's state inside [`AppState`]: sessions and the sign-in limiter.
pub(crate) struct UiState {
    sessions: auth::Sessions,
    login_limiter: auth::LoginLimiter,
}

impl UiState {
    pub(crate) fn new() -> Self {
        UiState {
            sessions: auth::Sessions::new(SESSION_TTL),
            login_limiter: auth::LoginLimiter::new(),
        }
    }
}

/// The dashboard's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(routes::UI, get(page))
        .route(routes::UI_LOGIN, post(login))
        .route(routes::UI_LOGOUT, post(logout))
        .route(routes::UI_DATA, get(data))
        .route(routes::UI_RESET_KEY, post(reset_key))
        .route(routes::UI_SCRIPT, get(script))
        .route(routes::UI_STYLE, get(style))
        .layer(DefaultBodyLimit::max(UI_BODY_LIMIT))
        .layer(middleware::map_response(security_headers))
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}

impl FromRequestParts<AppState> for auth::Transport {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = ClientAddr::from_request_parts(parts, state).await?;
        Ok(auth::Transport::of(&parts.headers, client.ip))
    }
}

/// The session the request's cookie names, if it is live.
fn session(state: &AppState, headers: &HeaderMap) -> Option<auth::SessionRef> {
    let id = auth::cookie(headers, SESSION_COOKIE)?;
    state.inner.ui.sessions.get(id, Instant::now())
}

fn html(status: StatusCode, page: impl Template) -> Result<Response, ApiError> {
    let body = page
        .render()
        .map_err(|e| ApiError::Internal(format!("rendering the dashboard: {e}")))?;
    Ok((
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response())
}

fn see_other(location: &'static str, cookies: &[String]) -> Response {
    let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

fn with_cookie(mut res: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// The sign-in page with a fresh form token (set as the login cookie too).
fn login_page(
    status: StatusCode,
    transport: auth::Transport,
    error: Option<String>,
    extra_cookie: Option<String>,
) -> Result<Response, ApiError> {
    let login_csrf = auth::random_token();
    let res = html(
        status,
        view::LoginPage {
            login_csrf: &login_csrf,
            error,
            insecure_transport: !transport.https && !transport.loopback,
        },
    )?;
    let mut res = with_cookie(
        res,
        &auth::set_cookie(
            LOGIN_COOKIE,
            &login_csrf,
            Some(auth::LOGIN_FORM_TTL),
            transport,
        ),
    );
    if let Some(c) = extra_cookie {
        res = with_cookie(res, &c);
    }
    Ok(res)
}

async fn dashboard_view(state: &AppState) -> Result<view::DashboardView, ApiError> {
    let store = &state.inner.store;
    let (workspaces, audit) =
        tokio::try_join!(store.list_workspaces(), store.list_audit(AUDIT_SHOWN))?;
    let workspaces_total = workspaces.len();
    Ok(view::DashboardView {
        workspaces: workspaces
            .into_iter()
            .take(MAX_WORKSPACES_SHOWN)
            .map(|w| view::WorkspaceView::new(crate::admin::info(state, w, true)))
            .collect(),
        workspaces_total,
        audit: audit
            .into_iter()
            .map(|r| view::AuditView::new(crate::admin::audit_entry(r)))
            .collect(),
        generated: view::format_time(chrono::Utc::now()),
    })
}

/// `GET /ui`: the dashboard, or the sign-in form without a live session.
async fn page(
    State(state): State<AppState>,
    transport: auth::Transport,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(s) = session(&state, &headers) else {
        // A stale cookie (expired, or the server restarted) is cleared, and the form says why.
        let stale = auth::cookie(&headers, SESSION_COOKIE).is_some();
        return login_page(
            StatusCode::OK,
            transport,
            stale.then(|| "Your session has ended; sign in again.".to_owned()),
            stale.then(|| auth::set_cookie(SESSION_COOKIE, "", None, transport)),
        );
    };
    let view = dashboard_view(&state).await?;
    html(
        StatusCode::OK,
        view::DashboardPage {
            csrf: &s.csrf,
            refresh_ms: REFRESH_INTERVAL.as_millis() as u64,
            view: &view,
            blank_agent: view::AgentView::default(),
        },
    )
}

/// The sign-in form's fields.
#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    csrf: Option<String>,
}

/// `POST /ui/login`: checks the form token, then the admin token; on success sets the session
/// cookie and sends the browser to `/ui`.
async fn login(
    State(state): State<AppState>,
    transport: auth::Transport,
    client: ClientAddr,
    headers: HeaderMap,
    FormBody(form): FormBody<LoginForm>,
) -> Result<Response, ApiError> {
    auth::check_same_origin(&headers)?;
    let expected = auth::cookie(&headers, LOGIN_COOKIE).ok_or(ApiError::CrossSite(
        "the sign-in form's token cookie is missing: load /ui and sign in from there",
    ))?;
    auth::check_csrf(form.csrf.as_deref(), expected)?;
    let now = Instant::now();
    let ip = client.ip;
    if let Some(ip) = ip {
        if let Err(wait) = state.inner.ui.login_limiter.may_try(ip, now) {
            let mut res = login_page(
                StatusCode::TOO_MANY_REQUESTS,
                transport,
                Some(format!(
                    "Too many failed sign-ins from your address; try again in {wait} s."
                )),
                None,
            )?;
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return Ok(res);
        }
    }
    let token = form.token.trim();
    // Digests are compared in constant time, so neither the token's length nor a matching
    // prefix shows in the timing; an empty token never signs in, whatever was configured.
    let valid = !token.is_empty()
        && state.inner.admin_token_configured
        && bool::from(token_hash(token)[..].ct_eq(&state.inner.admin_token_hash[..]));
    if !valid {
        if let Some(ip) = ip {
            state.inner.ui.login_limiter.failed(ip, now);
        }
        tracing::warn!(remote_addr = %client.text, "Dashboard sign-in failed: the admin token is wrong.");
        return login_page(
            StatusCode::UNAUTHORIZED,
            transport,
            Some("That is not the admin token.".to_owned()),
            None,
        );
    }
    let id = state.inner.ui.sessions.create(now);
    tracing::info!(remote_addr = %client.text, "Dashboard sign-in.");
    Ok(see_other(
        routes::UI,
        &[
            auth::set_cookie(SESSION_COOKIE, &id, Some(SESSION_TTL), transport),
            auth::set_cookie(LOGIN_COOKIE, "", None, transport),
        ],
    ))
}

/// A form that carries only the session's CSRF token.
#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /ui/logout`: ends the session and clears its cookie.
async fn logout(
    State(state): State<AppState>,
    transport: auth::Transport,
    headers: HeaderMap,
    FormBody(form): FormBody<CsrfForm>,
) -> Result<Response, ApiError> {
    auth::check_same_origin(&headers)?;
    if let Some(s) = session(&state, &headers) {
        auth::check_csrf(form.csrf.as_deref(), &s.csrf)?;
        state.inner.ui.sessions.remove(&s.id);
    }
    Ok(see_other(
        routes::UI,
        &[auth::set_cookie(SESSION_COOKIE, "", None, transport)],
    ))
}

/// `GET /ui/data.json`: what the page shows, for its refresh; 401 JSON without a session.
async fn data(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<view::DashboardView>, ApiError> {
    if session(&state, &headers).is_none() {
        return Err(ApiError::Unauthorized(
            "Sign in to the dashboard first: open /ui.",
        ));
    }
    Ok(Json(dashboard_view(&state).await?))
}

/// `POST /ui/workspaces/{workspace}/agents/{agent}/reset-key`: forgets the agent's bound key
/// (as `DELETE /api/v2/workspaces/{workspace}/agents/{agent}/key` does) and ends its sessions.
/// The page's script asks for JSON and gets 204; a plain form post is sent back to `/ui`.
async fn reset_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientAddr,
    PathParam((workspace, agent)): PathParam<(String, String)>,
    FormBody(form): FormBody<CsrfForm>,
) -> Result<Response, ApiError> {
    let Some(s) = session(&state, &headers) else {
        return Err(ApiError::Unauthorized(
            "Sign in to the dashboard first: open /ui.",
        ));
    };
    auth::check_same_origin(&headers)?;
    auth::check_csrf(form.csrf.as_deref(), &s.csrf)?;
    if !state
        .inner
        .store
        .reset_agent_key(&workspace, &agent)
        .await?
    {
        return Err(crate::admin::agent_not_found(&workspace, &agent));
    }
    tracing::info!(
        workspace = %workspace,
        agent.name = %agent,
        remote_addr = %client.text,
        "Agent key binding reset from the dashboard."
    );
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    Ok(if wants_json {
        StatusCode::NO_CONTENT.into_response()
    } else {
        see_other(routes::UI, &[])
    })
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
        .into_response()
}
