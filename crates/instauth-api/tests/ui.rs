//! The dashboard over real HTTP on loopback, on SQLite and on PostgreSQL: the sign-in form,
//! the session cookie and its attributes, wrong tokens and their limit, logout, the cross-site
//! checks of every POST, escaping of client-controlled values, and the JSON 401 of the data
//! endpoint.
#![allow(clippy::unwrap_used)]

mod common;

use common::{pki, REGION};
use std::sync::Arc;

use instauth_api::{ApiConfig, AppState};
use instauth_store::testing::{TestBackend, TestDb};
use instauth_testkit::{TestAgentKey, TestPki};
use instauth_types::ExchangeRequest;
use reqwest::header::{self, HeaderMap};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

const ADMIN: &str = "ui-test-admin-token";
const HOSTILE_NAME: &str = "<script>alert(1)</script>";
const HOSTILE_INSTANCE: &str = "i-\"><img src=x onerror=alert(2)>";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

struct Srv {
    url: String,
    /// Follows no redirects and keeps no cookies: each test handles them itself.
    http: reqwest::Client,
    pki: Arc<TestPki>,
    state: AppState,
    _db: TestDb,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(backend: TestBackend) -> Srv {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let pki = pki();
    let (state, _writer) = AppState::new(
        store,
        common::verifiers(&pki, &[REGION], "coder"),
        ApiConfig {
            admin_token: ADMIN.into(),
            exchange_rate_limit: 0,
            ..ApiConfig::default()
        },
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(instauth_api::serve::serve(
        listener,
        instauth_api::router(state.clone()),
        instauth_api::serve::ServeConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    Srv {
        url,
        http: reqwest::Client::builder()
            .redirect(Policy::none())
            .build()
            .unwrap(),
        pki,
        state,
        _db: db,
        _stop: stop,
    }
}

macro_rules! ui_test {
    ($name:ident, |$srv:ident| $body:expr) => {
        mod $name {
            use super::*;
            async fn run($srv: Srv) {
                $body.await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(start(TestBackend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(start(TestBackend::Postgres).await).await
            }
        }
    };
}

/// A response read to the end.
struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// The `Set-Cookie` header for cookie `name`.
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of hidden input `csrf` in the page.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a csrf field")
            + 19;
        self.body[at..at + 43].to_owned()
    }
}

/// The value a `Set-Cookie` header sets.
fn cookie_value(set_cookie: &str) -> &str {
    set_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
}

/// The attributes of a `Set-Cookie` header, lower-cased and trimmed, in order.
fn attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

/// A browser session as the tests drive it: its cookies, sent by hand.
#[derive(Default, Clone)]
struct Jar {
    login: Option<String>,
    session: Option<String>,
}

impl Jar {
    fn header(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.login {
            parts.push(format!("instauth_ui_login={l}"));
        }
        if let Some(s) = &self.session {
            parts.push(format!("instauth_ui={s}"));
        }
        parts.join("; ")
    }
}

/// Headers a browser adds to a same-origin form POST.
fn same_origin(srv: &Srv) -> Vec<(&'static str, String)> {
    vec![
        ("origin", srv.url.clone()),
        ("sec-fetch-site", "same-origin".into()),
    ]
}

impl Srv {
    async fn get(&self, path: &str, jar: &Jar) -> Page {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if !jar.header().is_empty() {
            req = req.header(header::COOKIE, jar.header());
        }
        read(req).await
    }

    async fn post_form(
        &self,
        path: &str,
        jar: &Jar,
        form: &[(&str, &str)],
        headers: &[(&'static str, String)],
    ) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.url)).form(form);
        if !jar.header().is_empty() {
            req = req.header(header::COOKIE, jar.header());
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        read(req).await
    }

    /// Loads the sign-in form: a jar with its login cookie, and the form's token.
    async fn sign_in_form(&self) -> (Jar, String) {
        let page = self.get("/ui", &Jar::default()).await;
        assert_eq!(page.status, 200);
        let set = page.set_cookie("instauth_ui_login").expect("login cookie");
        let jar = Jar {
            login: Some(cookie_value(&set).to_owned()),
            session: None,
        };
        (jar, page.csrf())
    }

    /// Signs in; returns the jar with the session cookie and the session's CSRF token.
    async fn sign_in(&self) -> (Jar, String) {
        let (mut jar, csrf) = self.sign_in_form().await;
        let page = self
            .post_form(
                "/ui/login",
                &jar,
                &[("token", ADMIN), ("csrf", &csrf)],
                &same_origin(self),
            )
            .await;
        assert_eq!(page.status, 303, "{}", page.body);
        let set = page.set_cookie("instauth_ui").expect("session cookie");
        jar.session = Some(cookie_value(&set).to_owned());
        jar.login = None;
        let dashboard = self.get("/ui", &jar).await;
        assert_eq!(dashboard.status, 200);
        assert!(
            dashboard.body.contains("data-dashboard"),
            "{}",
            dashboard.body
        );
        (jar, dashboard.csrf())
    }

    async fn admin_build(&self, ws: &str, body: Value) {
        let res = self
            .http
            .post(format!("{}/api/v2/workspaces/{ws}/builds", self.url))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }

    async fn aws(&self, iid: &str, name: Option<&str>) -> (u16, Value) {
        self.aws_keyed(iid, name, None).await
    }

    /// An AWS exchange, signed with `key` when given.
    async fn aws_keyed(
        &self,
        iid: &str,
        name: Option<&str>,
        key: Option<&TestAgentKey>,
    ) -> (u16, Value) {
        let mut proof = self.pki.aws_proof(iid, REGION);
        proof.agent_name = name.map(Into::into);
        let agent_key = key
            .map(|k| k.sign(&proof, chrono::Utc::now().timestamp()))
            .unwrap_or_default();
        let body = ExchangeRequest {
            body: proof,
            agent_key,
        };
        let res = self
            .http
            .post(format!(
                "{}/api/v2/workspaceagents/aws-instance-identity",
                self.url
            ))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

async fn read(req: reqwest::RequestBuilder) -> Page {
    let res = req.send().await.unwrap();
    Page {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap(),
    }
}

fn assert_security_headers(page: &Page) {
    assert_eq!(page.header("content-security-policy"), CSP);
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
}

ui_test!(signed_out_page_is_the_sign_in_form, |srv| async move {
    let page = srv.get("/ui", &Jar::default()).await;
    assert_eq!(page.status, 200, "a form, not a 401");
    assert!(page.header("content-type").starts_with("text/html"));
    assert_security_headers(&page);
    assert_eq!(page.header("cache-control"), "no-store");
    for needle in [
        "<form method=\"post\" action=\"/ui/login\"",
        "<label for=\"token\">Admin token</label>",
        "<input id=\"token\" name=\"token\" type=\"password\"",
        "<main id=\"main\"",
        "<h1>instauth</h1>",
        "<h2 id=\"login-heading\">Sign in</h2>",
        "<link rel=\"stylesheet\" href=\"/ui/style.css\">",
        "<script src=\"/ui/app.js\" defer></script>",
    ] {
        assert!(
            page.body.contains(needle),
            "{needle} missing in {}",
            page.body
        );
    }
    assert!(!page.body.contains("<script>"), "no inline script");
    assert!(!page.body.contains("style=\""), "no inline style");
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "no external asset"
    );
    let login = page.set_cookie("instauth_ui_login").unwrap();
    assert_eq!(
        cookie_value(&login),
        page.csrf(),
        "double submit: cookie = form field"
    );
    assert_eq!(
        attributes(&login),
        ["path=/ui", "max-age=3600", "httponly", "samesite=strict"],
        "plain HTTP on loopback: no Secure"
    );
    assert!(page.set_cookie("instauth_ui").is_none());
});

ui_test!(
    sign_in_sets_a_random_httponly_strict_cookie,
    |srv| async move {
        let (jar, csrf) = srv.sign_in_form().await;
        let page = srv
            .post_form(
                "/ui/login",
                &jar,
                &[("token", ADMIN), ("csrf", &csrf)],
                &same_origin(&srv),
            )
            .await;
        assert_eq!(page.status, 303, "{}", page.body);
        assert_eq!(page.header("location"), "/ui");
        let session = page.set_cookie("instauth_ui").unwrap();
        assert_eq!(
            attributes(&session),
            ["path=/ui", "max-age=43200", "httponly", "samesite=strict"]
        );
        let id = cookie_value(&session);
        assert_eq!(id.len(), 43, "256 random bits, base64url");
        assert!(
            !session.contains(ADMIN),
            "the cookie never holds the admin token"
        );
        let cleared = page.set_cookie("instauth_ui_login").unwrap();
        assert!(attributes(&cleared).contains(&"max-age=0".to_owned()));

        // Behind a TLS proxy the cookie is Secure.
        let (jar, csrf) = srv.sign_in_form().await;
        let mut headers = same_origin(&srv);
        headers.push(("x-forwarded-proto", "https".into()));
        let page = srv
            .post_form(
                "/ui/login",
                &jar,
                &[("token", ADMIN), ("csrf", &csrf)],
                &headers,
            )
            .await;
        assert_eq!(page.status, 303);
        let session = page.set_cookie("instauth_ui").unwrap();
        assert_eq!(
            attributes(&session),
            [
                "path=/ui",
                "max-age=43200",
                "httponly",
                "samesite=strict",
                "secure"
            ]
        );

        // The cookie opens the dashboard and its data.
        let jar = Jar {
            login: None,
            session: Some(id.to_owned()),
        };
        let dashboard = srv.get("/ui", &jar).await;
        assert_eq!(dashboard.status, 200);
        assert_security_headers(&dashboard);
        assert!(dashboard
            .body
            .contains("<form method=\"post\" action=\"/ui/logout\""));
        let data = srv.get("/ui/data.json", &jar).await;
        assert_eq!(data.status, 200, "{}", data.body);
        assert_eq!(data.json()["workspaces"], json!([]));
    }
);

ui_test!(
    a_wrong_token_is_refused_and_failures_are_limited,
    |srv| async move {
        let (jar, csrf) = srv.sign_in_form().await;
        for wrong in ["", "nope", &format!("{ADMIN}x"), &ADMIN[1..]] {
            let page = srv
                .post_form(
                    "/ui/login",
                    &jar,
                    &[("token", wrong), ("csrf", &csrf)],
                    &same_origin(&srv),
                )
                .await;
            assert_eq!(page.status, 401, "{wrong:?}");
            assert!(page.header("content-type").starts_with("text/html"));
            assert!(page.body.contains("That is not the admin token."));
            assert!(page.body.contains("aria-invalid=\"true\""));
            assert!(page.set_cookie("instauth_ui").is_none(), "{wrong:?}");
        }
        // The fifth failure uses up the burst; then even the right token waits.
        let page = srv
            .post_form(
                "/ui/login",
                &jar,
                &[("token", "nope"), ("csrf", &csrf)],
                &same_origin(&srv),
            )
            .await;
        assert_eq!(page.status, 401);
        let page = srv
            .post_form(
                "/ui/login",
                &jar,
                &[("token", ADMIN), ("csrf", &csrf)],
                &same_origin(&srv),
            )
            .await;
        assert_eq!(page.status, 429, "{}", page.body);
        assert!(page.header("retry-after").parse::<u64>().unwrap() >= 1);
        assert!(page.body.contains("Too many failed sign-ins"));
        assert!(page.set_cookie("instauth_ui").is_none());
    }
);

ui_test!(
    logout_ends_the_session_and_clears_the_cookie,
    |srv| async move {
        let (jar, csrf) = srv.sign_in().await;
        // Without the token it is refused, and the session lives on.
        let page = srv
            .post_form("/ui/logout", &jar, &[], &same_origin(&srv))
            .await;
        assert_eq!(page.status, 403);
        assert_eq!(srv.get("/ui/data.json", &jar).await.status, 200);

        let page = srv
            .post_form("/ui/logout", &jar, &[("csrf", &csrf)], &same_origin(&srv))
            .await;
        assert_eq!(page.status, 303);
        assert_eq!(page.header("location"), "/ui");
        let cleared = page.set_cookie("instauth_ui").unwrap();
        assert_eq!(cookie_value(&cleared), "");
        assert!(attributes(&cleared).contains(&"max-age=0".to_owned()));
        // The old cookie no longer works, even if a browser kept it.
        let data = srv.get("/ui/data.json", &jar).await;
        assert_eq!(data.status, 401);
        let page = srv.get("/ui", &jar).await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("Your session has ended; sign in again."));
        assert!(page.body.contains("action=\"/ui/login\""));
        let cleared = page.set_cookie("instauth_ui").unwrap();
        assert!(attributes(&cleared).contains(&"max-age=0".to_owned()));
    }
);

ui_test!(cross_site_posts_are_refused, |srv| async move {
    let (jar, csrf) = srv.sign_in().await;
    let refused = |page: &Page, why: &str| {
        assert_eq!(page.status, 403, "{why}: {}", page.body);
        assert_eq!(
            page.json()["message"],
            "Cross-site request refused.",
            "{why}"
        );
        assert!(page.json()["detail"].is_string(), "{why}");
        assert!(page.header("content-type").starts_with("application/json"));
    };
    // What a form on another site can send: the cookie (were it not SameSite=Strict), no token.
    let foreign = vec![
        ("origin", "https://evil.example".to_owned()),
        ("sec-fetch-site", "cross-site".to_owned()),
    ];
    refused(
        &srv.post_form("/ui/logout", &jar, &[], &foreign).await,
        "no token, foreign origin",
    );
    refused(
        &srv.post_form("/ui/logout", &jar, &[], &[]).await,
        "no token, no browser headers",
    );
    refused(
        &srv.post_form(
            "/ui/logout",
            &jar,
            &[("csrf", "x".repeat(43).as_str())],
            &[],
        )
        .await,
        "a wrong token",
    );
    // Even the right token does not pass from another origin.
    refused(
        &srv.post_form("/ui/logout", &jar, &[("csrf", &csrf)], &foreign)
            .await,
        "right token, foreign origin",
    );
    refused(
        &srv.post_form(
            "/ui/logout",
            &jar,
            &[("csrf", &csrf)],
            &[("origin", "https://evil.example".to_owned())],
        )
        .await,
        "right token, foreign Origin only",
    );
    refused(
        &srv.post_form(
            "/ui/logout",
            &jar,
            &[("csrf", &csrf)],
            &[("sec-fetch-site", "same-site".to_owned())],
        )
        .await,
        "right token, a sibling site",
    );
    refused(
        &srv.post_form(
            "/ui/logout",
            &jar,
            &[("csrf", &csrf)],
            &[("origin", "null".to_owned())],
        )
        .await,
        "an opaque origin nothing vouches for",
    );
    // Sign-in is guarded the same way: a cross-site form has no login cookie.
    let (login_jar, login_csrf) = srv.sign_in_form().await;
    refused(
        &srv.post_form(
            "/ui/login",
            &Jar::default(),
            &[("token", ADMIN), ("csrf", &login_csrf)],
            &[],
        )
        .await,
        "sign-in without the form's cookie",
    );
    refused(
        &srv.post_form("/ui/login", &login_jar, &[("token", ADMIN)], &[])
            .await,
        "sign-in without the form's token",
    );
    refused(
        &srv.post_form(
            "/ui/login",
            &login_jar,
            &[("token", ADMIN), ("csrf", &login_csrf)],
            &foreign,
        )
        .await,
        "sign-in from another site",
    );
    // None of that ended the session.
    assert_eq!(srv.get("/ui/data.json", &jar).await.status, 200);
    // A form body that is not a form of these fields is a 400, not a 500.
    let res = srv
        .http
        .post(format!("{}/ui/logout", srv.url))
        .header(header::COOKIE, jar.header())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("csrf=a&csrf=b")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = srv
        .http
        .post(format!("{}/ui/logout", srv.url))
        .header(header::COOKIE, jar.header())
        .body(vec![b'a'; 8 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
});

ui_test!(the_page_escapes_hostile_values, |srv| async move {
    srv.admin_build(
        "dev",
        json!({"resources": [{"name": "vm", "type": "aws_instance", "agents": [
            {"name": "main", "auth": "aws-instance-identity", "instance_id": HOSTILE_INSTANCE},
        ]}]}),
    )
    .await;
    // A proof asking for an agent that does not exist: refused, audited with the name as sent.
    let (status, _) = srv.aws("i-0hostile00000001", Some(HOSTILE_NAME)).await;
    assert_eq!(status, 404);
    srv.state.flush_audit().await;
    let (jar, _) = srv.sign_in().await;
    let page = srv.get("/ui", &jar).await;
    assert_eq!(page.status, 200);
    for raw in [HOSTILE_NAME, HOSTILE_INSTANCE, "<img", "<script>alert"] {
        assert!(!page.body.contains(raw), "{raw} unescaped in {}", page.body);
    }
    assert!(
        page.body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("i-&#34;&#62;&#60;img src=x onerror=alert(2)&#62;"));
    // The data endpoint is JSON (never sniffed as HTML) and carries the values as sent.
    let data = srv.get("/ui/data.json", &jar).await;
    assert!(data.header("content-type").starts_with("application/json"));
    assert_eq!(data.header("x-content-type-options"), "nosniff");
    let data = data.json();
    assert_eq!(data["audit"][0]["agent_name"], HOSTILE_NAME);
    assert_eq!(
        data["audit"][0]["reason"],
        format!("no candidate named {HOSTILE_NAME:?} (candidates: )")
    );
    assert_eq!(data["audit"][0]["outcome"], "not_found");
    assert_eq!(data["audit"][0]["outcome_kind"], "rejected");
    assert_eq!(
        data["workspaces"][0]["agents"][0]["instance_id"],
        HOSTILE_INSTANCE
    );
});

ui_test!(
    the_data_endpoint_answers_401_json_without_a_session,
    |srv| async move {
        for jar in [
            Jar::default(),
            Jar {
                login: None,
                session: Some("x".repeat(43)),
            },
        ] {
            let page = srv.get("/ui/data.json", &jar).await;
            assert_eq!(page.status, 401);
            assert!(page.header("content-type").starts_with("application/json"));
            assert_eq!(
                page.json(),
                json!({"message": "Sign in to the dashboard first: open /ui."})
            );
        }
    }
);

ui_test!(
    the_dashboard_shows_status_lifecycle_and_audit,
    |srv| async move {
        let iid = "i-0dashboard0000001";
        srv.admin_build(
            "dev",
            json!({"resources": [{"name": "vm", "type": "aws_instance", "agents": [
                {"name": "main", "auth": "aws-instance-identity", "instance_id": iid},
                {"name": "dev", "auth": "aws-instance-identity", "instance_id": iid},
            ]}]}),
        )
        .await;
        let (status, _) = srv.aws(iid, None).await;
        assert_eq!(status, 409);
        let (status, body) = srv.aws(iid, Some("main")).await;
        assert_eq!(status, 200);
        let res = srv
            .http
            .post(format!("{}/api/v2/workspaceagents/me/heartbeat", srv.url))
            .header(
                "Coder-Session-Token",
                body["session_token"].as_str().unwrap(),
            )
            .json(&json!({"lifecycle_state": "ready"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
        srv.state.flush_audit().await;
        let (jar, _) = srv.sign_in().await;
        let data = srv.get("/ui/data.json", &jar).await.json();
        let ws = &data["workspaces"][0];
        assert_eq!(ws["name"], "dev");
        assert_eq!(ws["summary"], "1 of 2 agents connected");
        let agent = |name: &str| {
            ws["agents"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == name)
                .unwrap()
                .clone()
        };
        let main = agent("main");
        assert_eq!(main["status"], "connected");
        assert_eq!(main["lifecycle"], "ready");
        assert_eq!(main["resource"], "vm");
        assert_eq!(main["resource_type"], "aws_instance");
        assert_eq!(main["instance_id"], iid);
        assert!(main["last_heartbeat"].as_str().unwrap().ends_with(" UTC"));
        let dev = agent("dev");
        assert_eq!(dev["status"], "connecting");
        assert_eq!(dev["last_heartbeat"], "never");
        let audit = data["audit"].as_array().unwrap();
        assert_eq!(audit.len(), 2);
        assert_eq!(audit[0]["outcome"], "ok");
        assert_eq!(audit[0]["agent_name"], "main");
        assert_eq!(audit[1]["outcome"], "conflict");
        assert_eq!(audit[1]["agent_name"], "(none)");
        assert_eq!(audit[1]["reason"], "several candidates: dev, main");
        // The page shows the same, status in words (not only a colour) and tables with headers.
        let page = srv.get("/ui", &jar).await.body;
        assert!(
            page.contains("data-status=\"connected\">connected</span>"),
            "{page}"
        );
        assert!(page.contains("data-status=\"connecting\">connecting</span>"));
        assert!(page.contains("<th scope=\"col\">Last heartbeat</th>"));
        assert!(page.contains("<th scope=\"row\" class=\"agent-name\">"));
        assert!(page.contains("several candidates: dev, main"));
    }
);

ui_test!(assets_are_served_with_their_types, |srv| async move {
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let page = srv.get(path, &Jar::default()).await;
        assert_eq!(page.status, 200);
        assert!(page.header("content-type").starts_with(kind), "{path}");
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert!(!page.body.is_empty());
        assert!(!page.body.contains("http://") && !page.body.contains("https://"));
    }
});

ui_test!(
    reset_key_forgets_the_binding_only_with_the_csrf_token,
    |srv| async move {
        let iid = "i-0dashboardkey0001";
        srv.admin_build(
            "dev",
            json!({"resources": [{"name": "vm", "type": "aws_instance", "agents": [
                {"name": "main", "auth": "aws-instance-identity", "instance_id": iid},
                {"name": "dev", "auth": "aws-instance-identity", "instance_id": iid,
                 "require_agent_key": true},
            ]}]}),
        )
        .await;
        let first = TestAgentKey::from_seed(1);
        let (status, body) = srv.aws_keyed(iid, Some("main"), Some(&first)).await;
        assert_eq!(status, 200, "{body}");
        let session_token = body["session_token"].as_str().unwrap().to_owned();
        let (jar, csrf) = srv.sign_in().await;
        let key_of = |data: &Value, name: &str| {
            data["workspaces"][0]["agents"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == name)
                .map(|a| {
                    (
                        a["key"].clone(),
                        a["key_bound"].clone(),
                        a["reset_path"].clone(),
                    )
                })
                .unwrap()
        };
        let data = srv.get("/ui/data.json", &jar).await.json();
        assert_eq!(
            key_of(&data, "main"),
            (
                json!(format!("bound {}", first.fingerprint())),
                json!(true),
                json!("/ui/workspaces/dev/agents/main/reset-key")
            )
        );
        assert_eq!(key_of(&data, "dev").0, "not bound (required)");
        let page = srv.get("/ui", &jar).await.body;
        assert!(
        page.contains("<form method=\"post\" action=\"/ui/workspaces/dev/agents/main/reset-key\" class=\"reset-key\">"),
        "{page}"
    );
        assert!(page.contains(
            "action=\"/ui/workspaces/dev/agents/dev/reset-key\" class=\"reset-key\" hidden>"
        ));

        let path = "/ui/workspaces/dev/agents/main/reset-key";
        let json_accept = ("accept", "application/json".to_owned());
        // Refused: no session, no token, a wrong token, another site.
        let page = srv
            .post_form(
                path,
                &Jar::default(),
                &[("csrf", &csrf)],
                &same_origin(&srv),
            )
            .await;
        assert_eq!(page.status, 401);
        assert_eq!(
            page.json()["message"],
            "Sign in to the dashboard first: open /ui."
        );
        let page = srv.post_form(path, &jar, &[], &same_origin(&srv)).await;
        assert_eq!(page.status, 403);
        assert_eq!(page.json()["detail"], "the CSRF token is missing");
        let page = srv
            .post_form(path, &jar, &[("csrf", &"A".repeat(43))], &same_origin(&srv))
            .await;
        assert_eq!(page.status, 403);
        let page = srv
            .post_form(
                path,
                &jar,
                &[("csrf", &csrf)],
                &[
                    ("origin", "https://evil.example".to_owned()),
                    ("sec-fetch-site", "cross-site".to_owned()),
                ],
            )
            .await;
        assert_eq!(page.status, 403);
        let data = srv.get("/ui/data.json", &jar).await.json();
        assert_eq!(
            key_of(&data, "main").1,
            json!(true),
            "still bound after the refusals"
        );

        // The page's script: 204, the binding gone, the agent's sessions ended.
        let mut headers = same_origin(&srv);
        headers.push(json_accept.clone());
        let page = srv
            .post_form(path, &jar, &[("csrf", &csrf)], &headers)
            .await;
        assert_eq!(page.status, 204, "{}", page.body);
        let data = srv.get("/ui/data.json", &jar).await.json();
        assert_eq!(key_of(&data, "main").0, "not bound");
        assert_eq!(key_of(&data, "main").1, json!(false));
        let res = srv
            .http
            .get(format!("{}/api/v2/workspaceagents/me/manifest", srv.url))
            .header("Coder-Session-Token", &session_token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "the reset ended the agent's sessions");

        // The rebuilt VM's new key binds on its next signed exchange.
        let second = TestAgentKey::from_seed(2);
        let (status, _) = srv.aws_keyed(iid, Some("main"), Some(&second)).await;
        assert_eq!(status, 200);
        let data = srv.get("/ui/data.json", &jar).await.json();
        assert_eq!(
            key_of(&data, "main").0,
            json!(format!("bound {}", second.fingerprint()))
        );
        // A plain form post (no script) goes back to the page.
        let page = srv
            .post_form(path, &jar, &[("csrf", &csrf)], &same_origin(&srv))
            .await;
        assert_eq!(page.status, 303);
        assert_eq!(page.header("location"), "/ui");
        // No such agent.
        let page = srv
            .post_form(
                "/ui/workspaces/dev/agents/nope/reset-key",
                &jar,
                &[("csrf", &csrf)],
                &headers,
            )
            .await;
        assert_eq!(page.status, 404);
        assert_eq!(
            page.json()["message"],
            "Agent \"nope\" not found in workspace \"dev\"."
        );
    }
);
