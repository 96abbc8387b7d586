//! End-to-end: the Redis session store against a real `redis-server` (Debian) on a free
//! loopback port, and the real OpenID provider.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

struct Env {
    idp: Idp,
    upstream: Upstream,
    proxy: Proxy,
}

async fn start_proxy(listener: tokio::net::TcpListener, idp: &Idp, upstream: &Upstream, redis: &str, extra: &[&str]) -> Proxy {
    let store = format!("--redis-connection-url={redis}");
    let mut flags = vec!["--session-store-type=redis", &store, "--pass-access-token"];
    flags.extend_from_slice(extra);
    Proxy::start(listener, &Proxy::args(&idp.issuer, &upstream.url, &flags)).await
}

async fn setup(redis: &str, extra: &[&str], idp_extra: serde_json::Value) -> Env {
    let listener = Proxy::bind().await;
    let addr = listener.local_addr().unwrap();
    let idp = Idp::start(&[format!("http://{addr}/oauth2/callback")], idp_extra);
    let upstream = Upstream::start().await;
    let proxy = start_proxy(listener, &idp, &upstream, redis, extra).await;
    Env { idp, upstream, proxy }
}

fn session_cookie(resp: &reqwest::Response) -> String {
    set_cookie_value(resp, "_oauth2_proxy").expect("a session cookie")
}

async fn status(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_cookie_holds_only_a_ticket_and_sign_out_kills_copies() {
    let redis = Redis::start().await;
    let env = setup(&redis.url(), &[], serde_json::json!({})).await;
    let client = browser();
    let p = &env.proxy.url;
    let resp = login(&client, p, "/", "alice", "alice-password").await;
    let ticket = session_cookie(&resp);
    assert!(ticket.len() < 200, "a ticket, not a session: {} bytes", ticket.len());

    let keys = redis.keys().await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("_oauth2_proxy-"), "{keys:?}");
    let stored = redis.get(&keys[0]).await.unwrap();
    assert!(!stored.contains("alice") && !stored.contains("eyJ"), "stored encrypted");

    let view: serde_json::Value = client.get(format!("{p}/x")).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["headers"]["x-forwarded-email"][0], "alice@example.com");
    assert!(view["headers"]["x-forwarded-access-token"][0].as_str().is_some());

    // A copy of the cookie (another browser) works until sign-out, then never again.
    let thief = browser();
    let cookie = format!("_oauth2_proxy={ticket}");
    let stolen = |c: &reqwest::Client| c.get(format!("{p}/x")).header("cookie", cookie.clone()).send();
    assert_eq!(stolen(&thief).await.unwrap().status(), 200);
    let out = client.get(format!("{p}/oauth2/sign_out")).send().await.unwrap();
    assert_eq!(out.status(), 302);
    assert!(redis.keys().await.is_empty(), "the Redis entry is deleted");
    assert_eq!(stolen(&thief).await.unwrap().status(), 403, "replay after sign-out fails");

    // A tampered ticket is no session, and does not reach Redis as a key.
    let mut bytes = ticket.into_bytes();
    bytes[10] ^= 1;
    let tampered = format!("_oauth2_proxy={}", String::from_utf8(bytes).unwrap());
    let resp = thief.get(format!("{p}/x")).header("cookie", tampered).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    drop(env.idp);
}

