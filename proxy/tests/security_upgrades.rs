//! Protocol switches against a real h2c- and WebSocket-capable upstream (hypercorn, see
//! tests/hypercorn/app.py): an `Upgrade: h2c` (or any token but a checked WebSocket
//! handshake) never becomes a tunnel to the application, on a skipped route or as a
//! signed-in user; CONNECT is refused; a 101 the proxy did not ask for is never relayed; a
//! WebSocket tunnel carries WebSocket frames to the endpoint that accepted it and nothing
//! else. Raw sockets throughout, so no client library tidies the requests first.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use sidekey_proxy::session::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SKIP: &str = "--skip-auth-route=GET=^/public/";

fn session_cookie() -> String {
    let now = now_secs();
    let s = Session {
        user: "bob".into(),
        email: "bob@example.com".into(),
        preferred_username: "bob".into(),
        created_at: now,
        expires_at: now + 3600,
        ..Session::default()
    };
    format!("_oauth2_proxy={}", seal_session(&s))
}

async fn proxy_for(upstream: &str) -> Proxy {
    let args = Proxy::args(&dead_issuer(), upstream, &[SKIP, "--upstream-timeout=5s"]);
    Proxy::start(Proxy::bind().await, &args).await
}

/// Reads a response head byte by byte (so nothing after it is consumed): status and head.
async fn read_head(s: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head)
}

/// Whatever arrives until the peer closes or goes quiet.
async fn drain(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client's side of the attack once a connection has switched to h2c: the HTTP/2
/// preface, then a second request on stream 3 (stream 1 is the upgraded request) for a
/// private path, claiming someone else's identity. HPACK literals without indexing.
fn h2_attack() -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/private/admin"),
        (":authority", "app.example.com"),
        ("x-forwarded-email", "alice@example.com"),
    ] {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    // END_STREAM | END_HEADERS.
    out.extend(h2_frame(0x1, 0x5, 3, &block));
    out
}

/// Reads HTTP/2 frames until stream 3 ends (or the peer closes or goes quiet); the body
/// of stream 3.
async fn h2_stream_3(s: &mut TcpStream) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if !matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head)).await,
            Ok(Ok(_))
        ) {
            return body;
        }
        let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return body;
        }
        if kind == 0x4 && flags & 1 == 0 {
            let _ = s.write_all(&h2_frame(0x4, 1, 0, &[])).await;
        }
        if stream == 3 && kind == 0x0 {
            body.extend_from_slice(&payload);
        }
        if kind == 0x7 || (stream == 3 && (kind == 0x3 || (flags & 1 == 1 && (kind == 0x0 || kind == 0x1)))) {
            return body;
        }
    }
}

/// One upgrade attempt as the pentest made it: the request, then, whatever the proxy
/// answered, HTTP/2 on the same connection for `/private/admin` as alice. Returns the status
/// the proxy gave the upgrade request and what came back for the HTTP/2 request.
async fn h2c_attempt(proxy: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let (status, _) = read_head(&mut s).await;
    let _ = s.write_all(&h2_attack()).await;
    let after = if status == 101 {
        h2_stream_3(&mut s).await
    } else {
        drain(&mut s).await
    };
    (status, String::from_utf8_lossy(&after).into_owned())
}

