//! End-to-end: the proxy against the real OpenID provider, with a cookie jar standing in
//! for the browser, and an upstream that reports what it received.

use std::time::Duration;

use crate::support::*;
use sidekey_proxy::session::LoginState;
use sidekey_proxy::session::codec::{Purpose, Sealer};

async fn upstream_view(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

fn header<'a>(view: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    view["headers"][name].as_array().map(|v| {
        assert_eq!(v.len(), 1, "{name} appears once");
        v[0].as_str().unwrap()
    })
}

#[tokio::test]
async fn login_passes_identity_to_the_upstream() {
    let env = login_env(&[
        "--pass-access-token",
        "--pass-authorization-header",
        "--set-xauthrequest",
        "--pass-basic-auth=false",
    ])
    .await;
    let client = browser();
    let p = &env.proxy.url;

    let resp = login(&client, p, "/app/page?x=1", "alice", "alice-password").await;
    assert_eq!(resp.status(), 302);
    assert_eq!(location(&resp), "/app/page?x=1", "back where the user started");
    let set_cookies: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        set_cookies
            .iter()
            .any(|c| c.starts_with("_oauth2_proxy=") && c.contains("HttpOnly")),
        "{set_cookies:?}"
    );
    assert!(
        set_cookies.iter().any(|c| c.starts_with("_oauth2_proxy_csrf=;")),
        "CSRF cookie cleared: {set_cookies:?}"
    );
    let session = format!("_oauth2_proxy={}", set_cookie_value(&resp, "_oauth2_proxy").unwrap());

    let view = client
        .get(format!("{p}/app/page?x=1"))
        .header("X-Forwarded-User", "spoofed")
        .header("X_Forwarded_Email", "spoofed@evil.com")
        .header("x-auth-request-groups", "admins")
        .header("Cookie", format!("app_cookie=kept; {session}; _oauth2_proxy_csrf=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(view.status(), 200);
    assert_eq!(
        view.headers()["x-auth-request-email"],
        "alice@example.com",
        "set_xauthrequest on responses"
    );
    let view: serde_json::Value = view.json().await.unwrap();
    assert_eq!(view["uri"], "/app/page?x=1");
    assert_eq!(header(&view, "x-forwarded-user"), Some("alice@example.com"));
    assert_eq!(header(&view, "x-forwarded-email"), Some("alice@example.com"));
    assert_eq!(header(&view, "x-forwarded-groups"), Some("admins,devs"));
    assert_eq!(header(&view, "x-forwarded-preferred-username"), Some("alice"));
    assert!(header(&view, "x-forwarded-access-token").is_some_and(|t| !t.is_empty()));
    assert!(
        header(&view, "authorization").is_some_and(|t| t.starts_with("Bearer ey")),
        "ID token as bearer"
    );
    assert!(view["headers"].get("x_forwarded_email").is_none(), "underscore spelling stripped");
    assert!(view["headers"].get("x-auth-request-groups").is_none());
    let cookie = header(&view, "cookie").unwrap_or("");
    assert!(cookie.contains("app_cookie=kept"), "{cookie}");
    assert!(
        !cookie.contains("_oauth2_proxy"),
        "the proxy's cookies never reach the upstream: {cookie}"
    );
    assert_eq!(header(&view, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&view, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&view, "x-forwarded-host"), Some(env.proxy.addr.to_string().as_str()));
    assert_eq!(header(&view, "host"), Some(env.proxy.addr.to_string().as_str()), "pass_host_header");

    let info: serde_json::Value = client
        .get(format!("{p}/oauth2/userinfo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["groups"], serde_json::json!(["admins", "devs"]));
    assert_eq!(info["preferredUsername"], "alice");

    let auth = client.get(format!("{p}/oauth2/auth")).send().await.unwrap();
    assert_eq!(auth.status(), 202);
    assert_eq!(auth.headers()["x-auth-request-user"], "alice@example.com");
    assert_eq!(auth.headers()["x-auth-request-groups"], "admins,devs");
    assert!(auth.headers().contains_key("x-auth-request-access-token"));

    let out = client.get(format!("{p}/oauth2/sign_out?rd=%2Fbye")).send().await.unwrap();
    assert_eq!(out.status(), 302);
    assert_eq!(location(&out), "/bye");
    assert!(
        out.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("_oauth2_proxy=;"))
    );
    assert_eq!(
        client.get(format!("{p}/oauth2/auth")).send().await.unwrap().status(),
        401,
        "signed out"
    );
    drop(env.idp);
}

#[tokio::test]
async fn unauthenticated_requests() {
    let env = login_env(&[]).await;
    let client = browser();
    let p = &env.proxy.url;
    let page = client
        .get(format!("{p}/private?q=1"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("action=\"/oauth2/start\"") && html.contains("name=\"rd\" value=\"/private?q=1\""),
        "{html}"
    );
    let api = client
        .get(format!("{p}/api"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    assert_eq!(client.get(format!("{p}/oauth2/auth")).send().await.unwrap().status(), 401);
    assert_eq!(client.get(format!("{p}/oauth2/userinfo")).send().await.unwrap().status(), 401);
    let sign_in = client.get(format!("{p}/oauth2/sign_in")).send().await.unwrap();
    assert_eq!(sign_in.status(), 200);
    assert_eq!(client.get(format!("{p}/ping")).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{p}/oauth2/nope")).send().await.unwrap().status(), 404);
    drop(env.idp);
}

#[tokio::test]
async fn skip_provider_button_goes_straight_to_the_idp() {
    let env = login_env(&["--skip-provider-button"]).await;
    let client = browser();
    let resp = client.get(format!("{}/deep/link", env.proxy.url)).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let auth_url = location(&resp);
    assert!(auth_url.starts_with(&env.idp.issuer), "{auth_url}");
    for param in [
        "state=",
        "nonce=",
        "code_challenge=",
        "code_challenge_method=S256",
        "response_type=code",
    ] {
        assert!(auth_url.contains(param), "{param} in {auth_url}");
    }
    let callback = idp_login(&client, &auth_url, "alice", "alice-password").await;
    let done = client.get(callback).send().await.unwrap();
    assert_eq!(location(&done), "/deep/link");
    assert_eq!(
        upstream_view(&client, &format!("{}/deep/link", env.proxy.url)).await["uri"],
        "/deep/link"
    );
}

#[tokio::test]
async fn ready_waits_for_discovery_while_ping_answers() {
    // Reserve a port for an IdP that is not running yet.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let idp_port = reserved.local_addr().unwrap().port();
    drop(reserved);
    let listener = Proxy::bind().await;
    let callback = format!("http://{}/oauth2/callback", listener.local_addr().unwrap());
    let upstream = Upstream::start().await;
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let proxy = Proxy::start(listener, &Proxy::args(&issuer, &upstream.url, &[])).await;
    let client = browser();
    assert_eq!(client.get(format!("{}/ping", proxy.url)).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{}/ready", proxy.url)).send().await.unwrap().status(), 503);
    let start = client.get(format!("{}/oauth2/start", proxy.url)).send().await.unwrap();
    assert_eq!(start.status(), 503, "a clear error page, not a hang or a 500");
    let id = request_id(&start);
    let page = start.text().await.unwrap();
    assert!(
        page.contains("Signing in is not possible right now") && page.contains(&id),
        "{page}"
    );
    assert!(
        !page.contains("127.0.0.1") && !page.contains("unreachable"),
        "no internals on the page: {page}"
    );
    assert!(
        logged(&id).iter().any(|l| l.contains("unreachable")),
        "the cause is logged under {id}: {:?}",
        logged(&id)
    );
    let _idp = Idp::start(&[callback], serde_json::json!({ "port": idp_port }));
    eventually("/ready to turn 200", Duration::from_secs(60), || async {
        client.get(format!("{}/ready", proxy.url)).send().await.unwrap().status() == 200
    })
    .await;
    let resp = login(&client, &proxy.url, "/", "alice", "alice-password").await;
    assert_eq!(resp.status(), 302);
}

#[tokio::test]
async fn state_code_and_nonce_are_checked() {
    let env = login_env(&[]).await;
    let client = browser();
    let p = &env.proxy.url;

    // Wrong state: the callback's state does not match the CSRF cookie.
    let callback = start_and_authenticate(&client, p, "/", "alice", "alice-password").await;
    let tampered = callback.replace("state=", "state=x");
    assert_eq!(client.get(&tampered).send().await.unwrap().status(), 403);

    // No CSRF cookie at all (another browser).
    let callback = start_and_authenticate(&client, p, "/", "alice", "alice-password").await;
    assert_eq!(browser().get(&callback).send().await.unwrap().status(), 403);

    // Replayed code: a finished login's code presented again with a fresh, valid state.
    let first = start_and_authenticate(&client, p, "/", "alice", "alice-password").await;
    assert_eq!(client.get(&first).send().await.unwrap().status(), 302);
    let resp = client.get(format!("{p}/oauth2/start")).send().await.unwrap();
    let fresh_state = url::Url::parse(&location(&resp))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let old_code = url::Url::parse(&first)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let replay = format!(
        "{p}/oauth2/callback?code={}&state={}&iss={}",
        urlencode(&old_code),
        fresh_state,
        urlencode(&env.idp.issuer)
    );
    let resp = client.get(&replay).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let id = request_id(&resp);
    assert!(resp.text().await.unwrap().contains("refused to complete the sign-in"));
    assert!(logged(&id).iter().any(|l| l.contains("invalid_grant")), "{:?}", logged(&id));

    // Wrong nonce: a CSRF cookie (sealed with the same secret) whose nonce differs.
    let fresh = browser();
    let callback = start_and_authenticate(&fresh, p, "/", "alice", "alice-password").await;
    let cb = url::Url::parse(&callback).unwrap();
    let state = cb.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let secret = sidekey_proxy::config::parse_cookie_secret(COOKIE_SECRET).unwrap();
    let forged = LoginState {
        state,
        nonce: "not-the-nonce".into(),
        pkce_verifier: None,
        redirect: "/".into(),
        redirect_uri: format!("{p}/oauth2/callback"),
        expires_at: u64::MAX / 2,
    };
    let sealed = Sealer::new(&secret, Purpose::Csrf).seal("_oauth2_proxy_csrf", &forged);
    let resp = browser()
        .get(&callback)
        .header("cookie", format!("_oauth2_proxy_csrf={sealed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // Error from the provider.
    let resp = client.get(format!("{p}/oauth2/start")).send().await.unwrap();
    let state = url::Url::parse(&location(&resp))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let resp = client
        .get(format!(
            "{p}/oauth2/callback?error=access_denied&error_description=user+said+no&state={state}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("user said no"));
}

#[tokio::test]
async fn expired_id_token_is_refused() {
    let env = login_env_with(&[], serde_json::json!({ "ttl": { "IdToken": 60 } })).await;
    let client = browser();
    let callback = start_and_authenticate(&client, &env.proxy.url, "/", "alice", "alice-password").await;
    // The proxy's clock runs 10 minutes ahead: the ID token (60 s) is long expired.
    env.proxy.clock.advance(Duration::from_secs(600));
    let resp = client.get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let id = request_id(&resp);
    assert!(resp.text().await.unwrap().contains("could not be verified"));
    assert!(logged(&id).iter().any(|l| l.contains("expired")), "{:?}", logged(&id));
}

#[tokio::test]
async fn authorization_rules_refuse_at_login() {
    let env = login_env(&["--allowed-group=admins"]).await;
    let p = &env.proxy.url;
    // bob is in other.org: email domain refused.
    let resp = login(&browser(), p, "/", "bob", "bob-password").await;
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("not in an allowed domain"));
    // carol's email is unverified.
    let resp = login(&browser(), p, "/", "carol", "carol-password").await;
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("not verified"));
    // mallory's email has two @.
    let resp = login(&browser(), p, "/", "mallory", "mallory-password").await;
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("malformed"));

    let groups = login_env(&["--allowed-group=admins", "--email-domain=*"]).await;
    let resp = login(&browser(), &groups.proxy.url, "/", "bob", "bob-password").await;
    assert_eq!(resp.status(), 403, "bob is not in admins");
    assert!(resp.text().await.unwrap().contains("not in an allowed group"));
    let ok = login(&browser(), &groups.proxy.url, "/", "alice", "alice-password").await;
    assert_eq!(ok.status(), 302);
}

/// The access-denied page names who was refused and offers a way out that makes the
/// provider ask again (`prompt=login`) instead of silently reusing the refused session.
#[tokio::test]
async fn a_refused_account_is_named_and_can_sign_in_as_someone_else() {
    let env = login_env(&[]).await;
    let p = &env.proxy.url;
    let client = browser();
    let resp = login(&client, p, "/reports?q=1", "bob", "bob-password").await;
    assert_eq!(resp.status(), 403);
    let page = resp.text().await.unwrap();
    assert!(page.contains(r#"<strong id="account">bob@other.org</strong>"#), "{page}");
    assert!(page.contains("not in an allowed domain"), "the reason: {page}");
    let href = page
        .split(r#"id="switch-account" href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no switch-account link: {page}"))
        .replace("&amp;", "&");
    assert_eq!(href, "/oauth2/start?rd=%2Freports%3Fq%3D1&prompt=login");
    assert!(
        logged("bob@other.org").iter().any(|l| l.contains("denied")),
        "the refused account is in the auth log"
    );
    let start = client.get(format!("{p}{href}")).send().await.unwrap();
    let auth_url = url::Url::parse(&location(&start)).unwrap();
    let prompt: Vec<_> = auth_url
        .query_pairs()
        .filter(|(k, _)| k == "prompt")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(prompt, ["login"]);
    // Any other prompt from the query is not ours to pass on.
    for other in ["none", "consent", "login%20consent"] {
        let start = client.get(format!("{p}/oauth2/start?prompt={other}")).send().await.unwrap();
        let auth_url = url::Url::parse(&location(&start)).unwrap();
        assert!(auth_url.query_pairs().all(|(k, _)| k != "prompt"), "prompt={other}: {auth_url}");
    }
    // With a session that the rules refuse (the rules changed since it was made), the
    // page names the session's account and returns to the page asked for.
    let alice = login(&browser(), p, "/", "alice", "alice-password").await;
    let cookie = set_cookie_value(&alice, "_oauth2_proxy").unwrap();
    // A second proxy with the same cookie secret and stricter rules reads the same cookie.
    let strict = Proxy::start(
        Proxy::bind().await,
        &Proxy::args(&env.idp.issuer, &env._upstream.url, &["--allowed-group=nobody"]),
    )
    .await;
    let resp = browser()
        .get(format!("{}/deep/page", strict.url))
        .header("cookie", format!("_oauth2_proxy={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let page = resp.text().await.unwrap();
    assert!(page.contains(r#"<strong id="account">alice@example.com</strong>"#), "{page}");
    assert!(page.contains("rd=%2Fdeep%2Fpage&amp;prompt=login"), "{page}");
}

#[tokio::test]
async fn tampered_truncated_and_expired_cookies_are_no_session() {
    let env = login_env(&[]).await;
    let client = browser();
    let p = &env.proxy.url;
    let resp = login(&client, p, "/", "alice", "alice-password").await;
    let value = set_cookie_value(&resp, "_oauth2_proxy").unwrap();
    let with = |v: &str| {
        let v = v.to_string();
        let p = p.clone();
        async move {
            browser()
                .get(format!("{p}/"))
                .header("cookie", format!("_oauth2_proxy={v}"))
                .header("accept", "application/json")
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(with(&value).await, 200, "the genuine cookie works");
    let mut flipped = value.clone().into_bytes();
    flipped[value.len() / 2] = if flipped[value.len() / 2] == b'A' { b'B' } else { b'A' };
    assert_eq!(with(&String::from_utf8(flipped).unwrap()).await, 401);
    assert_eq!(with(&value[..value.len() - 5]).await, 401);
    assert_eq!(with("").await, 401);
    assert_eq!(with("%%%garbage").await, 401);
    assert_eq!(with(&"A".repeat(6000)).await, 401);
    // Session expiry is enforced by the proxy, not only by the browser (cookie_expire 168h).
    env.proxy.clock.advance(Duration::from_secs(169 * 3600));
    assert_eq!(with(&value).await, 401);
}

#[tokio::test]
async fn open_redirects_are_refused() {
    let env = login_env(&["--whitelist-domain=.example.com"]).await;
    let p = &env.proxy.url;
    let client = browser();
    for bad in [
        "//evil.com",
        "/\\evil.com",
        "https://evil.com",
        "https://badexample.com",
        "/%09/evil.com",
        "https:evil.com",
        "javascript:alert(1)",
        "https://example.com@evil.com",
    ] {
        let out = client
            .get(format!("{p}/oauth2/sign_out?rd={}", urlencode(bad)))
            .send()
            .await
            .unwrap();
        assert_eq!(location(&out), "/oauth2/signed_out", "sign_out rd {bad:?}");
        let callback = start_and_authenticate(&client, p, bad, "alice", "alice-password").await;
        let done = client.get(callback).send().await.unwrap();
        assert_eq!(location(&done), "/", "start rd {bad:?}");
    }
    let out = client
        .get(format!("{p}/oauth2/sign_out?rd={}", urlencode("https://app.example.com/x")))
        .send()
        .await
        .unwrap();
    assert_eq!(location(&out), "https://app.example.com/x");
}

#[tokio::test]
async fn large_sessions_are_split_into_chunks() {
    let groups: Vec<String> = (0..300).map(|i| format!("group-with-a-long-name-{i:04}")).collect();
    let users = serde_json::json!({ "alice": { "password": "pw", "email": "alice@example.com", "email_verified": true, "groups": groups, "preferred_username": "alice" } });
    let env = login_env_with(&["--pass-access-token"], serde_json::json!({ "users": users })).await;
    let client = browser();
    let resp = login(&client, &env.proxy.url, "/", "alice", "pw").await;
    let names: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split('=').next().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"_oauth2_proxy_0".to_string()) && names.contains(&"_oauth2_proxy_1".to_string()),
        "{names:?}"
    );
    for c in resp.headers().get_all("set-cookie") {
        assert!(c.len() < 4096, "each cookie fits a browser's limit");
    }
    let view = upstream_view(&client, &format!("{}/x", env.proxy.url)).await;
    assert_eq!(header(&view, "x-forwarded-groups").unwrap().split(',').count(), 300);
    assert!(
        !header(&view, "cookie").unwrap_or("").contains("_oauth2_proxy"),
        "no proxy chunks upstream"
    );
}

#[tokio::test]
async fn minimal_sessions_hold_no_tokens() {
    let env = login_env(&["--session-cookie-minimal"]).await;
    let client = browser();
    let resp = login(&client, &env.proxy.url, "/", "alice", "alice-password").await;
    let cookie = set_cookie_value(&resp, "_oauth2_proxy").unwrap().len();
    assert!(cookie < 400, "minimal cookie is small: {cookie}");
    let view = upstream_view(&client, &format!("{}/", env.proxy.url)).await;
    assert_eq!(header(&view, "x-forwarded-email"), Some("alice@example.com"));
}

#[tokio::test]
async fn skip_oidc_discovery_uses_the_configured_endpoints() {
    let listener = Proxy::bind().await;
    let callback = format!("http://{}/oauth2/callback", listener.local_addr().unwrap());
    let idp = Idp::start(&[callback], serde_json::json!({}));
    let upstream = Upstream::start().await;
    let i = &idp.issuer;
    let extra = [
        "--skip-oidc-discovery".to_string(),
        format!("--login-url={i}/auth"),
        format!("--redeem-url={i}/token"),
        format!("--oidc-jwks-url={i}/jwks"),
        "--oidc-groups-claim=groups".to_string(),
        "--user-id-claim=preferred_username".to_string(),
    ];
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let proxy = Proxy::start(listener, &Proxy::args(i, &upstream.url, &extra)).await;
    let client = browser();
    let resp = login(&client, &proxy.url, "/", "alice", "alice-password").await;
    assert_eq!(resp.status(), 302);
    let view = upstream_view(&client, &format!("{}/", proxy.url)).await;
    assert_eq!(header(&view, "x-forwarded-user"), Some("alice"), "user_id_claim");
    assert_eq!(header(&view, "x-forwarded-email"), Some("alice@example.com"));
}

/// Secure cookies over plain http to a non-loopback host (a port-forward to a ClusterIP, a
/// lab without TLS): the browser drops the login cookie, and the callback says why and what
/// to change instead of "login state is missing".
#[tokio::test]
async fn a_secure_cookie_over_plain_http_is_explained() {
    let secure = login_env(&["--cookie-secure=true"]).await;
    let callback = |p: &str, host: &str| {
        browser()
            .get(format!("{p}/oauth2/callback?state=s&code=c"))
            .header("host", host)
            .send()
    };
    let resp = callback(&secure.proxy.url, "app.lab.example:8080").await.unwrap();
    assert_eq!(resp.status(), 403);
    let id = request_id(&resp);
    let page = resp.text().await.unwrap();
    assert!(page.contains("plain http") && page.contains("cookie_secure=false"), "{page}");
    assert!(logged(&id).iter().any(|l| l.contains("cookie_secure=true")), "{:?}", logged(&id));
    // Browsers keep Secure cookies on loopback names: there it is the ordinary failure.
    for host in ["localhost:4180", "127.0.0.1:4180", "[::1]:4180"] {
        let page = callback(&secure.proxy.url, host).await.unwrap().text().await.unwrap();
        assert!(page.contains("took too long") && !page.contains("cookie_secure"), "{host}: {page}");
    }
    let plain = login_env(&[]).await;
    let page = callback(&plain.proxy.url, "app.lab.example:8080")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("cookie_secure"),
        "cookie_secure=false: the cookie was not dropped: {page}"
    );
    // A sidecar behind a TLS gateway sees plain http from its peer; the configured https
    // callback is what the browser used, so an expired login is just that.
    let behind_tls = login_env(&["--cookie-secure=true", "--redirect-url=https://app.example.com/oauth2/callback"]).await;
    let page = callback(&behind_tls.proxy.url, "app.example.com")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("took too long") && !page.contains("cookie_secure"), "{page}");
}