#[tokio::test]
async fn redis_down_at_start_then_up() {
    let mut redis = Redis::start().await;
    redis.stop();
    let env = setup(&redis.url(), &[], serde_json::json!({})).await;
    let client = browser();
    let p = &env.proxy.url;
    assert_eq!(status(&client, &format!("{p}/ping")).await, 200, "the process is up");
    let ready = client.get(format!("{p}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("Redis"));

    // A login cannot be stored: a clear page, not a crash or a half session.
    let callback = start_and_authenticate(&client, p, "/", "alice", "alice-password").await;
    let resp = client.get(callback).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(set_cookie_value(&resp, "_oauth2_proxy").is_none());
    let id = request_id(&resp);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Sessions are unavailable") && page.contains(&id), "{page}");
    assert!(
        !page.contains("Redis") && !page.contains("127.0.0.1"),
        "no internals on the page: {page}"
    );
    assert!(logged(&id).iter().any(|l| l.contains("Redis")), "the cause is logged under {id}");

    redis.run().await;
    eventually("ready once Redis is up", Duration::from_secs(10), || {
        let (c, u) = (client.clone(), format!("{p}/ready"));
        async move { status(&c, &u).await == 200 }
    })
    .await;
    let resp = login(&client, p, "/", "alice", "alice-password").await;
    assert_eq!(resp.status(), 302);
    assert_eq!(status(&client, &format!("{p}/x")).await, 200);
    drop(env.idp);
}

#[tokio::test]
async fn redis_down_later_gives_a_clear_error_and_the_session_survives_a_restart() {
    let mut redis = Redis::start().await;
    let env = setup(&redis.url(), &[], serde_json::json!({})).await;
    let client = browser();
    let p = &env.proxy.url;
    login(&client, p, "/", "alice", "alice-password").await;
    assert_eq!(status(&client, &format!("{p}/x")).await, 200);

    redis.stop();
    let resp = client.get(format!("{p}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(set_cookie_value(&resp, "_oauth2_proxy").is_none(), "the session cookie is kept");
    assert!(resp.text().await.unwrap().contains("Sessions are unavailable"));
    assert_eq!(status(&client, &format!("{p}/oauth2/auth")).await, 503, "fails closed");

    redis.run().await;
    eventually("the same session works again", Duration::from_secs(10), || {
        let (c, u) = (client.clone(), format!("{p}/x"));
        async move { status(&c, &u).await == 200 }
    })
    .await;
    drop(env.idp);
}

#[tokio::test]
async fn two_replicas_refresh_a_shared_session_once() {
    let redis = Redis::start().await;
    let refresh_flags = [
        "--scope=openid email profile offline_access",
        "--prompt=consent",
        "--cookie-refresh=1m",
    ];
    let env = setup(&redis.url(), &refresh_flags, serde_json::json!({ "rotateRefreshToken": true })).await;
    // A second replica: same secret, same Redis, same IdP client.
    let listener = Proxy::bind().await;
    let replica = start_proxy(listener, &env.idp, &env.upstream, &redis.url(), &refresh_flags).await;
    let client = browser();
    let resp = login(&client, &env.proxy.url, "/", "alice", "alice-password").await;
    let cookie = format!("_oauth2_proxy={}", session_cookie(&resp));

    env.proxy.clock.advance(Duration::from_secs(120));
    replica.clock.advance(Duration::from_secs(120));
    let mut requests = Vec::new();
    for i in 0..12 {
        let target = if i % 2 == 0 { &env.proxy.url } else { &replica.url };
        let req = reqwest::Client::new()
            .get(format!("{target}/x"))
            .header("cookie", cookie.clone())
            .send();
        requests.push(tokio::spawn(async move { req.await.unwrap().status().as_u16() }));
    }
    for r in requests {
        assert_eq!(r.await.unwrap(), 200, "every parallel request keeps its session");
    }
    let stats: serde_json::Value = reqwest::get(format!("{}/_test/stats", env.idp.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["grants"]["refresh_token"], 1, "one refresh for both replicas: {stats}");
    assert!(stats["grant_errors"].get("refresh_token").is_none(), "{stats}");

    // The refreshed session is the one both replicas now read; no new cookie was needed.
    for target in [&env.proxy.url, &replica.url] {
        let resp = reqwest::Client::new()
            .get(format!("{target}/x"))
            .header("cookie", cookie.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(set_cookie_value(&resp, "_oauth2_proxy").is_none(), "the ticket does not change");
    }
    drop(env.idp);
}

#[tokio::test]
async fn redis_over_tls_with_a_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(certs.path(), "127.0.0.1");
    let tls_port = free_port();
    let redis = Redis::start_with(&[
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        cert.display().to_string(),
        "--tls-key-file".into(),
        key.display().to_string(),
        "--tls-auth-clients".into(),
        "no".into(),
    ])
    .await;
    let ca_flag = format!("--redis-ca-path={}", ca.display());
    let env = setup(&format!("rediss://127.0.0.1:{tls_port}"), &[&ca_flag], serde_json::json!({})).await;
    let client = browser();
    let p = &env.proxy.url;
    eventually("ready: PING over TLS and discovery", Duration::from_secs(10), || {
        let (c, u) = (client.clone(), format!("{p}/ready"));
        async move { status(&c, &u).await == 200 }
    })
    .await;
    login(&client, p, "/", "alice", "alice-password").await;
    assert_eq!(status(&client, &format!("{p}/x")).await, 200);
    assert_eq!(redis.keys().await.len(), 1, "stored through the TLS port");

    // Without the CA the server is not trusted: not ready, and no session is stored.
    let listener = Proxy::bind().await;
    let untrusting = start_proxy(listener, &env.idp, &env.upstream, &format!("rediss://127.0.0.1:{tls_port}"), &[]).await;
    let ready = client.get(format!("{}/ready", untrusting.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("Redis") && why.to_lowercase().contains("certificate"), "{why}");
    drop(env.idp);
}

#[tokio::test]
async fn sentinel_finds_the_master() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!("port {port}\nbind 127.0.0.1\nsentinel monitor sidekey 127.0.0.1 {} 1\n", redis.port),
    )
    .unwrap();
    let mut sentinel = Command::new("/usr/bin/redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server --sentinel");
    eventually("sentinel listening", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    let listener = Proxy::bind().await;
    let addr = listener.local_addr().unwrap();
    let idp = Idp::start(&[format!("http://{addr}/oauth2/callback")], serde_json::json!({}));
    let upstream = Upstream::start().await;
    let sentinels = format!("--redis-sentinel-connection-urls=redis://127.0.0.1:{port}");
    let flags = [
        "--session-store-type=redis",
        "--redis-use-sentinel",
        "--redis-sentinel-master-name=sidekey",
        &sentinels,
    ];
    let proxy = Proxy::start(listener, &Proxy::args(&idp.issuer, &upstream.url, &flags)).await;
    let client = browser();
    login(&client, &proxy.url, "/", "alice", "alice-password").await;
    assert_eq!(status(&client, &format!("{}/x", proxy.url)).await, 200);
    assert_eq!(redis.keys().await.len(), 1, "stored on the master the sentinel named");
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    drop(idp);
}

#[tokio::test]
async fn cluster_of_three_masters() {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Redis::start_with(&["--cluster-enabled".into(), "yes".into()]).await);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = Command::new("/usr/bin/redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli (redis-tools) is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let first = nodes[0].port;
    eventually("cluster state ok", Duration::from_secs(10), || async move {
        let info = Command::new("/usr/bin/redis-cli")
            .args(["-p", &first.to_string(), "cluster", "info"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok")
    })
    .await;

    let listener = Proxy::bind().await;
    let addr = listener.local_addr().unwrap();
    let idp = Idp::start(&[format!("http://{addr}/oauth2/callback")], serde_json::json!({}));
    let upstream = Upstream::start().await;
    let urls = format!("--redis-cluster-connection-urls=redis://{}", addrs[0]);
    let flags = ["--session-store-type=redis", "--redis-use-cluster", &urls];
    let proxy = Proxy::start(listener, &Proxy::args(&idp.issuer, &upstream.url, &flags)).await;
    let client = browser();
    // Several sessions spread over the slots of all three masters.
    for _ in 0..6 {
        let c = browser();
        login(&c, &proxy.url, "/", "alice", "alice-password").await;
        assert_eq!(status(&c, &format!("{}/x", proxy.url)).await, 200);
    }
    let mut total = 0;
    for n in &nodes {
        total += n.keys().await.len();
    }
    assert_eq!(total, 6, "one entry per session across the cluster");
    drop(client);
    drop(idp);
}

#[tokio::test]
async fn redis_with_a_password() {
    let redis = Redis::start_with(&["--requirepass".into(), "s3cret-redis".into()]).await;
    let env = setup(&redis.url(), &["--redis-password=s3cret-redis"], serde_json::json!({})).await;
    let client = browser();
    let p = &env.proxy.url;
    login(&client, p, "/", "alice", "alice-password").await;
    assert_eq!(status(&client, &format!("{p}/x")).await, 200);

    // Without the password the store refuses: not ready, with the reason and no secret.
    let listener = Proxy::bind().await;
    let without = start_proxy(listener, &env.idp, &env.upstream, &redis.url(), &[]).await;
    let ready = client.get(format!("{}/ready", without.url)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("Redis") && !why.contains("s3cret"), "{why}");
    drop(env.idp);
}

/// The ticket a session cookie value carries, opened as the proxy opens it.
fn ticket_of(value: &str) -> sidekey_proxy::session::store::Ticket {
    use sidekey_proxy::session::codec::{Purpose, Sealer};
    let secret = sidekey_proxy::config::parse_cookie_secret(COOKIE_SECRET).unwrap();
    Sealer::new(&secret, Purpose::Ticket).open("_oauth2_proxy", value).unwrap()
}

/// A signed-in browser's session cookie value (a ticket), from a fresh login.
async fn fresh_ticket(p: &str) -> String {
    let c = browser();
    session_cookie(&login(&c, p, "/", "alice", "alice-password").await)
}

async fn replay(p: &str, ticket: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{p}/x"))
        .header("cookie", format!("_oauth2_proxy={ticket}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `/oauth2/sign_in` ends the session it replaces (the oauth2-proxy CVE-2026-34454 class):
/// with Redis the cookie is only a ticket, so clearing it in one browser left a copy taken
/// earlier (another browser, a stolen cookie) opening the stored session. Now the page
/// deletes it, as sign-out does; and both delete every session the request names, not just
/// the newest (a browser can hold one per cookie domain and path).
#[tokio::test]
async fn sign_in_and_sign_out_delete_every_stored_session_so_copies_die() {
    let redis = Redis::start().await;
    let env = setup(&redis.url(), &[], serde_json::json!({})).await;
    let p = &env.proxy.url;
    let client = browser();
    let ticket = session_cookie(&login(&client, p, "/", "alice", "alice-password").await);
    assert_eq!(replay(p, &ticket).await, 200, "a copy of the cookie works while the session lives");

    let page = client.get(format!("{p}/oauth2/sign_in")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        set_cookie_value(&page, "_oauth2_proxy").as_deref(),
        Some(""),
        "the browser's cookie is cleared"
    );
    assert!(
        redis.keys().await.is_empty(),
        "the stored session is deleted: {:?}",
        redis.keys().await
    );
    assert_eq!(replay(p, &ticket).await, 403, "a copy replayed after /oauth2/sign_in is refused");

    for endpoint in ["/oauth2/sign_in", "/oauth2/sign_out"] {
        let (a, b) = (fresh_ticket(p).await, fresh_ticket(p).await);
        assert_eq!(redis.keys().await.len(), 2);
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("{p}{endpoint}"))
            .header("cookie", format!("_oauth2_proxy={a}; _oauth2_proxy={b}"))
            .send()
            .await
            .unwrap();
        assert!(resp.status() == 200 || resp.status() == 302, "{endpoint}: {}", resp.status());
        assert!(redis.keys().await.is_empty(), "{endpoint}: both sessions deleted");
        assert_eq!((replay(p, &a).await, replay(p, &b).await), (403, 403), "{endpoint}");
    }
    drop(env.idp);
}

/// A new login in a browser that has a session replaces it: the old ticket's entry is
/// deleted, not left valid until it expires.
#[tokio::test]
async fn a_new_login_deletes_the_stored_session_it_replaces() {
    let redis = Redis::start().await;
    let env = setup(&redis.url(), &[], serde_json::json!({})).await;
    let p = &env.proxy.url;
    let client = browser();
    let old = session_cookie(&login(&client, p, "/", "alice", "alice-password").await);
    let new = session_cookie(&login(&client, p, "/", "alice", "alice-password").await);
    assert_ne!(old, new, "a login always starts a new session");
    assert_eq!(redis.keys().await, vec![ticket_of(&new).redis_key("_oauth2_proxy")]);
    assert_eq!(replay(p, &old).await, 403);
    assert_eq!(replay(p, &new).await, 200);
    drop(env.idp);
}

/// A refresh the provider refuses ends the session everywhere: the entry is deleted, so a
/// copy of the cookie is refused too. The refresh token is spent by the test first, so the
/// provider (rotating refresh tokens) refuses the proxy's use of it.
#[tokio::test]
async fn a_refused_refresh_deletes_the_stored_session() {
    let redis = Redis::start().await;
    let flags = [
        "--scope=openid email profile offline_access",
        "--prompt=consent",
        "--cookie-refresh=1m",
    ];
    let env = setup(&redis.url(), &flags, serde_json::json!({ "rotateRefreshToken": true })).await;
    let p = &env.proxy.url;
    let client = browser();
    let ticket = session_cookie(&login(&client, p, "/", "alice", "alice-password").await);
    let key = ticket_of(&ticket).redis_key("_oauth2_proxy");
    let stored = redis.get(&key).await.unwrap();
    let session = ticket_of(&ticket).open("_oauth2_proxy", &stored).unwrap();
    let refresh_token = session.refresh_token.expect("offline_access gives a refresh token");

    let discovery: serde_json::Value = reqwest::get(format!("{}/.well-known/openid-configuration", env.idp.issuer))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spent = reqwest::Client::new()
        .post(discovery["token_endpoint"].as_str().unwrap())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(spent.status(), 200, "{}", spent.text().await.unwrap());

    env.proxy.clock.advance(Duration::from_secs(120));
    let resp = client.get(format!("{p}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 403, "the session ended");
    assert!(redis.get(&key).await.is_none(), "the stored session is deleted");
    assert_eq!(replay(p, &ticket).await, 403, "a copy is refused too");
    drop(env.idp);
}

/// The provider down and the tokens expired: the proxy clears the cookie, so the session
/// is over, and its entry goes too; before, it stayed, and a copy of the cookie could have
/// had it refreshed once the provider was back.
#[tokio::test]
async fn a_session_ended_for_expired_tokens_is_deleted_from_the_store() {
    let redis = Redis::start().await;
    let flags = [
        "--scope=openid email profile offline_access",
        "--prompt=consent",
        "--cookie-refresh=1m",
    ];
    let env = setup(&redis.url(), &flags, serde_json::json!({})).await;
    let p = &env.proxy.url;
    let client = browser();
    let ticket = session_cookie(&login(&client, p, "/", "alice", "alice-password").await);
    let key = ticket_of(&ticket).redis_key("_oauth2_proxy");
    assert!(redis.get(&key).await.is_some());
    drop(env.idp);

    // Past the access token's hour, with no provider to refresh it.
    env.proxy.clock.advance(Duration::from_secs(2 * 3600));
    let resp = client.get(format!("{p}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        set_cookie_value(&resp, "_oauth2_proxy").is_some_and(|v| v.is_empty()),
        "the cookie is cleared"
    );
    assert!(redis.get(&key).await.is_none(), "the stored session is deleted with it");
}

/// A refresh stores the refreshed session only where one still exists: signing out while
/// another request (or replica) was refreshing must not bring the session back.
#[tokio::test]
async fn a_refresh_never_brings_back_a_deleted_session() {
    use sidekey_proxy::session::Session;
    use sidekey_proxy::session::store::{RedisStore, Sessions};
    let redis = Redis::start().await;
    let cfg = sidekey_proxy::config::RedisConfig {
        url: redis.url(),
        username: None,
        password: None,
        sentinel_master: String::new(),
        sentinel_urls: vec![],
        sentinel_password: None,
        cluster_urls: vec![],
        ca_pem: None,
        timeout: Duration::from_secs(2),
        idle_timeout: None,
    };
    let secret = sidekey_proxy::config::parse_cookie_secret(COOKIE_SECRET).unwrap();
    let sessions = Sessions::new("_oauth2_proxy", &secret, Some(RedisStore::new(&cfg).unwrap()), 1);
    let now = now_secs();
    let session = Session {
        email: "alice@example.com".into(),
        expires_at: now + 3600,
        ..Session::default()
    };
    let value = sessions.save(&session, None, now).await.unwrap().expect("a new ticket");
    let ticket = sessions
        .load(std::slice::from_ref(&value), now)
        .await
        .unwrap()
        .unwrap()
        .ticket
        .unwrap();
    let refreshed = Session {
        refreshed_at: now + 1,
        ..session.clone()
    };
    assert!(
        sessions.update(&refreshed, &ticket, now).await.unwrap(),
        "a live session is updated"
    );
    sessions.delete_named(std::slice::from_ref(&value)).await.unwrap();
    assert!(!sessions.update(&refreshed, &ticket, now).await.unwrap(), "a deleted one is not");
    assert!(redis.keys().await.is_empty(), "and is not brought back: {:?}", redis.keys().await);
    assert!(sessions.load(std::slice::from_ref(&value), now).await.unwrap().is_none());
}
