//! Faults the proxy must ride out: slowloris clients over HTTP/1.1 and h2c, ten thousand
//! idle connections, thousands of unfinished HTTP/2 heads, an upstream that resets or
//! abandons connections, SIGTERM in the middle of load. Each with the outcome the design
//! promises. Sessions are sealed by the test (it knows the cookie secret), so no identity
//! provider is involved.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::h2_frames as h2;
use crate::support::*;
use sidekey_proxy::config::ConnectionLimits;
use sidekey_proxy::server::MAX_PENDING_HEADS;
use sidekey_proxy::session::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_sidekey-proxy");

fn session_cookie() -> String {
    let now = now_secs();
    let s = Session {
        user: "alice@example.com".into(),
        email: "alice@example.com".into(),
        created_at: now,
        expires_at: now + 3600,
        ..Session::default()
    };
    format!("_oauth2_proxy={}", seal_session(&s))
}

async fn signed_in_get(url: &str) -> reqwest::Result<reqwest::Response> {
    signed_in_get_with(&reqwest::Client::new(), url).await
}

async fn signed_in_get_with(client: &reqwest::Client, url: &str) -> reqwest::Result<reqwest::Response> {
    client.get(url).header("cookie", session_cookie()).send().await
}

/// Reads until the server closes the connection; what it sent.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slowloris_connections_are_cut_at_the_header_timeout_and_others_are_served() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_short_deadlines(Proxy::bind().await, &Proxy::args(&dead_issuer(), &upstream.url, &[])).await;
    let began = Instant::now();
    let mut drips = Vec::new();
    for i in 0..200 {
        let addr = proxy.addr;
        drips.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n").await.unwrap();
            // One header byte a second, never finishing: a connection a thread-per-client
            // server would lose forever.
            let (mut r, mut w) = s.into_split();
            let drip = tokio::spawn(async move {
                for _ in 0..60 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if w.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out).await;
            drip.abort();
            (began.elapsed(), String::from_utf8_lossy(&out).into_owned())
        }));
    }
    // Meanwhile real clients are served at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..20 {
        let t = Instant::now();
        let resp = signed_in_get(&format!("{}/page", proxy.url)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(t.elapsed() < Duration::from_secs(1), "served despite 200 slow clients");
    }
    for d in drips {
        let (closed_after, answer) = d.await.unwrap();
        assert!(
            cut_at_head_deadline(closed_after),
            "cut at the header read timeout, not {closed_after:?}"
        );
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

/// Whether a connection of [`Proxy::start_short_deadlines`] was cut at its request-head
/// deadline, `d` after its clock started.
fn cut_at_head_deadline(d: Duration) -> bool {
    d >= SHORT_HEAD_DEADLINE - Duration::from_secs(1) && d < SHORT_HEAD_DEADLINE + Duration::from_secs(4)
}

/// One byte of a HEADERS frame every 200 ms: a padded frame of some 200 bytes would take
/// 40 s to arrive, and the byte-silence timeout never fires.
const DRIP: Duration = Duration::from_millis(200);

/// The HTTP/2 forms of a slowloris, each on its own h2c (prior knowledge) connections, all
/// at once: a HEADERS frame dribbled on a fresh connection; the whole connection (preface,
/// SETTINGS, HEADERS) dribbled; the next HEADERS dribbled after a request was served; and a
/// HEADERS frame dribbled beside a stream still in flight. hyper's header read timeout is
/// HTTP/1.1 only, and HTTP/2 has none: before the fix every one of them stayed open.
#[tokio::test]
async fn h2c_slow_headers_are_cut_at_the_head_deadline_and_others_are_served() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start_short_deadlines(Proxy::bind().await, &Proxy::args(&dead_issuer(), &upstream.url, &[])).await;
    let addr = proxy.addr;
    let limit = 2 * SHORT_HEAD_DEADLINE + Duration::from_secs(6);
    let mut conns = Vec::new();
    for i in 0..80 {
        conns.push(tokio::spawn(async move {
            let kind = ["fresh", "whole", "after a request", "beside a stream"][i % 4];
            let (r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
            let mut since = tokio::time::Instant::now();
            let mut frames = h2::Frames::new(r);
            let slow = h2::request(3, "GET", "/page", &[], true, 200);
            match kind {
                "fresh" => w.write_all(&h2::opening()).await.unwrap(),
                "whole" => {}
                "after a request" => {
                    w.write_all(&h2::opening()).await.unwrap();
                    w.write_all(&h2::request(1, "GET", "/ping", &[], true, 0)).await.unwrap();
                    assert!(frames.until_end_of(1).await, "{kind}: /ping answered");
                    // The connection is idle from here: its next head is due at the deadline.
                    since = tokio::time::Instant::now();
                }
                _ => {
                    // A request with a body that never comes: in flight at the upstream.
                    let cookie = session_cookie();
                    w.write_all(&h2::opening()).await.unwrap();
                    w.write_all(&h2::request(1, "POST", "/upload", &[("cookie", &cookie)], false, 0))
                        .await
                        .unwrap();
                    since = tokio::time::Instant::now();
                }
            }
            let bytes = if kind == "whole" { [h2::opening(), slow].concat() } else { slow };
            let drip = tokio::spawn(async move { h2::dribble(&mut w, &bytes, DRIP).await });
            let closed = frames.until_closed(since, limit).await;
            drip.abort();
            (kind, closed)
        }));
    }
    // Meanwhile real clients are served at once, over HTTP/1.1 and h2c.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(signed_in_get(&format!("{}/page", proxy.url)).await.unwrap().status(), 200);
        assert!(t.elapsed() < Duration::from_secs(1), "served despite 80 slow clients");
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("{}/page", proxy.url))
        .header("cookie", session_cookie())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(client.send_request(req).await.unwrap().status(), 200, "an h2c request is served");

    let mut seen: std::collections::BTreeMap<&str, (Duration, Duration)> = Default::default();
    for c in conns {
        let (kind, closed) = c.await.unwrap();
        let Some((closed, goaway)) = closed else {
            panic!("{kind}: still open after {limit:?}");
        };
        let span = seen.entry(kind).or_insert((closed, closed));
        *span = (span.0.min(closed), span.1.max(closed));
        if kind == "beside a stream" {
            // The head is overdue at the deadline: GOAWAY, and the stream in flight gets
            // another one (it cannot progress: the unfinished HEADERS blocks the client's frames).
            let goaway = goaway.unwrap_or_else(|| panic!("{kind}: no GOAWAY before the close at {closed:?}"));
            assert!(cut_at_head_deadline(goaway), "{kind}: GOAWAY at {goaway:?}");
            assert!(
                closed < 2 * SHORT_HEAD_DEADLINE + Duration::from_secs(4),
                "{kind}: closed at {closed:?}"
            );
        } else {
            assert!(
                cut_at_head_deadline(closed),
                "{kind}: closed at {closed:?}, not at the head deadline"
            );
        }
    }
    eprintln!("closed after (first, last): {seen:?}");
}

