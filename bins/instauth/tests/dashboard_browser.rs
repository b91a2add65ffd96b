//! The dashboard in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
//! installed by `cargo xtask test`) drives the real `instauth server` binary over loopback.
//!
//! It signs in with the admin token, watches the two agents of the quickstart workspace turn
//! `connected` after their heartbeats without the page reloading, sees a rejected exchange (and a
//! hostile agent name, as inert text) appear in the audit, and checks that the page never sent a
//! request to another host. Screenshots go to `target/tmp/dashboard-*.png`; with
//! `INSTAUTH_UPDATE_DOCS_SCREENSHOT=1` the wide one is also written to
//! `docs/images/dashboard.png`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{instauth, Server};
use instauth_testkit::browser::Browser;
use instauth_testkit::TestAgentKey;
use instauth_types::{AwsInstanceIdentityRequest, ExchangeRequest};
use serde_json::{json, Value};

/// Markup as an agent name (within the 64 characters an exchange accepts).
const HOSTILE_NAME: &str = "<img src=x onerror=\"pwned=1\"><script>pwned=2</script>";

/// Script returning "name=status,..." of the agent rows, sorted.
const CONNECTED_IS: &str = "return Array.from(document.querySelectorAll('table.agents tbody tr'))\
    .map(r => r.querySelector('[data-field=name]').textContent + '=' \
    + r.querySelector('[data-field=status]').textContent).sort().join(',')";

/// Script listing accessibility problems of the page: headings that skip a level, form fields
/// without a label, table headers without a scope, missing landmarks, and text whose contrast
/// with its background is under WCAG AA's 4.5:1.
const ACCESSIBILITY_PROBLEMS: &str = r#"
const problems = [];
let level = 0;
for (const h of document.querySelectorAll('h1, h2, h3, h4, h5, h6')) {
  if (h.closest('template')) continue;
  const l = Number(h.tagName[1]);
  if (l > level + 1) problems.push('heading ' + h.tagName + ' after h' + level + ': ' + h.textContent);
  level = l;
}
for (const i of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
  if (!i.labels || i.labels.length === 0) problems.push('unlabelled field ' + i.name);
}
for (const th of document.querySelectorAll('th')) {
  if (!th.getAttribute('scope')) problems.push('th without scope: ' + th.textContent);
}
if (!document.querySelector('main')) problems.push('no main landmark');
if (!document.querySelector('body > header')) problems.push('no banner');
if (!document.documentElement.lang) problems.push('no page language');
function rgb(c) { return c.match(/[\d.]+/g).map(Number); }
function lum(c) {
  const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
function background(el) {
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length < 4 || c[3] > 0) return c;
  }
  return [255, 255, 255];
}
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  const el = n.parentElement;
  if (!n.textContent.trim() || !el.getClientRects().length || el.closest('.visually-hidden')) continue;
  const fg = lum(rgb(getComputedStyle(el).color));
  const bg = lum(background(el));
  const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
  if (ratio < 4.5) problems.push('contrast ' + ratio.toFixed(2) + ' of "' + n.textContent.trim().slice(0, 40) + '"');
}
return problems;
"#;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The quickstart's real AWS proof (instance `i-076e9b91f7c420782`), asking for `name`.
fn proof(name: Option<&str>) -> Value {
    let mut p = read_json(&example("aws-exchange.json"));
    match name {
        Some(n) => p["agent_name"] = json!(n),
        None => {
            p.as_object_mut().unwrap().remove("agent_name");
        }
    }
    p
}

struct Api {
    url: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn exchange(&self, name: Option<&str>) -> (u16, Value) {
        self.exchange_keyed(name, None)
    }

    /// An exchange signed with the agent key `key` when given (SPEC §2.1).
    fn exchange_keyed(&self, name: Option<&str>, key: Option<&TestAgentKey>) -> (u16, Value) {
        let body: AwsInstanceIdentityRequest = serde_json::from_value(proof(name)).unwrap();
        let agent_key = key
            .map(|k| k.sign(&body, chrono::Utc::now().timestamp()))
            .unwrap_or_default();
        let res = self
            .http
            .post(format!(
                "{}/api/v2/workspaceagents/aws-instance-identity",
                self.url
            ))
            .json(&ExchangeRequest { body, agent_key })
            .send()
            .unwrap();
        (res.status().as_u16(), res.json().unwrap_or_default())
    }

