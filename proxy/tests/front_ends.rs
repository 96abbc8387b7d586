//! End-to-end behind real front ends (Debian's nginx and Caddy, started here on loopback):
//! a real login through the front end, then what the protected app receives. The configs
//! are the ones `docs/front-ends.md` gives users.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A front-end process, killed on drop.
struct FrontEnd {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl FrontEnd {
    /// Starts the front end and waits until it listens on `port`.
    async fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir, what: &str) -> FrontEnd {
        let mut child = cmd.stdout(Stdio::null()).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        wait_listening(port, &mut child, what).await;
        FrontEnd {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        }
    }
}

impl Drop for FrontEnd {
    fn drop(&mut self) {
        // SIGTERM first: an nginx master killed outright leaves its workers running.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn binary(path: &str) -> &str {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: run `make test` (tests/setup.sh installs nginx, caddy and redis-server)"
    );
    path
}

/// nginx with oauth2-proxy's documented `auth_request` configuration, including the
/// pass-through of a session split over two cookies.
async fn nginx(port: u16, proxy: &str, app: &str) -> FrontEnd {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Workers run as nobody when the tests run as root.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let snippet = std::fs::read_to_string(repo_root().join("docs/examples/nginx-auth-request.conf")).unwrap();
    let server = snippet
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port};"))
        .replace("server_name app.example.com;", "")
        .replace("http://sidekey-proxy:4180", proxy)
        .replace("http://app:8080", app)
        .lines()
        .filter(|l| !l.contains("ssl_certificate"))
        .collect::<Vec<_>>()
        .join("\n");
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  proxy_buffer_size 16k;\n  proxy_buffers 8 16k;\n{server}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new(binary("/usr/sbin/nginx"));
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stderr(Stdio::inherit());
    FrontEnd::spawn(cmd, port, dir, "nginx").await
}

/// Caddy with `forward_auth`, from the documented Caddyfile.
async fn caddy(port: u16, proxy: &str, app: &str, example: &str) -> FrontEnd {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::read_to_string(repo_root().join("docs/examples").join(example)).unwrap();
    let file = file
        .replace(
            "app.example.com {",
            &format!(
                "{{\n  admin off\n  auto_https off\n  storage file_system {}\n}}\nhttp://127.0.0.1:{port} {{",
                dir.path().display()
            ),
        )
        .replace("sidekey-proxy:4180", proxy.trim_start_matches("http://"))
        .replace("app:8080", app.trim_start_matches("http://").trim_end_matches('/'));
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, file).unwrap();
    let mut cmd = Command::new(binary("/usr/bin/caddy"));
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stderr(Stdio::null());
    FrontEnd::spawn(cmd, port, dir, "caddy").await
}

/// Users for these tests: `gus` has enough groups that his session needs two cookies;
/// `dora` has no groups and no preferred_username.
fn idp_users() -> serde_json::Value {
    let many: Vec<String> = (0..48)
        .map(|i| format!("{i:04}-{:x}", 0x9e3779b97f4a7c15u64.wrapping_mul(i + 1)))
        .collect();
    serde_json::json!({
        "alice": { "password": "alice-password", "email": "alice@example.com", "email_verified": true, "groups": ["admins", "devs"], "preferred_username": "alice", "name": "Alice" },
        "gus": { "password": "gus-password", "email": "gus@example.com", "email_verified": true, "groups": many, "preferred_username": "gus", "name": "Gus" },
        "dora": { "password": "dora-password", "email": "dora@example.com", "email_verified": true, "groups": [] },
    })
}

struct Stack {
    idp: Idp,
    proxy: Proxy,
    _app: Upstream,
    front: FrontEnd,
}