/// Raises this process's open-file limit (inherited by the proxy it spawns) to `want`.
fn allow_open_files(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain struct in, plain struct out.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.max(lim.rlim_cur);
            lim.rlim_max = lim.rlim_max.max(want);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "this test needs {want} open files: run as root or raise `ulimit -Hn`"
            );
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

struct Binary(Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn_binary(upstream: &str, extra: &[&str]) -> (Binary, String) {
    let port = free_port();
    let mut args = Proxy::args(&dead_issuer(), upstream, extra);
    args.push(format!("--http-address=127.0.0.1:{port}"));
    let child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    eventually("the proxy to listen", Duration::from_secs(20), || async {
        reqwest::get(format!("{url}/ping")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    (Binary(child), url)
}

/// Per idle connection the proxy may hold at most this much memory (a debug build measures
/// about 5.5 KiB: the connection task, its timer and the socket registration).
const IDLE_CONNECTION_BUDGET_KIB: u64 = 8;

#[tokio::test]
async fn ten_thousand_idle_connections_cost_bounded_memory_and_are_reaped() {
    const N: usize = 10_000;
    allow_open_files(N as u64 + 1024);
    let upstream = Upstream::start().await;
    let (proxy, url) = spawn_binary(&upstream.url, &[]).await;
    let pid = proxy.0.id();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let before = rss_kib(pid);

    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    eventually("the proxy to accept every connection", Duration::from_secs(20), || async {
        open_fds(pid) >= N
    })
    .await;
    let held = rss_kib(pid);
    let per_connection = (held.saturating_sub(before)) as f64 / N as f64;
    eprintln!("RSS {before} KiB idle, {held} KiB with {N} idle connections: {per_connection:.2} KiB each");
    assert!(
        held.saturating_sub(before) < IDLE_CONNECTION_BUDGET_KIB * N as u64,
        "{per_connection:.2} KiB per idle connection"
    );
    // Still serving while they sit there.
    let t = Instant::now();
    assert_eq!(signed_in_get(&format!("{url}/page")).await.unwrap().status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1));

    // A connection that never sends a request line is a slowloris too: cut at the header
    // read timeout, so idle sockets cannot pile up without bound.
    tokio::time::sleep(ConnectionLimits::default().header_read + Duration::from_secs(2)).await;
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, N, "every idle connection is closed by the proxy");
    drop(idle);
    eventually("the proxy's sockets to be released", Duration::from_secs(10), || async {
        open_fds(pid) < 100
    })
    .await;
}

/// Whether the server has closed this connection (what it sent before is read and dropped).
fn closed_by_server(s: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Per connection with an unfinished HTTP/2 head the proxy may hold at most this much (a
/// debug build measures about 24 KiB: hyper's and h2's connection state and buffers).
const PENDING_HEAD_BUDGET_KIB: u64 = 48;

/// Thousands of h2c connections that send the preface, SETTINGS and the first bytes of a
/// HEADERS frame, then nothing: the pentest's 3,000 held ~90 MiB for good. At most
/// `MAX_PENDING_HEADS` unfinished heads are held at once (the oldest is cut for a newer
/// one), each costs bounded memory, and every one is cut at the head deadline.
#[tokio::test]
async fn unfinished_h2_heads_are_capped_cost_bounded_memory_and_are_cut() {
    const EXTRA: usize = 600;
    let n = MAX_PENDING_HEADS + EXTRA;
    allow_open_files(n as u64 + 1024);
    let upstream = Upstream::start().await;
    let (proxy, url) = spawn_binary(&upstream.url, &[]).await;
    let pid = proxy.0.id();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let before = rss_kib(pid);
    let partial = {
        let mut v = h2::opening();
        v.extend_from_slice(&h2::request(1, "GET", "/page", &[], true, 200)[..40]);
        v
    };
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&partial).await.unwrap();
        conns.push(s);
    }
    let opened = Instant::now();
    // The oldest are cut as newer ones arrive, long before their deadline.
    let deadline = ConnectionLimits::default().header_read;
    eventually("the oldest unfinished heads to be cut", deadline / 2, || {
        let cut = conns.iter().filter(|s| closed_by_server(s)).count();
        async move { cut >= EXTRA }
    })
    .await;
    // Oldest by when the proxy read them: its workers read in parallel, so not exactly in
    // the order they connected, but none of the newer half.
    let cut: Vec<usize> = (0..n).filter(|&i| closed_by_server(&conns[i])).collect();
    assert!(
        cut.len() <= EXTRA + 16 && cut.iter().all(|&i| i < n / 2),
        "the oldest ones are cut, not others: {} cut, the newest at {:?}",
        cut.len(),
        cut.last()
    );
    let held = rss_kib(pid);
    let per_connection = (held.saturating_sub(before)) as f64 / MAX_PENDING_HEADS as f64;
    eprintln!("RSS {before} KiB idle, {held} KiB with {MAX_PENDING_HEADS} unfinished h2 heads: {per_connection:.2} KiB each");
    assert!(
        held.saturating_sub(before) < PENDING_HEAD_BUDGET_KIB * MAX_PENDING_HEADS as u64,
        "{per_connection:.2} KiB per unfinished h2 head"
    );
    // Still serving while they sit there.
    let t = Instant::now();
    assert_eq!(signed_in_get(&format!("{url}/page")).await.unwrap().status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1));

    eventually(
        "every unfinished head to be cut at the deadline",
        deadline + Duration::from_secs(5),
        || {
            let open = conns.iter().filter(|s| !closed_by_server(s)).count();
            async move { open == 0 }
        },
    )
    .await;
    let took = opened.elapsed();
    eprintln!("all {n} cut {took:?} after the last one opened");
    assert!(took >= deadline - Duration::from_secs(2), "cut early: {took:?}");
    drop(conns);
    eventually("the proxy's sockets to be released", Duration::from_secs(10), || async {
        open_fds(pid) < 100
    })
    .await;
}

#[tokio::test]
async fn sigterm_under_load_lets_in_flight_requests_finish() {
    let upstream = Upstream::start().await;
    let (mut proxy, url) = spawn_binary(&upstream.url, &[]).await;
    const N: usize = 64;
    let mut inflight = Vec::new();
    for _ in 0..N {
        let u = format!("{url}/slow");
        inflight.push(tokio::spawn(async move { signed_in_get(&u).await.map(|r| r.status().as_u16()) }));
    }
    eventually("every request to reach the upstream", Duration::from_secs(10), || async {
        upstream.seen.lock().unwrap().len() >= N
    })
    .await;
    // Each /slow takes 500 ms upstream: the signal lands while all of them are in flight.
    assert!(
        Command::new("kill")
            .args(["-TERM", &proxy.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    for r in inflight {
        assert_eq!(r.await.unwrap().unwrap(), 200, "an in-flight request was cut");
    }
    let status = tokio::task::spawn_blocking(move || proxy.0.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(reqwest::get(format!("{url}/ping")).await.is_err(), "no longer listening");
}

/// An upstream that accepts and then either resets the connection (SO_LINGER 0) or reads
/// the request and closes without an answer.
async fn hostile_upstream(reset: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if reset {
                    let _ = s.set_zero_linger();
                } else {
                    let mut b = [0u8; 4096];
                    let _ = s.read(&mut b).await;
                }
                drop(s);
            });
        }
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn resetting_upstreams_give_a_quick_502_and_leak_nothing() {
    for reset in [true, false] {
        let upstream = hostile_upstream(reset).await;
        let (proxy, url) = spawn_binary(&upstream, &[]).await;
        let pid = proxy.0.id();
        let fds = open_fds(pid);
        let client = reqwest::Client::new();
        for _ in 0..300 {
            let t = Instant::now();
            let resp = signed_in_get_with(&client, &format!("{url}/page")).await.unwrap();
            assert_eq!(resp.status(), 502, "reset={reset}");
            assert!(t.elapsed() < Duration::from_secs(1), "reset={reset}: {:?}", t.elapsed());
        }
        drop(client);
        // The proxy's sockets to the client and the upstream are all gone again.
        eventually("the proxy's sockets to be released", Duration::from_secs(5), || async {
            open_fds(pid) <= fds
        })
        .await;
    }
}

#[tokio::test]
async fn a_client_vanishing_mid_request_costs_nothing() {
    let upstream = Upstream::start().await;
    let (proxy, url) = spawn_binary(&upstream.url, &[]).await;
    let pid = proxy.0.id();
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let fds = open_fds(pid);
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /slow HTTP/1.1\r\nHost: a\r\nCookie: {}\r\n\r\n", session_cookie());
        s.write_all(req.as_bytes()).await.unwrap();
        drop(s);
    }
    // A body promised and never sent.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nCookie: {}\r\nContent-Length: 1000000\r\n\r\npartial",
        session_cookie()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    drop(s);
    // Kept-alive connections to the upstream may stay pooled; nothing else may.
    eventually("the proxy's sockets to be released", Duration::from_secs(5), || async {
        open_fds(pid) <= fds + 8
    })
    .await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut s).await.starts_with("HTTP/1.1 200"));
}

