//! End-to-end: forward-auth (`/oauth2/auth`, the static-upstream pattern), trust in
//! forwarding headers, and sign-out, against the real OpenID provider. The test plays the
//! front end here; `front_ends.rs` runs real nginx and Caddy.

use crate::support::*;

struct Env {
    idp: Idp,
    proxy: Proxy,
    _upstream: Upstream,
}

async fn setup(upstream_flag: Option<&str>, extra: &[&str]) -> Env {
    let listener = Proxy::bind().await;
    let addr = listener.local_addr().unwrap();
    let idp = Idp::start(&[format!("http://{addr}/oauth2/callback")], serde_json::json!({}));
    let upstream = Upstream::start().await;
    let args = Proxy::args(&idp.issuer, upstream_flag.unwrap_or(&upstream.url), extra);
    let proxy = Proxy::start(listener, &args).await;
    Env {
        idp,
        proxy,
        _upstream: upstream,
    }
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

#[tokio::test]
async fn auth_endpoint_applies_query_constraints_and_the_configured_success_status() {
    let env = setup(None, &["--set-xauthrequest", "--auth-success-status=200"]).await;
    let client = browser();
    let p = &env.proxy.url;
    assert_eq!(client.get(format!("{p}/oauth2/auth")).send().await.unwrap().status(), 401);
    login(&client, p, "/", "alice", "alice-password").await;

    let ok = client.get(format!("{p}/oauth2/auth")).send().await.unwrap();
    assert_eq!(ok.status(), 200, "Envoy ext_authz wants 200");
    assert_eq!(ok.headers()["x-auth-request-email"], "alice@example.com");
    for (query, status) in [
        ("allowed_groups=admins", 200),
        ("allowed_groups=ops,devs", 200),
        ("allowed_groups=ops", 403),
        ("allowed_emails=alice@example.com", 200),
        ("allowed_emails=bob@other.org", 403),
        ("allowed_email_domains=example.com", 200),
        ("allowed_email_domains=badexample.com", 403),
        ("allowed_groups=admins&allowed_emails=bob@other.org", 403),
    ] {
        let resp = client.get(format!("{p}/oauth2/auth?{query}")).send().await.unwrap();
        assert_eq!(resp.status(), status, "{query}");
        if status == 403 {
            assert!(resp.headers().get("x-auth-request-email").is_none(), "no identity on a denial");
        }
    }
    drop(env.idp);
}

#[tokio::test]
async fn auth_endpoint_applies_access_rules_to_the_app_request() {
    let env = setup(
        None,
        &["--skip-auth-route=GET=^/public/", "--api-route=^/api/", "--reverse-proxy=true"],
    )
    .await;
    let client = browser();
    let p = &env.proxy.url;
    let status = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let client = client.clone();
        let url = format!("{p}{path}");
        async move {
            let mut req = client.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    // Envoy ext_authz appends the app's path to the auth URL.
    assert_eq!(status("/oauth2/auth/public/a.css", &[]).await, 202);
    assert_eq!(status("/oauth2/auth/public/../private", &[]).await, 401, "normalized first");
    assert_eq!(status("/oauth2/auth/private?x=/public/", &[]).await, 401, "query is not the path");
    // A trusted front end's X-Forwarded-Uri and -Method.
    assert_eq!(status("/oauth2/auth", &[("x-forwarded-uri", "/public/a.css")]).await, 202);
    assert_eq!(
        status(
            "/oauth2/auth",
            &[("x-forwarded-uri", "/public/a.css"), ("x-forwarded-method", "POST")]
        )
        .await,
        401,
        "GET-only rule"
    );
    assert_eq!(status("/oauth2/auth", &[("x-forwarded-uri", "/private")]).await, 401);
    // The front end sends the app the path as the client sent it, so only a path that needs
    // no normalizing can skip: `/%2e%2e/public/x` is `/public/x` to the proxy, but an app
    // that routes the raw path (Express, many Go routers) sees something else.
    assert_eq!(status("/oauth2/auth", &[("x-forwarded-uri", "/%2e%2e/public/x")]).await, 401);
    assert_eq!(status("/oauth2/auth", &[("x-forwarded-uri", "/public/..;/private")]).await, 401);
    assert_eq!(status("/oauth2/auth", &[("x-forwarded-uri", "/public/%2e%2e/private")]).await, 401);
    drop(env.idp);
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_change_nothing() {
    // Loopback is not in trusted_proxy_ips here, so this test client is an untrusted peer.
    for extra in [
        &[
            "--skip-auth-route=^/public/",
            "--reverse-proxy=true",
            "--trusted-proxy-ip=192.0.2.0/24",
        ][..],
        &["--skip-auth-route=^/public/", "--reverse-proxy=false"][..],
    ] {
        let env = setup(None, extra).await;
        let client = browser();
        let p = &env.proxy.url;
        let auth = client
            .get(format!("{p}/oauth2/auth"))
            .header("x-forwarded-uri", "/public/x")
            .send()
            .await
            .unwrap();
        assert_eq!(auth.status(), 401, "spoofed X-Forwarded-Uri ignored ({extra:?})");
        let start = client
            .get(format!("{p}/oauth2/start"))
            .header("x-auth-request-redirect", "/elsewhere")
            .header("x-forwarded-host", "evil.example.net")
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        let to_idp = location(&start);
        assert!(
            to_idp.contains(&urlencode(&format!("http://{}/oauth2/callback", host_of(p)))),
            "callback from the real Host: {to_idp}"
        );
        let callback = idp_login(&client, &to_idp, "alice", "alice-password").await;
        let back = client.get(callback).send().await.unwrap();
        assert_eq!(location(&back), "/", "X-Auth-Request-Redirect ignored");

        let view: serde_json::Value = client
            .get(format!("{p}/public/x"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-real-ip", "6.6.6.6")
            .header("x-forwarded-uri", "/admin")
            .header("x-original-url", "/admin")
            .header("X_Forwarded_Host", "evil.example.net")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let h = &view["headers"];
        assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{h}");
        assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
        assert_eq!(h["x-forwarded-host"], serde_json::json!([host_of(p)]));
        for name in ["x-real-ip", "x-forwarded-uri", "x-original-url"] {
            assert!(h.get(name).is_none(), "{name} reached the app: {h}");
        }
        drop(env.idp);
    }
}

#[tokio::test]
async fn trusted_front_end_headers_shape_callback_cookies_and_upstream_headers() {
    let env = setup(
        None,
        &["--reverse-proxy=true", "--cookie-domain=example.com", "--skip-auth-route=^/public/"],
    )
    .await;
    let client = browser();
    let p = &env.proxy.url;
    let start = client
        .get(format!("{p}/oauth2/start"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.com")
        .header("x-auth-request-redirect", "/reports?q=1")
        .send()
        .await
        .unwrap();
    let to_idp = location(&start);
    assert!(to_idp.contains(&urlencode("https://app.example.com/oauth2/callback")), "{to_idp}");
    let csrf = start.headers()["set-cookie"].to_str().unwrap();
    assert!(csrf.contains("Domain=example.com"), "{csrf}");

    let view: serde_json::Value = client
        .get(format!("{p}/public/x"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "app.example.com")
        .header("x-forwarded-uri", "/public/x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let h = &view["headers"];
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["203.0.113.9, 127.0.0.1"]), "{h}");
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["app.example.com"]));
    assert_eq!(
        h["x-forwarded-uri"],
        serde_json::json!(["/public/x"]),
        "a trusted front end's headers pass"
    );
    drop(env.idp);
}

#[tokio::test]
async fn static_upstream_is_the_traefik_forward_auth_pattern() {
    let env = setup(
        Some("static://202"),
        &[
            "--reverse-proxy=true",
            "--skip-provider-button=true",
            "--set-xauthrequest",
            "--skip-auth-route=^/health$",
        ],
    )
    .await;
    let client = browser();
    let p = &env.proxy.url;
    let me = host_of(p);
    // Traefik calls the proxy's `/` with the app request in X-Forwarded-*.
    let forward_auth = |uri: &'static str| {
        client
            .get(format!("{p}/"))
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-host", me.clone())
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-method", "GET")
    };
    assert_eq!(
        forward_auth("/health").send().await.unwrap().status(),
        202,
        "skip rule on the app path"
    );
    let first = forward_auth("/app/page?x=1").send().await.unwrap();
    assert_eq!(first.status(), 302, "straight to the IdP");
    let callback = idp_login(&client, &location(&first), "alice", "alice-password").await;
    let back = client.get(callback).send().await.unwrap();
    assert_eq!(location(&back), "/app/page?x=1", "back to the original app URL");

    let ok = forward_auth("/app/page?x=1").send().await.unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.headers()["x-auth-request-user"], "alice@example.com");
    assert_eq!(ok.headers()["x-auth-request-groups"], "admins,devs");
    drop(env.idp);
}

#[tokio::test]
async fn shared_callback_returns_to_the_original_app_host() {
    // One sign-in host for many apps (oauth2-proxy#3240): the return URL is absolute and
    // must pass whitelist_domains; anything else falls back to "/".
    for (whitelist, expected) in [
        ("--whitelist-domain=.example.com", "https://app.example.com/app/page?x=1"),
        ("--whitelist-domain=other.org", "/"),
    ] {
        let listener = Proxy::bind().await;
        let addr = listener.local_addr().unwrap();
        let callback = format!("http://{addr}/oauth2/callback");
        let idp = Idp::start(std::slice::from_ref(&callback), serde_json::json!({}));
        let redirect = format!("--redirect-url={callback}");
        let args = Proxy::args(
            &idp.issuer,
            "static://202",
            &["--reverse-proxy=true", "--skip-provider-button=true", &redirect, whitelist],
        );
        let proxy = Proxy::start(listener, &args).await;
        let client = browser();
        let first = client
            .get(format!("{}/", proxy.url))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "app.example.com")
            .header("x-forwarded-uri", "/app/page?x=1")
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 302);
        let back = client
            .get(idp_login(&client, &location(&first), "alice", "alice-password").await)
            .send()
            .await
            .unwrap();
        assert_eq!(location(&back), expected, "{whitelist}");
        drop(idp);
    }
}

#[tokio::test]
async fn sign_out_ends_the_provider_session_and_calls_the_backend() {
    let listener = Proxy::bind().await;
    let addr = listener.local_addr().unwrap();
    let upstream = Upstream::start().await;
    let idp = Idp::start(
        &[],
        serde_json::json!({"clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [format!("http://{addr}/oauth2/callback")],
            "post_logout_redirect_uris": [format!("http://{addr}/bye")],
        }]}),
    );
    let backend = format!("--backend-logout-url={}logout?token={{id_token}}", upstream.url);
    let args = Proxy::args(&idp.issuer, &upstream.url, &["--oidc-logout=true", &backend]);
    let proxy = Proxy::start(listener, &args).await;
    let client = browser();
    let p = &proxy.url;
    login(&client, p, "/", "alice", "alice-password").await;

    let out = client.get(format!("{p}/oauth2/sign_out?rd=%2Fbye")).send().await.unwrap();
    assert_eq!(out.status(), 302);
    let end_session = location(&out);
    let url = url::Url::parse(&end_session).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert!(end_session.starts_with(&idp.issuer), "{end_session}");
    assert_eq!(q["post_logout_redirect_uri"], format!("http://{addr}/bye"));
    let hint = &q["id_token_hint"];
    assert_eq!(hint.split('.').count(), 3, "an ID token");
    assert!(
        out.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("_oauth2_proxy=;")),
        "session cookie cleared"
    );
    let seen = upstream.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|u| u == &format!("/logout?token={hint}")),
        "backend_logout_url called with the ID token: {seen:?}"
    );

    // The provider asks for confirmation, then sends the browser back to the validated rd.
    let page = client.get(&end_session).send().await.unwrap().text().await.unwrap();
    let xsrf = page.split("name=\"xsrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let action = page.split("action=\"").nth(1).unwrap().split('"').next().unwrap();
    let confirm = client
        .post(url.join(action).unwrap())
        .form(&[("xsrf", xsrf), ("logout", "yes")])
        .send()
        .await
        .unwrap();
    assert!(confirm.status().is_redirection(), "{}", confirm.status());
    assert!(
        location(&confirm).starts_with(&format!("http://{addr}/bye")),
        "{}",
        location(&confirm)
    );

    // The provider session is gone too: a new login asks for the password again.
    let start = client.get(format!("{p}/oauth2/start")).send().await.unwrap();
    let mut next = location(&start);
    let mut asked_again = false;
    for _ in 0..4 {
        let r = client.get(&next).send().await.unwrap();
        if !r.status().is_redirection() {
            asked_again = r.text().await.unwrap().contains("id=\"login\"");
            break;
        }
        next = location(&r);
        if !next.starts_with("http") {
            next = format!("{}{next}", idp.base);
        }
        assert!(!next.contains("/oauth2/callback"), "signed in silently after sign-out");
    }
    assert!(asked_again, "the provider asks for the password again");

    // An rd that fails validation never reaches the provider either.
    login(&client, p, "/", "alice", "alice-password").await;
    let out = client
        .get(format!("{p}/oauth2/sign_out?rd={}", urlencode("https://evil.example.net/")))
        .send()
        .await
        .unwrap();
    let q: std::collections::HashMap<_, _> = url::Url::parse(&location(&out)).unwrap().query_pairs().into_owned().collect();
    assert_eq!(q["post_logout_redirect_uri"], format!("http://{addr}/oauth2/signed_out"));
    drop(idp);
}
