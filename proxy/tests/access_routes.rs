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
