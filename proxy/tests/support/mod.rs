//! Test peers: the real OpenID provider (node + oidc-provider), an in-process upstream that
//! echoes what it received, and the proxy itself on a free loopback port; real Tomcat in
//! `tomcat.rs`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sidekey_proxy::config::{Config, ConnectionLimits, load};
use sidekey_proxy::oidc::Clock;
use tokio::net::TcpListener;

pub mod h2_frames;
mod hypercorn;
mod redis_server;
mod scripted_idp;
mod tokens;
mod tomcat;
pub use hypercorn::*;
pub use redis_server::*;
pub use scripted_idp::*;
pub use tokens::*;
pub use tomcat::*;

pub const COOKIE_SECRET: &str = "kWLVCNcSNRuhD1mwXR8ExoBRH8hjQCxDdQz9IMxbG5E=";
pub const CLIENT_ID: &str = "sidekey-test";
pub const CLIENT_SECRET: &str = "sidekey-test-secret";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The real OpenID provider, stopped on drop.
pub struct Idp {
    pub issuer: String,
    /// `http://127.0.0.1:<port>`; Entra-shaped tenants live below it.
    pub base: String,
    child: Child,
}

impl Idp {
    /// Starts the IdP with one confidential client allowed to redirect to `redirect_uris`.
    pub fn start(redirect_uris: &[String], extra: serde_json::Value) -> Idp {
        let mut cfg = serde_json::json!({
            "clients": [{
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": redirect_uris,
                "grant_types": ["authorization_code", "refresh_token"],
                "post_logout_redirect_uris": [],
            }],
        });
        if let (Some(base), Some(more)) = (cfg.as_object_mut(), extra.as_object()) {
            base.extend(more.clone());
        }
        Idp::start_config(cfg)
    }

    /// Starts the IdP with exactly this configuration (see tests/idp/server.mjs).
    pub fn start_config(cfg: serde_json::Value) -> Idp {
        let script = repo_root().join("tests/idp/server.mjs");
        assert!(
            repo_root().join("tests/node_modules/oidc-provider").exists(),
            "tests/node_modules is missing: run `make test` (it runs npm ci in tests/)"
        );
        // A node that hangs before listening (seen once: a deadlock inside Node's own key
        // generation) must cost a retry, not the whole run.
        let (mut child, line) = (0..3)
            .find_map(|_| {
                let mut child = Command::new("node")
                    .arg(&script)
                    .arg(cfg.to_string())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("node is installed (make test installs the test peers)");
                let stdout = child.stdout.take().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    let _ = BufReader::new(stdout).read_line(&mut line);
                    let _ = tx.send(line);
                });
                match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) => Some((child, line)),
                    Err(_) => {
                        eprintln!("the test IdP printed nothing in 30 s; starting another");
                        let _ = child.kill();
                        let _ = child.wait();
                        None
                    }
                }
            })
            .expect("the test IdP (node tests/idp/server.mjs) never started");
        let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("IdP did not start: {e}: {line:?}")
        });
        Idp {
            issuer: info["issuer"].as_str().unwrap().to_string(),
            base: info["base"].as_str().unwrap().to_string(),
            child,
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What this test binary's proxies logged (text lines, level info and up), so a test can
/// check what an operator finds under a request id.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber once per test binary (later calls are no-ops).
pub fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(|| LogSink)
        .try_init();
}

/// The log lines so far that contain `needle` (e.g. a request id).
pub fn logged(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&LOGS.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect()
}

/// The request id a response carries (the proxy sets `X-Request-Id` on every response).
pub fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_string()
}

/// A clock the test can move forward.
#[derive(Clone, Default)]
pub struct TestClock(Arc<AtomicI64>);

impl TestClock {
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_secs() as i64, Ordering::SeqCst);
    }

    pub fn clock(&self) -> Clock {
        let offset = self.0.clone();
        Arc::new(move || SystemTime::now() + Duration::from_secs(offset.load(Ordering::SeqCst) as u64))
    }
}

/// The request-head deadline of [`Proxy::start_short_deadlines`]: long enough for a loaded
/// machine to serve real clients meanwhile, short enough that a test does not wait out the
/// production 10 s.
pub const SHORT_HEAD_DEADLINE: Duration = Duration::from_secs(4);