enum Front {
    Nginx,
    /// A Caddyfile under docs/examples/.
    Caddy(&'static str),
}

/// The IdP, the proxy (its own upstream a static 202: it only answers the front end), the
/// app, and the front end in front of both, on loopback.
async fn stack(front: Front, extra: &[&str]) -> Stack {
    let port = free_port();
    let front_url = format!("http://127.0.0.1:{port}");
    let listener = Proxy::bind().await;
    let idp = Idp::start(
        &[format!("{front_url}/oauth2/callback")],
        serde_json::json!({ "users": idp_users() }),
    );
    let app = Upstream::start().await;
    let redirect = format!("--redirect-url={front_url}/oauth2/callback");
    let mut flags = vec!["--reverse-proxy=true", "--set-xauthrequest", &redirect];
    flags.extend_from_slice(extra);
    let proxy = Proxy::start(listener, &Proxy::args(&idp.issuer, "static://202", &flags)).await;
    let front = match front {
        Front::Nginx => nginx(port, &proxy.url, app.url.trim_end_matches('/')).await,
        Front::Caddy(example) => caddy(port, &proxy.url, &app.url, example).await,
    };
    Stack {
        idp,
        proxy,
        _app: app,
        front,
    }
}

/// nginx tests also pass the access token on and refresh after a minute.
const NGINX_FLAGS: &[&str] = &[
    "--pass-access-token",
    "--scope=openid email profile offline_access",
    "--prompt=consent",
    "--cookie-refresh=1m",
];

fn set_cookies(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Follows the sign-in page's button through the IdP and back; returns the callback response.
async fn sign_in_via_page(client: &reqwest::Client, front: &str, page: &str, user: &str, password: &str) -> reqwest::Response {
    let start = page
        .split("action=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no sign-in form in {page}"));
    let rd = page
        .split("name=\"rd\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("/");
    let resp = client
        .get(format!("{front}{start}?rd={}", urlencode(&html_unescape(rd))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302, "start redirects to the IdP");
    let callback = idp_login(client, &location(&resp), user, password).await;
    client.get(callback).send().await.unwrap()
}

fn html_unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&#x2F;", "/")
        .replace("&#47;", "/")
        .replace("&quot;", "\"")
}

async fn app_view(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}: {}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

fn one<'a>(view: &'a serde_json::Value, name: &str) -> &'a str {
    view["headers"][name][0].as_str().unwrap_or_else(|| panic!("no {name} in {view}"))
}