    fn heartbeat(&self, token: &str) {
        let res = self
            .http
            .post(format!("{}/api/v2/workspaceagents/me/heartbeat", self.url))
            .header("Coder-Session-Token", token)
            .json(&json!({"lifecycle_state": "ready"}))
            .send()
            .unwrap();
        assert_eq!(res.status(), 204);
    }
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{name}.png"))
}

/// Fails the test on any request that left the server's origin from a frame that showed the
/// dashboard: its navigations, scripts, styles, images, fetches (chromedriver's performance
/// log), and the page's own Performance API entries as a second witness.
fn assert_only_own_origin(browser: &Browser, origin: &str) {
    let sent = browser.sent_requests().unwrap();
    let ours = |url: &str| url.starts_with(&format!("{origin}/"));
    // A request comes from the dashboard when it was sent for one of its documents, or when it
    // navigates a frame away from one. The browser's own start page shares the first frame.
    let mut showing: std::collections::HashMap<&str, &str> = Default::default();
    let mut own = 0;
    let mut foreign = Vec::new();
    for r in &sent {
        let navigation = r.resource_type == "Document";
        let from_dashboard = ours(&r.document_url)
            || (navigation && showing.get(r.frame_id.as_str()).is_some_and(|d| ours(d)));
        if from_dashboard {
            own += 1;
            if !ours(&r.url) {
                foreign.push(r.url.as_str());
            }
        }
        if navigation {
            showing.insert(&r.frame_id, &r.url);
        }
    }
    assert!(
        own > 0,
        "the performance log saw none of the page's requests: {sent:?}"
    );
    assert!(
        foreign.is_empty(),
        "the page sent requests to other hosts: {foreign:?}"
    );
    let resources = browser
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)\
             .concat(performance.getEntriesByType('navigation').map(e => e.name));",
            json!([]),
        )
        .unwrap();
    for r in resources.as_array().unwrap() {
        let r = r.as_str().unwrap();
        assert!(ours(r), "the page loaded a resource from another host: {r}");
    }
}

