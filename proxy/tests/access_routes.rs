//! Skip-auth and API routes over raw HTTP (no client library normalizes the path first):
//! the rules see the decoded, resolved path without the query, and the upstream receives
//! exactly that path.

mod support;

use support::*;

async fn proxy() -> (Proxy, Upstream) {
    let upstream = Upstream::start().await;
    let args = Proxy::args(
        &dead_issuer(),
        &upstream.url,
        &[
            "--skip-auth-route=GET=^/public/",
            "--skip-auth-route=POST!=^/hooks$",
            "--api-route=^/api/",
            "--skip-auth-preflight",
        ],
    );
    (Proxy::start(Proxy::bind().await, &args).await, upstream)
}

async fn raw(proxy: &Proxy, method: &str, target: &str, headers: &str) -> (u16, String) {
    raw_http(proxy.addr, method, target, headers).await
}

/// What the upstream saw, for requests the proxy let through.
fn upstream_view(body: &str) -> serde_json::Value {
    // Bodies may be chunked; the JSON object is the part between the outer braces.
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    serde_json::from_str(&body[start..=end]).unwrap()
}

#[tokio::test]
async fn skip_auth_routes_let_through_exactly_what_they_name() {
    let (p, _u) = proxy().await;
    let (status, body) = raw(
        &p,
        "GET",
        "/public/logo%20v2.png?size=2",
        "X-Forwarded-User: spoofed\r\nX_Forwarded_Email: spoofed@evil.com\r\nX-HTTP-Method-Override: DELETE\r\nCookie: app=kept; _oauth2_proxy=abc\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = upstream_view(&body);
    assert_eq!(v["uri"], "/public/logo%20v2.png?size=2");
    let headers = v["headers"].as_object().unwrap();
    for h in ["x-forwarded-user", "x_forwarded_email", "x-http-method-override"] {
        assert!(!headers.contains_key(h), "{h} reached the upstream: {headers:?}");
    }
    assert_eq!(v["headers"]["cookie"][0], "app=kept", "the proxy's cookie stays with the proxy");

    // Other spellings of the same public path are let through as the normalized path.
    for (target, seen) in [
        ("//public/x", "/public/x"),
        ("/public/./a/../b", "/public/b"),
        ("/public%2Fc", "/public/c"),
    ] {
        let (status, body) = raw(&p, "GET", target, "").await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(upstream_view(&body)["uri"], seen, "{target}");
    }
    // Method rules: GET only, and "every method but POST".
    assert_eq!(raw(&p, "POST", "/public/x", "Content-Length: 0\r\n").await.0, 403);
    assert_eq!(raw(&p, "PUT", "/hooks", "Content-Length: 0\r\n").await.0, 200);
    assert_eq!(raw(&p, "POST", "/hooks", "Content-Length: 0\r\n").await.0, 403);
    // CORS preflight.
    assert_eq!(raw(&p, "OPTIONS", "/private", "").await.0, 200);
}

#[tokio::test]
async fn method_override_headers_neither_widen_a_rule_nor_reach_the_app() {
    let (p, _u) = proxy().await;
    // Rules match the request's real method; an override header cannot turn a refused
    // POST into the GET the rule allows.
    for h in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "x_http_method_override",
    ] {
        let (status, _) = raw(&p, "POST", "/public/x", &format!("{h}: GET\r\nContent-Length: 0\r\n")).await;
        assert_eq!(status, 403, "POST with {h}: GET");
    }
    // A method the rule allows, asking the app to treat it as the one it refuses: the
    // override never reaches the app, in any spelling.
    let (status, body) = raw(
        &p,
        "PUT",
        "/hooks",
        "X-HTTP-Method-Override: POST\r\nX_HTTP_Method_Override: POST\r\nx-http-method: POST\r\nX_Method_Override: POST\r\nContent-Length: 0\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v = upstream_view(&body);
    assert_eq!(v["method"], "PUT");
    let seen: Vec<&String> = v["headers"].as_object().unwrap().keys().collect();
    assert!(
        !seen.iter().any(|h| h.replace('_', "-").contains("method")),
        "an override header reached the app: {seen:?}"
    );
}

#[tokio::test]
async fn trailing_dots_and_dot_runs_are_matched_as_the_app_will_see_them() {
    let (p, _u) = proxy().await;
    // What the rule matched is exactly what the upstream receives.
    for (target, seen) in [
        ("/public/x/..", "/public/"),
        ("/public/...", "/public/..."),
        ("/public/%2e%2e./x", "/public/.../x"),
        ("/public/x.", "/public/x."),
    ] {
        let (status, body) = raw(&p, "GET", target, "").await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(upstream_view(&body)["uri"], seen, "{target}");
    }
    // Dots that some servers strip (IIS drops trailing dots from segments) never make a
    // protected path public, and `.`/`..` in any encoding leave the public prefix.
    for target in [
        "/public./x",
        "/public../x",
        "/public/x/../../private",
        "/public/.%2e/private",
        "/public/%2e./private",
        "/public/%2E%2e/private.",
        "/public/x/%2e%2e/%2e%2e/private",
        "/.public/x",
    ] {
        let (status, body) = raw(&p, "GET", target, "").await;
        assert_eq!(status, 403, "{target} must need a login: {body}");
    }
}

#[tokio::test]
async fn smuggled_paths_do_not_skip_authentication() {
    let (p, _u) = proxy().await;
    for target in [
        "/public/../private",
        "/public/%2e%2e/private",
        "/public/%2E%2E%2Fprivate",
        "/public%2f..%2fprivate",
        "/public\\..\\private",
        "/public/..%5cprivate",
        "/private?x=/public/",
        "/private%3Fx=/public/",
        "/private%23/public/",
        "/private#/public/",
        "/PUBLIC/x",
        "/hooks/../hooks%2F..%2Fadmin",
    ] {
        let (status, body) = raw(&p, "GET", target, "").await;
        assert_eq!(status, 403, "{target} must need a login: {body}");
        assert!(body.contains("Sign in"), "{target}: {body}");
    }
    for target in ["/a%zz", "/a%00b", "/a%0d%0aSet-Cookie:%20x=1", "/%ff"] {
        assert_eq!(raw(&p, "GET", target, "").await.0, 400, "{target}");
    }
}

#[tokio::test]
async fn api_routes_answer_401_instead_of_a_login() {
    let (p, _u) = proxy().await;
    let (status, body) = raw(&p, "GET", "/api/items", "").await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("Sign in"));
    assert_eq!(
        raw(&p, "GET", "/app/api/items", "").await.0,
        403,
        "only the normalized prefix counts"
    );
    assert_eq!(raw(&p, "GET", "/public/../api/items", "").await.0, 401);
}