/// Upgrade headers that ask for h2c (or anything but a WebSocket), in the spellings and
/// arrangements a client can choose.
const NOT_WEBSOCKET: &[(&str, &str)] = &[
    (
        "HTTP/1.1",
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    ),
    ("HTTP/1.1", "Connection: upgrade\r\nUpgrade: h2c\r\n"),
    (
        "HTTP/1.1",
        "Connection:  UPGRADE ,, http2-settings ,\r\nUpgrade:  H2C \r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    ),
    ("HTTP/1.1", "Connection: keep-alive\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"),
    ("HTTP/1.1", "Upgrade: h2c\r\n"),
    ("HTTP/1.1", "Connection: Upgrade\r\nUpgrade: h2c, foo/1.0\r\n"),
    ("HTTP/1.1", "Connection: Upgrade\r\nUpgrade: h2c\r\nUpgrade: foo/2\r\n"),
    ("HTTP/1.1", "Connection: Upgrade\r\nUpgrade: foo/2\r\n"),
    ("HTTP/1.1", "Connection: Upgrade\r\nUpgrade: TLS/1.2\r\n"),
    (
        "HTTP/1.1",
        "Connection: Upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    ),
    ("HTTP/1.0", "Connection: Upgrade\r\nUpgrade: h2c\r\n"),
    ("HTTP/1.0", "Connection: Upgrade, keep-alive\r\nUpgrade: h2c\r\n"),
];

#[tokio::test]
async fn no_h2c_or_unknown_upgrade_is_ever_tunnelled_to_the_app() {
    let app = Hypercorn::start().await;
    let proxy = proxy_for(&app.url).await;
    let cookie = session_cookie();
    let mut statuses = Vec::new();
    for (version, upgrade) in NOT_WEBSOCKET {
        // On a skipped route with no session, and on a protected one as a signed-in user.
        for (path, cookie) in [("/public/x", String::new()), ("/x", format!("Cookie: {cookie}\r\n"))] {
            let request = format!("GET {path} {version}\r\nHost: app.example.com\r\n{cookie}{upgrade}\r\n");
            let (status, after) = h2c_attempt(proxy.addr, &request).await;
            statuses.push((status, path, *version, *upgrade, after));
        }
    }
    let seen = app.seen().await;
    // The attack's goal, checked first so that the old behaviour fails with the evidence.
    let reached: Vec<_> = seen.iter().filter(|r| r["path"] != "/public/x" && r["path"] != "/x").collect();
    assert!(reached.is_empty(), "requests reached the app through a tunnel: {reached:?}");
    for (status, path, version, upgrade, after) in &statuses {
        assert_ne!(*status, 101, "{version} {path} {upgrade:?} switched protocols");
        assert!(!after.contains("alice@example.com"), "{version} {path} {upgrade:?}: {after}");
    }
    // Every attempt was served as the plain HTTP/1.1 request it also is, upgrade headers gone.
    assert_eq!(seen.len(), statuses.len(), "{seen:?}");
    for r in &seen {
        assert_eq!(r["http_version"], "1.1", "{r}");
        assert_eq!(r["upgrade"], serde_json::Value::Null, "{r}");
        let identity = if r["path"] == "/x" { "bob@example.com" } else { "" };
        assert_eq!(r["x_forwarded_email"].as_str().unwrap_or(""), identity, "{r}");
    }
    assert!(
        statuses.iter().all(|(s, ..)| *s == 200),
        "{:?}",
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn connect_is_refused_and_opens_no_tunnel() {
    let app = Hypercorn::start().await;
    let proxy = proxy_for(&app.url).await;
    let cookie = session_cookie();
    let target = app.addr.to_string();
    for (line, cookie) in [
        (format!("CONNECT {target} HTTP/1.1"), String::new()),
        (format!("CONNECT {target} HTTP/1.1"), format!("Cookie: {cookie}\r\n")),
        ("CONNECT app.example.com:80 HTTP/1.1".to_string(), format!("Cookie: {cookie}\r\n")),
        ("CONNECT /public/x HTTP/1.1".to_string(), String::new()),
        ("CONNECT /x HTTP/1.1".to_string(), format!("Cookie: {cookie}\r\n")),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!("{line}\r\nHost: {target}\r\n{cookie}\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let (status, head) = read_head(&mut s).await;
        assert_eq!(status, 405, "{line}: {head}");
        assert!(head.to_ascii_lowercase().contains("\r\nallow: "), "{line}: {head}");
        // Were this a tunnel, these bytes would reach the app as a request of their own.
        let _ = s
            .write_all(b"GET /private/admin HTTP/1.1\r\nHost: app\r\nX-Forwarded-Email: alice@example.com\r\nConnection: close\r\n\r\n")
            .await;
        drain(&mut s).await;
    }
    // HTTP/2 (h2c with prior knowledge): CONNECT is a method there, refused the same way.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for cookie in [None, Some(cookie.as_str())] {
        let mut req = hyper::Request::builder()
            .method("CONNECT")
            .uri(target.as_str())
            .version(hyper::Version::HTTP_2);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = h2
            .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "h2 CONNECT, cookie: {}", cookie.is_some());
    }
    let seen = app.seen().await;
    assert!(seen.is_empty(), "CONNECT reached the app: {seen:?}");
}

fn ws_handshake(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: app.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A masked text frame, as a client must send it (RFC 6455 §5.3).
fn ws_text(text: &str) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

async fn ws_read_text(s: &mut TcpStream) -> String {
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[0], 0x81, "a final text frame");
    let mut payload = vec![0u8; (head[1] & 0x7f) as usize];
    s.read_exact(&mut payload).await.unwrap();
    String::from_utf8(payload).unwrap()
}

/// WebSockets are the one switch allowed, also on a skipped route: the tunnel reaches the
/// WebSocket endpoint that accepted the handshake, which reads WebSocket frames, so HTTP
/// sent into it never becomes a request for another path.
#[tokio::test]
async fn a_websocket_tunnel_carries_websocket_frames_and_nothing_else() {
    let app = Hypercorn::start().await;
    let proxy = proxy_for(&app.url).await;
    let cookie = format!("Cookie: {}\r\nX-Forwarded-Email: alice@example.com\r\n", session_cookie());
    for (path, extra) in [("/public/ws", String::new()), ("/private/ws", cookie)] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(ws_handshake(path, &extra).as_bytes()).await.unwrap();
        let (status, head) = read_head(&mut s).await;
        assert_eq!(status, 101, "{path}: {head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{path}: {head}");
        s.write_all(&ws_text("hello")).await.unwrap();
        assert_eq!(ws_read_text(&mut s).await, "hello", "{path}");
        let _ = s
            .write_all(b"GET /private/admin HTTP/1.1\r\nHost: app\r\nX-Forwarded-Email: alice@example.com\r\n\r\n")
            .await;
        drain(&mut s).await;
    }
    let seen = app.seen().await;
    assert!(!seen.iter().any(|r| r["path"] == "/private/admin"), "{seen:?}");
    let sockets: Vec<_> = seen.iter().filter(|r| r["type"] == "websocket").collect();
    assert_eq!(sockets.len(), 2, "{seen:?}");
    assert_eq!(
        sockets[0]["x_forwarded_email"],
        serde_json::Value::Null,
        "no identity on a skipped route"
    );
    assert_eq!(
        sockets[1]["x_forwarded_email"], "bob@example.com",
        "the proxy's identity, not the client's"
    );
    // Without a session, a protected WebSocket is refused before the app sees it.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(ws_handshake("/private/ws", "Accept: application/json\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_head(&mut s).await.0, 401);
    assert_eq!(app.seen().await.len(), seen.len());
}

#[tokio::test]
async fn malformed_websocket_handshakes_are_answered_by_the_proxy() {
    let app = Hypercorn::start().await;
    let proxy = proxy_for(&app.url).await;
    let cookie = format!("Cookie: {}\r\n", session_cookie());
    let good = ws_handshake("/private/ws", &cookie);
    let cases = [
        (
            good.replacen("GET", "POST", 1)
                .replacen("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n", 1),
            400,
        ),
        (good.replace("Connection: Upgrade\r\n", "Connection: keep-alive\r\n"), 400),
        (good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), 400),
        (good.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), 400),
        (
            good.replace(
                "Sec-WebSocket-Key: ",
                "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Key: ",
            ),
            400,
        ),
        (good.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426),
        (good.replace("Upgrade: websocket", "Upgrade: websocket, h2c"), 101),
    ];
    for (request, want) in cases {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let (status, head) = read_head(&mut s).await;
        assert_eq!(status, want, "{request:?}: {head}");
        if want == 426 {
            assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
        }
    }
    let seen = app.seen().await;
    assert_eq!(seen.len(), 1, "only the valid handshake reached the app: {seen:?}");
    assert_eq!(seen[0]["type"], "websocket");
    assert_eq!(seen[0]["upgrade"], "websocket", "the client's other tokens are not passed on");
    // On HTTP/1.0 a WebSocket handshake is a plain request (RFC 9110 §7.8).
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(good.replace("HTTP/1.1", "HTTP/1.0").as_bytes()).await.unwrap();
    assert_eq!(read_head(&mut s).await.0, 200);
    let last = app.seen().await.pop().unwrap();
    assert_eq!(
        (&last["type"], &last["upgrade"]),
        (&"http".into(), &serde_json::Value::Null),
        "{last}"
    );
}