#[test]
fn dashboard_in_chromium_signs_in_refreshes_live_and_loads_nothing_from_elsewhere() {
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_logged({
        let mut c = instauth(home.path());
        c.args(["server", "--listen", "127.0.0.1:0"]);
        c
    });
    let admin = std::fs::read_to_string(home.path().join(".local/share/instauth/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let api = Api {
        url: server.url.clone(),
        http: reqwest::blocking::Client::new(),
    };
    let res = api
        .http
        .post(format!("{}/api/v2/workspaces/dev/builds", server.url))
        .bearer_auth(&admin)
        .json(&read_json(&example("build.json")))
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);

    let browser =
        Browser::start().unwrap_or_else(|e| panic!("the browser test needs Chromium: {e}"));
    browser.set_window_size(1280, 860).unwrap();
    browser.goto(&format!("{}/ui", server.url)).unwrap();

    // Signed out: the form, not a JSON 401.
    let input = browser.find("input#token[type=password]").unwrap();
    let label = browser
        .execute(
            "return document.querySelector('label[for=token]').textContent;",
            json!([]),
        )
        .unwrap();
    assert_eq!(label, "Admin token");
    assert_eq!(
        browser.execute(ACCESSIBILITY_PROBLEMS, json!([])).unwrap(),
        json!([]),
        "the sign-in page"
    );
    browser.send_keys(&input, "not-the-token").unwrap();
    browser
        .click(&browser.find("form.login-form button[type=submit]").unwrap())
        .unwrap();
    browser
        .wait_for(
            "the wrong token to be refused",
            Duration::from_secs(10),
            "const e = document.getElementById('login-error'); return e && e.textContent;",
        )
        .unwrap();
    let input = browser.find("input#token").unwrap();
    browser.send_keys(&input, &admin).unwrap();
    browser
        .click(&browser.find("form.login-form button[type=submit]").unwrap())
        .unwrap();
    browser
        .wait_for(
            "the dashboard after signing in",
            Duration::from_secs(10),
            "return document.querySelector('main[data-dashboard]') !== null;",
        )
        .unwrap();
    // The session cookie is HttpOnly: the page's script cannot read it.
    let cookies = browser
        .execute("return document.cookie;", json!([]))
        .unwrap();
    assert_eq!(cookies, "", "cookies visible to script: {cookies}");

    assert_eq!(
        browser
            .execute(&format!("{CONNECTED_IS};"), json!([]))
            .unwrap(),
        "dev=connecting,main=connecting"
    );
    // A reload would lose this mark and add a navigation.
    browser
        .execute("window.instauthMark = 'kept'; return true;", json!([]))
        .unwrap();

    // A rejected exchange: two agents share the instance and no name is given.
    let (status, body) = api.exchange(None);
    assert_eq!(status, 409, "{body}");
    // `main` holds an agent key, `dev` none: its first signed exchange binds the key.
    let main_key = TestAgentKey::from_seed(7);
    for (name, key) in [("main", Some(&main_key)), ("dev", None)] {
        let (status, body) = api.exchange_keyed(Some(name), key);
        assert_eq!(status, 200, "{body}");
        api.heartbeat(body["session_token"].as_str().unwrap());
    }

    browser
        .wait_for(
            "both agents to turn connected without a reload",
            Duration::from_secs(20),
            &format!("{CONNECTED_IS} === 'dev=connected,main=connected';"),
        )
        .unwrap();
    browser
        .wait_for(
            "the 409 to appear in the audit",
            Duration::from_secs(20),
            "return Array.from(document.querySelectorAll('#audit-rows tr')).some(r => \
               r.querySelector('[data-field=outcome]').textContent === 'conflict' && \
               r.querySelector('[data-field=reason]').textContent === 'several candidates: dev, main');",
        )
        .unwrap();
    assert_eq!(
        browser.execute(ACCESSIBILITY_PROBLEMS, json!([])).unwrap(),
        json!([]),
        "the dashboard"
    );
    // The same in the dark scheme.
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        )
        .unwrap();
    assert_eq!(
        browser.execute(ACCESSIBILITY_PROBLEMS, json!([])).unwrap(),
        json!([]),
        "the dashboard in the dark scheme"
    );
    browser
        .cdp("Emulation.setEmulatedMedia", json!({"features": []}))
        .unwrap();
    // The check itself sees a problem when there is one.
    let seen = browser
        .execute(
            &("const p = document.createElement('p'); p.textContent = 'faint'; \
             p.className = 'probe'; document.querySelector('main').append(p); \
             p.style.color = '#cccccc'; const h = document.createElement('h4'); \
             h.textContent = 'skipped'; h.className = 'probe'; p.after(h); \
             const r = (function () {"
                .to_owned()
                + ACCESSIBILITY_PROBLEMS
                + "})(); document.querySelectorAll('.probe').forEach(e => e.remove()); return r;"),
            json!([]),
        )
        .unwrap();
    assert_eq!(seen.as_array().map(Vec::len), Some(2), "{seen}");
    // The wide screenshot (and the one in docs/), before anything hostile is in the audit.
    browser
        .save_full_page_screenshot(&screenshot_path("wide"))
        .unwrap();
    if std::env::var_os("INSTAUTH_UPDATE_DOCS_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/images/dashboard.png");
        browser.save_full_page_screenshot(&docs).unwrap();
    }

    // Resetting main's key from the page: the binding goes, without a reload.
    let key_cells =
        "return Array.from(document.querySelectorAll('section[data-workspace=dev] tbody tr'))\
        .map(r => r.querySelector('[data-field=name]').textContent + '=' \
          + r.querySelector('[data-field=key]').textContent \
          + (r.querySelector('form.reset-key').hidden ? '' : ' [reset]')).sort().join(',');";
    assert_eq!(
        browser.execute(key_cells, json!([])).unwrap(),
        format!(
            "dev=not bound,main=bound {} [reset]",
            main_key.fingerprint()
        )
    );
    browser
        .click(
            &browser
                .find("section[data-workspace=dev] tr:has([data-field=name]) form.reset-key:not([hidden]) button")
                .unwrap(),
        )
        .unwrap();
    browser
        .wait_for(
            "the reset to show",
            Duration::from_secs(20),
            &format!(
                "const k = (function () {{ {key_cells} }})(); \
                 const n = document.getElementById('notice').textContent; \
                 return k === 'dev=not bound,main=not bound' && n.startsWith('The key of agent main was reset') ? n : null;"
            ),
        )
        .unwrap();

    // A workspace applied while the page is open appears in it, in name order.
    let res = api
        .http
        .post(format!("{}/api/v2/workspaces/ci/builds", server.url))
        .bearer_auth(&admin)
        .json(
            &json!({"resources": [{"name": "runner", "type": "docker_container",
            "agents": [{"name": "job", "auth": "token"}]}]}),
        )
        .send()
        .unwrap();
    assert_eq!(res.status(), 201);
    let sections = browser
        .wait_for(
            "workspace ci to appear",
            Duration::from_secs(20),
            "const s = Array.from(document.querySelectorAll('#workspaces > section'));\
             const ci = document.querySelector('section[data-workspace=ci]');\
             return ci && ci.querySelector('[data-field=status]').textContent === 'connecting' \
               && ci.querySelector('h3').id !== '' \
               && ci.getAttribute('aria-labelledby') === ci.querySelector('h3').id \
               ? s.map(e => e.dataset.workspace + ':' + e.querySelector('[data-field=summary]').textContent) : null;",
        )
        .unwrap();
    assert_eq!(
        sections,
        json!(["ci:0 of 1 agent connected", "dev:2 of 2 agents connected"])
    );

    // A hostile name, refused (no such agent) and recorded as it was sent, appears as text.
    let (status, _) = api.exchange(Some(HOSTILE_NAME));
    assert_eq!(status, 404);
    let hostile = browser
        .wait_for(
            "the hostile name to appear in the audit",
            Duration::from_secs(20),
            "const r = Array.from(document.querySelectorAll('#audit-rows tr'))\
               .find(r => r.querySelector('[data-field=outcome]').textContent === 'not_found');\
             return r ? r.querySelector('[data-field=agent_name]').textContent : null;",
        )
        .unwrap();
    assert_eq!(hostile, HOSTILE_NAME, "shown as text, exactly as sent");
    let state = browser
        .execute(
            "return {mark: window.instauthMark || null, pwned: window.pwned || null, \
              navigations: performance.getEntriesByType('navigation').length, \
              injected: document.querySelectorAll('#audit-rows img, #audit-rows script').length, \
              summary: document.querySelector('section[data-workspace=dev] [data-field=summary]').textContent};",
            json!([]),
        )
        .unwrap();
    assert_eq!(
        state,
        json!({"mark": "kept", "pwned": null, "navigations": 1, "injected": 0,
               "summary": "2 of 2 agents connected"}),
        "the page reloaded, or ran injected markup"
    );
    let console = browser.console().unwrap();
    assert!(
        !console
            .iter()
            .any(|m| m.contains("Content Security Policy")),
        "the page broke its own CSP: {console:?}"
    );

    assert_only_own_origin(&browser, &server.url);

    // A phone: the page itself never scrolls sideways (tables scroll inside their box).
    browser.set_window_size(390, 844).unwrap();
    let overflow = browser
        .wait_for(
            "the narrow layout",
            Duration::from_secs(5),
            "return window.innerWidth <= 400 ? \
               document.documentElement.scrollWidth - document.documentElement.clientWidth : null;",
        )
        .unwrap();
    if overflow != 0 {
        let wide = browser
            .execute(
                "return Array.from(document.querySelectorAll('body *'))\
                   .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)\
                   .filter(e => !e.closest('.table-scroll'))\
                   .map(e => e.tagName + '.' + e.className).slice(0, 20);",
                json!([]),
            )
            .unwrap();
        panic!("the page is {overflow} px wider than a phone's screen; too wide: {wide}");
    }
    browser.save_screenshot(&screenshot_path("phone")).unwrap();

    // Signing out ends the session: the refresh stops and the page asks to sign in again.
    browser
        .click(&browser.find("form.logout button").unwrap())
        .unwrap();
    browser
        .wait_for(
            "the sign-in form after signing out",
            Duration::from_secs(10),
            "return document.querySelector('input#token') !== null;",
        )
        .unwrap();
    assert_only_own_origin(&browser, &server.url);
    drop(browser);
    drop(server);
}