/// An HTTP/1.1 upstream that counts its connections and drops each after `per_connection`
/// responses without saying so (no `Connection: close`), as one whose keep-alive limit or
/// idle timeout ran out would. Every response names its connection.
async fn counting_upstream(per_connection: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for _ in 0..per_connection {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let body = format!("connection {n}");
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/"), accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_one_the_upstream_dropped_is_replaced() {
    use std::sync::atomic::Ordering;
    let (upstream, accepted) = counting_upstream(3).await;
    // One worker, so that every request meets the same connection list.
    let (_proxy, url) = spawn_binary(&upstream, &["--workers=1"]).await;
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    for _ in 0..9 {
        let resp = signed_in_get_with(&client, &format!("{url}/page")).await.unwrap();
        assert_eq!(resp.status(), 200);
        seen.push(resp.text().await.unwrap());
        // Time for the upstream's close to arrive, so that the next request meets a
        // connection known to be closed, not the keep-alive race every client has.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected: Vec<String> = (1..=3).flat_map(|n| std::iter::repeat_n(format!("connection {n}"), 3)).collect();
    assert_eq!(seen, expected, "each connection serves three requests, then a new one is made");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // Two waves of 100 concurrent requests: every one answered, and the second wave runs
    // on the connections the first one left open.
    let (upstream, accepted) = counting_upstream(usize::MAX).await;
    let (_proxy, url) = spawn_binary(&upstream, &["--workers=1"]).await;
    for wave in 1..=2 {
        let requests = (0..100).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let resp = signed_in_get_with(&client, &format!("{url}/page")).await.unwrap();
                (resp.status(), resp.text().await.unwrap())
            }
        });
        let answers = futures_util::future::join_all(requests).await;
        assert!(
            answers.iter().all(|(s, body)| *s == 200 && body.starts_with("connection ")),
            "wave {wave}: {answers:?}"
        );
        let opened = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=100).contains(&opened),
            "wave {wave}: {opened} upstream connections for 100 requests"
        );
    }
}