/// A running proxy; stopped (gracefully) on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub url: String,
    pub clock: TestClock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn bind() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    /// Starts the proxy on `listener` with oauth2-proxy-style flags.
    pub async fn start(listener: TcpListener, args: &[String]) -> Proxy {
        Proxy::start_with_env(listener, args, &[]).await
    }

    /// Starts the proxy with flags and environment variables.
    pub async fn start_with_env(listener: TcpListener, args: &[String], env: &[(&str, &str)]) -> Proxy {
        Proxy::start_workers(vec![listener.into_std().unwrap()], args, env).await
    }

    /// Starts the proxy with one worker per listener (from `server::bind`), the first on
    /// this runtime and the others on threads of their own, as the binary does.
    pub async fn start_workers(listeners: Vec<std::net::TcpListener>, args: &[String], env: &[(&str, &str)]) -> Proxy {
        Proxy::start_configured(listeners, args, env, ConnectionLimits::default()).await
    }

    /// [`Proxy::start`] with the connection deadlines shortened to [`SHORT_HEAD_DEADLINE`], for
    /// the tests that wait for a deadline to pass.
    pub async fn start_short_deadlines(listener: TcpListener, args: &[String]) -> Proxy {
        let limits = ConnectionLimits {
            header_read: SHORT_HEAD_DEADLINE,
            ..ConnectionLimits::default()
        };
        Proxy::start_configured(vec![listener.into_std().unwrap()], args, &[], limits).await
    }

    async fn start_configured(
        listeners: Vec<std::net::TcpListener>,
        args: &[String],
        env: &[(&str, &str)],
        limits: ConnectionLimits,
    ) -> Proxy {
        install_crypto();
        capture_logs();
        let mut argv = vec!["sidekey-proxy".to_string()];
        argv.extend_from_slice(args);
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let inv = load(argv, env).unwrap_or_else(|e| panic!("config: {e}"));
        let mut cfg = Config::from_values(&inv.values).unwrap_or_else(|e| panic!("config: {e}"));
        cfg.limits = limits;
        let addr = listeners[0].local_addr().unwrap();
        let clock = TestClock::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let c = clock.clock();
        let task = tokio::spawn(async move {
            sidekey_proxy::run(cfg, listeners, c, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Proxy {
            addr,
            url: format!("http://{addr}"),
            clock,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Flags for a proxy in front of `upstream`, logging in at `idp`.
    pub fn args(idp_issuer: &str, upstream: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "--provider=oidc",
            &format!("--oidc-issuer-url={idp_issuer}"),
            &format!("--client-id={CLIENT_ID}"),
            &format!("--client-secret={CLIENT_SECRET}"),
            &format!("--cookie-secret={COOKIE_SECRET}"),
            "--cookie-secure=false",
            "--email-domain=example.com",
            &format!("--upstream={upstream}"),
            "--request-logging=false",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    pub fn trigger_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// An upstream that answers with JSON describing the request it received. `/slow` waits
/// 500 ms; `/ws` accepts an upgrade and echoes bytes.
pub struct Upstream {
    pub url: String,
    /// Notified when a `/slow` request has arrived.
    pub slow_started: Arc<tokio::sync::Notify>,
    /// The request URIs received, in order.
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slow_started = Arc::new(tokio::sync::Notify::new());
        let notify = slow_started.clone();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let notify = notify.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let notify = notify.clone();
                        record.lock().unwrap().push(req.uri().to_string());
                        async move { Ok::<_, Infallible>(echo(req, &notify).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            url: format!("http://{addr}/"),
            slow_started,
            seen,
        }
    }
}

async fn echo(mut req: Request<Incoming>, slow_started: &tokio::sync::Notify) -> Response<Full<Bytes>> {
    if req.uri().path() == "/ws" {
        let accept = req
            .headers()
            .get("sec-websocket-key")
            .and_then(|k| k.to_str().ok())
            .map(sidekey_proxy::upgrade::websocket_accept)
            .unwrap_or_default();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if req.uri().path() == "/slow" {
        slow_started.notify_one();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let mut body_len = 0usize;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map(|f| f.into_data()) {
            body_len += data.map(|d| d.len()).unwrap_or(0);
        }
    }
    let json = serde_json::json!({ "method": method, "uri": uri, "headers": headers, "body_len": body_len });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap()
}

/// An HTTP client with a cookie jar that does not follow redirects, so each hop is checked.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location on {} {}", resp.status(), resp.url()))
        .to_str()
        .unwrap()
        .to_string()
}

/// The value of the cookie `name` that a response sets.
pub fn set_cookie_value(resp: &reqwest::Response, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            let pair = c.split(';').next()?;
            pair.strip_prefix(&prefix).map(String::from)
        })
}

fn absolute(base: &str, loc: &str) -> String {
    url::Url::parse(base).unwrap().join(loc).unwrap().to_string()
}

/// The IdP's part of a login: from the authorization URL to the proxy's callback URL.
/// Login form POST, then the consent form (a new interaction id), then back to us.
pub async fn idp_login(client: &reqwest::Client, auth_url: &str, user: &str, password: &str) -> String {
    let mut url = auth_url.to_string();
    let mut posted_login = false;
    for _ in 0..12 {
        let resp = client.get(&url).send().await.unwrap();
        if resp.status().is_redirection() {
            let next = absolute(&url, &location(&resp));
            if next.contains("/oauth2/callback") {
                return next;
            }
            url = next;
            continue;
        }
        let body = resp.text().await.unwrap();
        let uid = url
            .rsplit("/interaction/")
            .next()
            .unwrap()
            .split(['/', '?'])
            .next()
            .unwrap()
            .to_string();
        let idp_base = url.split("/interaction/").next().unwrap().to_string();
        let resp = if body.contains("id=\"login\"") && !posted_login {
            posted_login = true;
            client
                .post(format!("{idp_base}/interaction/{uid}/login"))
                .form(&[("login", user), ("password", password)])
                .send()
                .await
                .unwrap()
        } else if body.contains("id=\"consent\"") {
            client.post(format!("{idp_base}/interaction/{uid}/confirm")).send().await.unwrap()
        } else {
            panic!("unexpected IdP page at {url}: {body}");
        };
        assert!(resp.status().is_redirection(), "IdP answered {} at {url}", resp.status());
        url = absolute(&url, &location(&resp));
        if url.contains("/oauth2/callback") {
            return url;
        }
    }
    panic!("login did not reach the callback");
}

/// `/oauth2/start` → IdP → callback URL (not yet visited).
pub async fn start_and_authenticate(client: &reqwest::Client, proxy: &str, rd: &str, user: &str, password: &str) -> String {
    let resp = client
        .get(format!("{proxy}/oauth2/start?rd={}", urlencode(rd)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302, "start redirects to the IdP");
    idp_login(client, &location(&resp), user, password).await
}

/// A full login; returns the proxy's response to the callback.
pub async fn login(client: &reqwest::Client, proxy: &str, rd: &str, user: &str, password: &str) -> reqwest::Response {
    let callback = start_and_authenticate(client, proxy, rd, user, password).await;
    client.get(callback).send().await.unwrap()
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A loopback port that was free a moment ago, for peers that must be told their port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits for a condition with a deadline, polling; never a fixed sleep.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// An issuer nobody listens on, for tests that never log in.
pub fn dead_issuer() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

/// `s` sealed as the test proxy's session cookie value (the test knows the cookie secret).
pub fn seal_session(s: &sidekey_proxy::session::Session) -> String {
    use sidekey_proxy::session::codec::{Purpose, Sealer};
    let secret = sidekey_proxy::config::parse_cookie_secret(COOKIE_SECRET).unwrap();
    Sealer::new(&secret, Purpose::Session).seal("_oauth2_proxy", s)
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// One raw HTTP/1.1 request (no client library normalizes it first); the status and body.
pub async fn raw_http(addr: SocketAddr, method: &str, target: &str, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {target} HTTP/1.1\r\nHost: app.example.com\r\nAccept: text/html\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The real OpenID provider, an echoing upstream and the proxy signing in with it.
pub struct LoginEnv {
    pub idp: Idp,
    pub proxy: Proxy,
    pub _upstream: Upstream,
}

/// [`login_env_with`] with no extra IdP configuration.
pub async fn login_env(extra: &[&str]) -> LoginEnv {
    login_env_with(extra, serde_json::json!({})).await
}

/// The peers for a login, the proxy started with `extra` flags.
pub async fn login_env_with(extra: &[&str], idp_extra: serde_json::Value) -> LoginEnv {
    let listener = Proxy::bind().await;
    let callback = format!("http://{}/oauth2/callback", listener.local_addr().unwrap());
    let idp = Idp::start(&[callback], idp_extra);
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(listener, &Proxy::args(&idp.issuer, &upstream.url, extra)).await;
    LoginEnv {
        idp,
        proxy,
        _upstream: upstream,
    }
}