/// An upstream that answers every request with `101 Switching Protocols` (to h2c, or to a
/// WebSocket without a valid accept, by path) and then sends bytes of its own.
async fn switching_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (_, head) = read_head(&mut s).await;
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let switch = match path.as_str() {
                    "/ws-no-accept" => "Upgrade: websocket\r\n".to_string(),
                    "/ws-wrong-accept" => "Upgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n".to_string(),
                    "/ws-h2c" => format!(
                        "Upgrade: h2c\r\nSec-WebSocket-Accept: {}\r\n",
                        sidekey_proxy::upgrade::websocket_accept("dGhlIHNhbXBsZSBub25jZQ==")
                    ),
                    _ => "Upgrade: h2c\r\n".to_string(),
                };
                let reply = format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n{switch}\r\nUPSTREAM-TUNNEL-BYTES");
                let _ = s.write_all(reply.as_bytes()).await;
                drain(&mut s).await;
            });
        }
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn a_101_the_proxy_did_not_ask_for_is_never_relayed() {
    let upstream = switching_upstream().await;
    let proxy = proxy_for(&upstream).await;
    let cookie = format!("Cookie: {}\r\n", session_cookie());
    let plain = |path: &str, cookie: &str| format!("GET {path} HTTP/1.1\r\nHost: app.example.com\r\n{cookie}\r\n");
    for request in [
        plain("/x", &cookie),
        plain("/public/x", ""),
        plain("/x", &format!("{cookie}Connection: Upgrade\r\nUpgrade: h2c\r\n")),
        ws_handshake("/ws-h2c", &cookie),
        ws_handshake("/ws-no-accept", &cookie),
        ws_handshake("/ws-wrong-accept", &cookie),
        ws_handshake("/public/ws-no-accept", ""),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let (status, head) = read_head(&mut s).await;
        let rest = String::from_utf8_lossy(&drain(&mut s).await).into_owned();
        assert_eq!(status, 502, "{request:?}: {head}{rest}");
        assert!(!rest.contains("UPSTREAM-TUNNEL-BYTES"), "{request:?}: {rest}");
    }
}
