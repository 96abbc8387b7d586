//! Session attacks against the real provider: PKCE verifier swaps, `/oauth2/sign_in` with a
//! live session, health-check User-Agents on protected paths, chunked cookies reordered or
//! cut, cookies sealed with another secret or for another purpose, oversize cookie headers.

use crate::support::*;
use sidekey_proxy::session::LoginState;
use sidekey_proxy::session::codec::{Purpose, Sealer};

struct Env {
    _idp: Idp,
    upstream: Upstream,
    proxy: Proxy,
}

async fn setup(extra: &[&str], idp_extra: serde_json::Value) -> Env {
    let listener = Proxy::bind().await;
    let callback = format!("http://{}/oauth2/callback", listener.local_addr().unwrap());
    let idp = Idp::start(&[callback], idp_extra);
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(listener, &Proxy::args(&idp.issuer, &upstream.url, extra)).await;
    Env {
        _idp: idp,
        upstream,
        proxy,
    }
}

fn sealer(purpose: Purpose) -> Sealer {
    Sealer::new(&sidekey_proxy::config::parse_cookie_secret(COOKIE_SECRET).unwrap(), purpose)
}

/// The status of `GET /app` (asking for JSON, so no login redirect) with exactly this
/// Cookie header.
async fn with_cookies(proxy: &Proxy, cookie: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/app", proxy.url))
        .header("cookie", cookie)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_swapped_pkce_verifier_is_refused_by_the_provider() {
    let env = setup(&["--code-challenge-method=S256"], serde_json::json!({})).await;
    let p = &env.proxy.url;
    let csrf = &sealer(Purpose::Csrf);
    let run = |swap: bool| async move {
        let client = browser();
        let start = client.get(format!("{p}/oauth2/start")).send().await.unwrap();
        let sealed = set_cookie_value(&start, "_oauth2_proxy_csrf").unwrap();
        let mut login: LoginState = csrf.open("_oauth2_proxy_csrf", &sealed).unwrap();
        assert!(login.pkce_verifier.is_some(), "S256 sends a challenge");
        assert!(location(&start).contains("code_challenge_method=S256"), "{}", location(&start));
        if swap {
            login.pkce_verifier = Some("a-different-verifier-of-the-right-length-0123456789".into());
        }
        let cookie = csrf.seal("_oauth2_proxy_csrf", &login);
        let callback = idp_login(&client, &location(&start), "alice", "alice-password").await;
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(&callback)
            .header("cookie", format!("_oauth2_proxy_csrf={cookie}"))
            .send()
            .await
            .unwrap();
        let id = request_id(&resp);
        (resp.status().as_u16(), logged(&id).join("\n"))
    };
    assert_eq!(run(false).await.0, 302, "the genuine verifier signs in");
    let (status, log) = run(true).await;
    assert_eq!(status, 403, "{log}");
    assert!(log.contains("invalid_grant"), "the provider's refusal is logged: {log}");
}

#[tokio::test]
async fn sign_in_ends_an_existing_session() {
    let env = setup(&[], serde_json::json!({})).await;
    let client = browser();
    let p = &env.proxy.url;
    assert_eq!(login(&client, p, "/", "alice", "alice-password").await.status(), 302);
    let ok = client
        .get(format!("{p}/app"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Whoever lands on the sign-in page (a shared kiosk, a link in a phishing mail) starts
    // from no session: the old one cannot ride along into the next user's login.
    let page = client.get(format!("{p}/oauth2/sign_in")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let cleared = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_string())
        .find(|c| c.starts_with("_oauth2_proxy="))
        .expect("the session cookie is cleared");
    assert!(
        cleared.contains("Max-Age=0") || cleared.to_lowercase().contains("expires=thu, 01 jan 1970"),
        "{cleared}"
    );
    let after = client
        .get(format!("{p}/app"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}

#[tokio::test]
async fn health_check_user_agents_get_no_bypass() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(Proxy::bind().await, &Proxy::args(&dead_issuer(), &upstream.url, &[])).await;
    for ua in [
        "kube-probe/1.31",
        "GoogleHC/1.0",
        "ELB-HealthChecker/2.0",
        "Consul Health Check",
        "Go-http-client/1.1",
        "",
    ] {
        for path in ["/", "/private", "/ping/../private", "/oauth2/auth"] {
            let (status, _) = raw_http(
                proxy.addr,
                "GET",
                path,
                &format!("User-Agent: {ua}\r\nAccept: application/json\r\n"),
            )
            .await;
            // raw_http asks for HTML first: the sign-in page (403), or 401 from the auth endpoint.
            assert!(matches!(status, 401 | 403 | 404), "{ua:?} {path}: {status}");
        }
        let (status, body) = raw_http(proxy.addr, "GET", "/ping", &format!("User-Agent: {ua}\r\n")).await;
        assert_eq!((status, body.trim()), (200, "OK"), "the probe path itself answers");
    }
    assert!(upstream.seen.lock().unwrap().is_empty(), "no probe reached the app");
    // The oauth2-proxy option that turned a User-Agent into a bypass is refused, with why.
    let argv: Vec<String> = ["sidekey-proxy".to_string()]
        .into_iter()
        .chain(Proxy::args(&dead_issuer(), &upstream.url, &["--ping-user-agent=kube-probe"]))
        .collect();
    let err = match sidekey_proxy::config::load(argv, vec![]) {
        Err(e) => e.to_string(),
        Ok(inv) => match sidekey_proxy::config::Config::from_values(&inv.values) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("ping_user_agent was accepted"),
        },
    };
    assert!(err.contains("ping_user_agent") && err.contains("ping_path"), "{err}");
}

#[tokio::test]
async fn chunked_cookies_reordered_cut_or_padded_are_no_session() {
    let groups: Vec<String> = (0..300).map(|i| format!("group-with-a-long-name-{i:04}")).collect();
    let users = serde_json::json!({ "alice": { "password": "pw", "email": "alice@example.com", "email_verified": true, "groups": groups, "preferred_username": "alice" } });
    let env = setup(&["--pass-access-token"], serde_json::json!({ "users": users })).await;
    let resp = login(&browser(), &env.proxy.url, "/", "alice", "pw").await;
    let chunks: Vec<String> = (0..)
        .map_while(|i| set_cookie_value(&resp, &format!("_oauth2_proxy_{i}")))
        .collect();
    assert!(chunks.len() >= 2, "the session is chunked: {}", chunks.len());
    let header = |parts: &[(usize, &str)]| -> String {
        parts
            .iter()
            .map(|(i, v)| format!("_oauth2_proxy_{i}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let genuine: Vec<(usize, &str)> = chunks.iter().enumerate().map(|(i, c)| (i, c.as_str())).collect();
    assert_eq!(with_cookies(&env.proxy, &header(&genuine)).await, 200, "the genuine chunks");
    // Listed in another order in the header is still the same cookie set.
    let mut listed_backwards = genuine.clone();
    listed_backwards.reverse();
    assert_eq!(with_cookies(&env.proxy, &header(&listed_backwards)).await, 200);

    let mut swapped = genuine.clone();
    swapped[0].1 = &chunks[1];
    swapped[1].1 = &chunks[0];
    let missing_last: Vec<_> = genuine[..genuine.len() - 1].to_vec();
    let missing_first: Vec<_> = genuine[1..].to_vec();
    let mut padded = genuine.clone();
    padded.push((chunks.len(), "AAAA"));
    let mut doubled = genuine.clone();
    doubled[1].1 = &chunks[0];
    let cases: Vec<(&str, String)> = vec![
        ("chunks swapped", header(&swapped)),
        ("last chunk missing", header(&missing_last)),
        ("first chunk missing", header(&missing_first)),
        ("a junk chunk appended", header(&padded)),
        ("chunk 0 twice", header(&doubled)),
        (
            "a chunk cut short",
            header(&[(0, &chunks[0]), (1, &chunks[1][..chunks[1].len() / 2])]),
        ),
    ];
    for (what, cookie) in cases {
        assert_eq!(with_cookies(&env.proxy, &cookie).await, 401, "{what}");
    }
    assert_eq!(env.upstream.seen.lock().unwrap().len(), 2, "only the genuine sets reached the app");
}

#[tokio::test]
async fn cookies_from_another_secret_or_purpose_are_no_session() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(Proxy::bind().await, &Proxy::args(&dead_issuer(), &upstream.url, &[])).await;
    let now = now_secs();
    let session = sidekey_proxy::session::Session {
        user: "alice@example.com".into(),
        email: "alice@example.com".into(),
        created_at: now,
        expires_at: now + 3600,
        ..Default::default()
    };
    assert_eq!(
        with_cookies(&proxy, &format!("_oauth2_proxy={}", seal_session(&session))).await,
        200
    );
    // Another deployment's secret (a sibling app's sidecar).
    let other = Sealer::new(&[7u8; 32], Purpose::Session).seal("_oauth2_proxy", &session);
    assert_eq!(with_cookies(&proxy, &format!("_oauth2_proxy={other}")).await, 401);
    // Our secret, another purpose: a CSRF cookie's sealing replayed as a session.
    let as_csrf = sealer(Purpose::Csrf).seal("_oauth2_proxy", &session);
    assert_eq!(with_cookies(&proxy, &format!("_oauth2_proxy={as_csrf}")).await, 401);
    // Our secret, sealed for another cookie name (the name is bound into the seal).
    let renamed = sealer(Purpose::Session).seal("_other_app", &session);
    assert_eq!(with_cookies(&proxy, &format!("_oauth2_proxy={renamed}")).await, 401);
    assert_eq!(upstream.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn oversize_cookie_headers_get_431_not_a_500() {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(Proxy::bind().await, &Proxy::args(&dead_issuer(), &upstream.url, &[])).await;
    // Under the 64 KiB header limit: parsed, no session, the sign-in page.
    let big = format!(
        "Cookie: {}\r\n",
        (0..50).map(|i| format!("c{i}={}", "x".repeat(1000))).collect::<Vec<_>>().join("; ")
    );
    assert_eq!(raw_http(proxy.addr, "GET", "/app", &big).await.0, 403);
    // Over it, in one header or spread over many.
    let huge = format!("Cookie: _oauth2_proxy={}\r\n", "A".repeat(70 * 1024));
    assert_eq!(raw_http(proxy.addr, "GET", "/app", &huge).await.0, 431);
    let many: String = (0..100).map(|i| format!("Cookie: c{i}={}\r\n", "y".repeat(1000))).collect();
    assert_eq!(raw_http(proxy.addr, "GET", "/app", &many).await.0, 431);
    let chunks: String = (0..40)
        .map(|i| format!("Cookie: _oauth2_proxy_{i}={}\r\n", "z".repeat(3900)))
        .collect();
    assert_eq!(raw_http(proxy.addr, "GET", "/app", &chunks).await.0, 431);
    // The proxy is fine afterwards.
    assert_eq!(raw_http(proxy.addr, "GET", "/ping", "").await.0, 200);
    assert!(upstream.seen.lock().unwrap().is_empty());
}
