//! Forwarding behaviour with a session sealed by the test (it knows the cookie secret), so
//! no identity provider is needed: streaming, WebSockets, upstream failures, static and
//! file upstreams, graceful shutdown.

use std::time::{Duration, Instant};

use crate::support::*;
use sidekey_proxy::session::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn session_cookie() -> String {
    let now = now_secs();
    let s = Session {
        user: "alice@example.com".into(),
        email: "alice@example.com".into(),
        preferred_username: "alice".into(),
        groups: vec!["devs".into()],
        created_at: now,
        expires_at: now + 3600,
        ..Session::default()
    };
    format!("_oauth2_proxy={}", seal_session(&s))
}

async fn proxy_for(upstreams: &[&str]) -> Proxy {
    let mut extra: Vec<String> = upstreams.iter().map(|u| format!("--upstream={u}")).collect();
    extra.push("--upstream-timeout=2s".into());
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut args = Proxy::args(&dead_issuer(), "static://299", &extra_refs);
    args.retain(|a| a != "--upstream=static://299");
    Proxy::start(Proxy::bind().await, &args).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// GET `url` as a signed-in user.
async fn signed_in_get(url: String) -> reqwest::Response {
    client().get(url).header("cookie", session_cookie()).send().await.unwrap()
}

#[tokio::test]
async fn streams_large_bodies_both_ways() {
    let upstream = Upstream::start().await;
    let proxy = proxy_for(&[&upstream.url]).await;
    let body = vec![b'x'; 16 * 1024 * 1024];
    let resp = client()
        .post(format!("{}/upload", proxy.url))
        .header("cookie", session_cookie())
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let view: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(view["body_len"], 16 * 1024 * 1024);
    assert_eq!(view["method"], "POST");
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    let upstream = Upstream::start().await;
    let proxy = proxy_for(&[&upstream.url]).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: {}\r\n\r\n",
        proxy.addr,
        session_cookie()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
}

#[tokio::test]
async fn websocket_without_session_is_refused() {
    let upstream = Upstream::start().await;
    let proxy = proxy_for(&[&upstream.url]).await;
    let resp = client()
        .get(format!("{}/ws", proxy.url))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn upstream_down_gives_a_quick_502() {
    let dead = dead_issuer();
    let proxy = proxy_for(&[&format!("{dead}/")]).await;
    let started = Instant::now();
    let resp = signed_in_get(format!("{}/", proxy.url)).await;
    assert_eq!(resp.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");
    // A person sees a sentence and the request id; the transport error and the upstream's
    // address are for the operator, in the log under that id.
    let id = request_id(&resp);
    let page = resp.text().await.unwrap();
    assert!(page.contains("The application is not responding") && page.contains(&id), "{page}");
    let port = dead.rsplit(':').next().unwrap();
    let without_id = page.replace(&id, "");
    for internal in ["127.0.0.1", port, "error", "tcp", "Connect"] {
        assert!(!without_id.contains(internal), "{internal:?} on the page: {page}");
    }
    let log = logged(&id).join("\n");
    assert!(log.contains(&dead) && log.contains("unreachable"), "logged under {id}: {log}");
}

#[tokio::test]
async fn unknown_proxy_endpoints_get_the_branded_404() {
    let upstream = Upstream::start().await;
    let proxy = proxy_for(&[&upstream.url]).await;
    for path in ["/oauth2/nope", "/oauth2/", "/oauth2/sign_out/extra"] {
        let resp = client().get(format!("{}{path}", proxy.url)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let page = resp.text().await.unwrap();
        assert!(
            page.contains("<h1>Page not found</h1>") && page.contains("request id"),
            "{path}: {page}"
        );
    }
    // The signed-out page is ours, and needs no session.
    let resp = client().get(format!("{}/oauth2/signed_out", proxy.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("You are signed out"));
}

#[tokio::test]
async fn slow_upstream_times_out_with_504() {
    // An upstream that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let proxy = proxy_for(&[&format!("http://{addr}/")]).await;
    let resp = signed_in_get(format!("{}/", proxy.url)).await;
    assert_eq!(resp.status(), 504);
}

#[tokio::test]
async fn routes_by_longest_prefix_to_http_static_and_file_upstreams() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from a file").unwrap();
    std::fs::write(dir.path().join("index.html"), "<p>index</p>").unwrap();
    let file = format!("file://{}#/static/", dir.path().display());
    let api = format!("{}api", upstream.url);
    let proxy = proxy_for(&[&api, &file, "static://202"]).await;
    let get = |path: &str| signed_in_get(format!("{}{path}", proxy.url));
    let r = get("/api/v1/x?y=2").await;
    let view: serde_json::Value = r.json().await.unwrap();
    assert_eq!(view["uri"], "/api/v1/x?y=2");
    let r = get("/static/hello.txt").await;
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "hello from a file");
    assert_eq!(get("/static/").await.text().await.unwrap(), "<p>index</p>");
    // Dot segments, sent raw (HTTP clients resolve `..` and `%2e%2e` away before sending):
    // the path is resolved before routing, so these are requests for /etc/passwd, which the
    // static upstream answers; the file upstream never sees a `..`.
    for path in [
        "/static/../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fetc/passwd",
    ] {
        let resp = raw_get(proxy.addr, path).await;
        assert!(resp.starts_with("HTTP/1.1 202") && !resp.contains("root:"), "{path}: {resp}");
    }
    let resp = raw_get(proxy.addr, "/static/x/../hello.txt").await;
    assert!(resp.ends_with("hello from a file"), "{resp}");
    assert_eq!(get("/apix").await.status(), 202, "/api does not match /apix");
    assert_eq!(get("/anything").await.status(), 202);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let upstream = Upstream::start().await;
    let mut proxy = proxy_for(&[&upstream.url]).await;
    let url = format!("{}/slow", proxy.url);
    let in_flight = tokio::spawn(async move { signed_in_get(url).await.status() });
    // Stop once the request is in flight (the upstream then takes 500 ms to answer).
    upstream.slow_started.notified().await;
    proxy.trigger_stop();
    assert_eq!(in_flight.await.unwrap(), 200, "the in-flight request completes");
    let task = proxy.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("server stops after draining")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err(), "no longer accepting");
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nConnection: close\r\n\r\n",
        session_cookie()
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The binary's model: one single-threaded runtime per worker on SO_REUSEPORT sockets, each
/// worker with its own upstream pool. Many connections (spread by the kernel over the
/// workers) all get through, and a shutdown waits for every worker's in-flight request.
#[tokio::test]
async fn every_worker_serves_and_shutdown_waits_for_all_of_them() {
    let upstream = Upstream::start().await;
    let listeners = sidekey_proxy::server::bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
    let mut args = Proxy::args(&dead_issuer(), &upstream.url, &[]);
    args.push("--upstream-timeout=5s".into());
    let mut proxy = Proxy::start_workers(listeners, &args, &[]).await;
    let mut gets = Vec::new();
    for i in 0..48 {
        // A fresh client each time: a new connection, so the kernel picks a worker for each.
        let url = format!("{}/n/{i}", proxy.url);
        gets.push(tokio::spawn(async move {
            let resp = client().get(url).header("cookie", session_cookie()).send().await.unwrap();
            (resp.status(), resp.json::<serde_json::Value>().await.unwrap())
        }));
    }
    for (i, g) in gets.into_iter().enumerate() {
        let (status, body) = g.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["uri"], format!("/n/{i}"));
        assert_eq!(body["headers"]["x-forwarded-email"][0], "alice@example.com");
    }
    assert_eq!(upstream.seen.lock().unwrap().len(), 48);

    // In-flight requests on a worker thread finish before run() returns.
    let slow: Vec<_> = (0..6).map(|_| tokio::spawn(signed_in_get(format!("{}/slow", proxy.url)))).collect();
    let seen = upstream.seen.clone();
    eventually("all six slow requests at the upstream", Duration::from_secs(5), || {
        let n = seen.lock().unwrap().iter().filter(|u| *u == "/slow").count();
        async move { n == 6 }
    })
    .await;
    proxy.trigger_stop();
    for s in slow {
        assert_eq!(s.await.unwrap().status(), 200);
    }
    tokio::time::timeout(Duration::from_secs(10), proxy.task.take().unwrap())
        .await
        .expect("run() returns once every worker has drained")
        .unwrap();
}

/// The app's path enters the request's span only where something may log (making it on
/// every request cost 4% of the CPU): a live session refused by the rules still logs its
/// auth event under the request's id, on the app's path and the forward-auth one.
#[tokio::test]
async fn a_refused_live_session_is_logged_under_its_request_id() {
    capture_logs();
    let env = login_env(&[]).await;
    let now = now_secs();
    let bob = sidekey_proxy::session::Session {
        user: "bob".into(),
        email: "bob@other.org".into(),
        created_at: now,
        expires_at: now + 3600,
        refreshed_at: now,
        ..Default::default()
    };
    let cookie = format!("_oauth2_proxy={}", seal_session(&bob));
    for path in ["/reports", "/oauth2/auth"] {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", env.proxy.url))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let id = request_id(&resp);
        assert!(
            logged(&id)
                .iter()
                .any(|l| l.contains("event=\"denied\"") && l.contains("bob@other.org")),
            "{path}: {:?}",
            logged(&id)
        );
    }
}