#[tokio::test]
async fn nginx_auth_request_login_identity_and_refresh_cookie_pass_through() {
    let s = stack(Front::Nginx, NGINX_FLAGS).await;
    let client = browser();
    let f = &s.front.url;

    // Unauthenticated: nginx turns the 401 into its sign-in page (403) that returns here.
    let first = client.get(format!("{f}/reports/q3?x=1")).send().await.unwrap();
    assert_eq!(first.status(), 403);
    let page = first.text().await.unwrap();
    assert!(page.contains("/reports/q3?x=1"), "rd from X-Auth-Request-Redirect: {page}");
    let back = sign_in_via_page(&client, f, &page, "alice", "alice-password").await;
    assert_eq!(back.status(), 302);
    assert_eq!(location(&back), "/reports/q3?x=1");

    let view = app_view(&client, &format!("{f}/reports/q3?x=1")).await;
    assert_eq!(one(&view, "x-user"), "alice@example.com");
    assert_eq!(one(&view, "x-email"), "alice@example.com");
    assert!(!one(&view, "x-access-token").is_empty(), "token from auth_request_set");
    assert_eq!(view["uri"], "/reports/q3?x=1");

    // A client-sent identity header is overwritten by nginx with what the proxy said.
    let spoofed: serde_json::Value = client
        .get(format!("{f}/"))
        .header("x-user", "admin@example.com")
        .header("x-email", "admin@example.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spoofed["headers"]["x-user"], serde_json::json!(["alice@example.com"]));

    // A refresh during /oauth2/auth: the new cookie reaches the browser through nginx.
    s.proxy.clock.advance(Duration::from_secs(120));
    let resp = client.get(format!("{f}/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cookies = set_cookies(&resp);
    assert!(cookies.iter().any(|c| c.starts_with("_oauth2_proxy=")), "{cookies:?}");
    app_view(&client, &format!("{f}/after-refresh")).await;

    // Sign-out through nginx, then the front end refuses again.
    let out = client.get(format!("{f}/oauth2/sign_out")).send().await.unwrap();
    assert_eq!(out.status(), 302);
    assert_eq!(client.get(format!("{f}/")).send().await.unwrap().status(), 403);
    drop(s.idp);
}

#[tokio::test]
async fn nginx_passes_a_session_split_over_two_cookies() {
    let s = stack(Front::Nginx, NGINX_FLAGS).await;
    let client = browser();
    let f = &s.front.url;
    let page = client.get(format!("{f}/big")).send().await.unwrap().text().await.unwrap();
    let back = sign_in_via_page(&client, f, &page, "gus", "gus-password").await;
    let cookies = set_cookies(&back);
    let chunks: Vec<_> = cookies.iter().filter(|c| c.starts_with("_oauth2_proxy_")).collect();
    assert_eq!(
        chunks.iter().filter(|c| !c.contains("_csrf")).count(),
        2,
        "a two-cookie session: {cookies:?}"
    );
    let view = app_view(&client, &format!("{f}/big")).await;
    assert_eq!(one(&view, "x-user"), "gus@example.com");

    // The refresh rewrites both chunks; nginx must pass both Set-Cookie headers.
    s.proxy.clock.advance(Duration::from_secs(120));
    let resp = client.get(format!("{f}/big")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cookies = set_cookies(&resp);
    for name in ["_oauth2_proxy_0=", "_oauth2_proxy_1="] {
        let c = cookies
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not passed on: {cookies:?}"));
        assert!(c.contains("Path=/") && c.contains("HttpOnly"), "attributes kept: {c}");
    }
    let view = app_view(&client, &format!("{f}/big")).await;
    assert_eq!(one(&view, "x-user"), "gus@example.com", "the refreshed two-cookie session works");
    drop(s.idp);
}

#[tokio::test]
async fn caddy_forward_auth_login_and_what_the_app_receives() {
    let s = stack(Front::Caddy("Caddyfile"), &[]).await;
    let client = browser();
    let f = &s.front.url;
    let first = client.get(format!("{f}/dash?tab=2&q=a%20b")).send().await.unwrap();
    assert_eq!(first.status(), 200, "401 turned into the sign-in page");
    let page = first.text().await.unwrap();
    let back = sign_in_via_page(&client, f, &page, "dora", "dora-password").await;
    assert_eq!(location(&back), "/dash?tab=2&q=a%20b", "back to the original URL, query intact");

    let view = app_view(&client, &format!("{f}/dash?tab=2")).await;
    assert_eq!(one(&view, "x-auth-request-email"), "dora@example.com");
    // Caddy 2.6 copies a missing header as its literal placeholder; the proxy always sends
    // the header (empty when unknown), so no placeholder reaches the app.
    let text = view["headers"].to_string();
    assert!(!text.contains("{http."), "placeholder leaked to the app: {text}");
    for name in ["x-auth-request-groups", "x-auth-request-preferred-username"] {
        let v = view["headers"].get(name).and_then(|v| v[0].as_str()).unwrap_or("");
        assert_eq!(v, "", "{name}");
    }
    // A client-sent copy never wins.
    let spoofed: serde_json::Value = client
        .get(format!("{f}/x"))
        .header("x-auth-request-email", "admin@example.com")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spoofed["headers"]["x-auth-request-email"], serde_json::json!(["dora@example.com"]));
    drop(s.idp);
}

#[tokio::test]
async fn caddy_emulating_traefik_forward_auth_to_a_static_upstream() {
    // Traefik's forwardAuth calls the proxy's `/` with X-Forwarded-*; non-2xx answers go
    // to the browser as they are. Caddy's forward_auth with `uri /` does the same.
    let s = stack(Front::Caddy("Caddyfile.traefik-style"), &["--skip-provider-button=true"]).await;
    let client = browser();
    let f = &s.front.url;
    let first = client.get(format!("{f}/orders/7")).send().await.unwrap();
    assert_eq!(first.status(), 302, "straight to the IdP");
    assert!(location(&first).starts_with(&s.idp.issuer));
    let callback = idp_login(&client, &location(&first), "alice", "alice-password").await;
    let back = client.get(callback).send().await.unwrap();
    assert_eq!(location(&back), "/orders/7", "original URL from X-Forwarded-Uri");
    let view = app_view(&client, &format!("{f}/orders/7")).await;
    assert_eq!(one(&view, "x-auth-request-user"), "alice@example.com");
    assert_eq!(one(&view, "x-auth-request-groups"), "admins,devs");
    drop(s.idp);
}
