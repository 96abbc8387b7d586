//! Skip-auth and API routes over raw HTTP (no client library normalizes the path first):
//! the rules see the decoded, resolved path without the query, and the upstream receives
//! exactly that path. The echo upstream shows what arrived; a real Tomcat 10 shows what a
//! servlet container makes of `;` path parameters.

use crate::support::*;

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

/// Issue 19, item 2: servlet path parameters. Tomcat (like Jetty and Spring) removes `;…`
/// from every segment before it resolves dot segments, so `/public/..;/private/x` is
/// `/private/x` to it, and `/private/x;.png` is `/private/x`; nginx, Go, Node and Python
/// read the same bytes as other paths. Each payload is sent raw through the proxy to a real
/// Tomcat 10: no unauthenticated answer may contain the protected file.
///
/// These open the protected file when sent straight to Tomcat (checked below, so the list
/// cannot go stale): a proxy that passes any of them on unauthenticated is bypassed.
const SERVLET_BYPASSES: &[&str] = &[
    "/public/..;/private/secret.txt",
    "/public/%2e%2e;/private/secret.txt",
    "/public/%2E%2E;/private/secret.txt",
    "/public/.%2e;/private/secret.txt",
    "/public/x/..;/..;/private/secret.txt",
    "/public/.;/..;/private/secret.txt",
    "/public/..;foo/private/secret.txt",
    "/public/..;jsessionid=1/private/secret.txt",
    "/public//..;/private/secret.txt",
    "/public/hello.txt/..;/../private/secret.txt",
    "/public/..;/private/./secret.txt",
    "/public;/../private/secret.txt",
    "/public;x=1/../private/secret.txt",
    "/public/..;/public/../private/secret.txt",
    "/img/..;/private/secret.txt",
    "/public/..;%5c..;/private/secret.txt",
    "/private/secret.txt;.png",
    "/private/secret.txt;jsessionid=1.png",
    "/private/secret.txt;x=.png",
    "/private;x=1/secret.txt;.png",
];

/// More of the class that do not open it on Tomcat as sent (`%3B` is a literal character
/// there, a climb above the root is a 400), but do once a proxy decodes the escape into a raw
/// `;` on the way, as this proxy once did, or resolves the dots differently.
const SERVLET_VARIANTS: &[&str] = &[
    "/public/..;/..;/..;/private/secret.txt",
    "/public/..%3b/private/secret.txt",
    "/public/..%3B/private/secret.txt",
    "/public/%2e%2e%3b/private/secret.txt",
    "/public/.%3b/..%3b/private/secret.txt",
    "/public/..%3bfoo/private/secret.txt",
    "/private/secret.txt%3b.png",
    "/private/secret.txt%3Bjsessionid=1.png",
    "/%2e%2e;/private/secret.txt",
    "/public/%252e%252e;/private/secret.txt",
    "/public/..;%2fprivate/secret.txt",
    "/private/secret.txt;/.png",
];

async fn tomcat_proxy(tomcat: &Tomcat, upstream: Option<&str>) -> Proxy {
    let args = Proxy::args(
        &dead_issuer(),
        upstream.unwrap_or(&tomcat.url),
        &[
            "--skip-auth-route=GET=^/public/",
            "--skip-auth-regex=\\.png$",
            "--api-route=^/api/",
            "--reverse-proxy=true",
        ],
    );
    Proxy::start(Proxy::bind().await, &args).await
}

fn signed_in_cookie() -> String {
    let now = now_secs();
    let s = sidekey_proxy::session::Session {
        user: "alice@example.com".into(),
        email: "alice@example.com".into(),
        created_at: now,
        expires_at: now + 3600,
        ..Default::default()
    };
    format!("Cookie: _oauth2_proxy={}\r\n", seal_session(&s))
}

#[tokio::test]
async fn servlet_path_parameters_never_open_a_protected_file_on_tomcat() {
    let tomcat = Tomcat::start().await;
    let p = tomcat_proxy(&tomcat, None).await;
    for target in SERVLET_BYPASSES {
        let (status, body) = raw_http(tomcat.addr, "GET", target, "").await;
        assert!(
            status == 200 && body.contains(TOMCAT_SECRET),
            "{target} no longer opens the file on Tomcat itself ({status}): the payload list is stale"
        );
    }
    for target in SERVLET_BYPASSES.iter().chain(SERVLET_VARIANTS) {
        let (status, body) = raw_http(p.addr, "GET", target, "").await;
        assert!(
            !body.contains(TOMCAT_SECRET),
            "{target}: the protected file, unauthenticated ({status})"
        );
        assert_eq!(status, 403, "{target} must need a login: {body}");
    }
    // API routes are matched as a servlet container maps the path, too: 401, not a login.
    for target in [
        "/api;v=1/items",
        "/public/..;/api/items",
        "/api/x;jsessionid=1",
        "/x/..%3B/api/items",
    ] {
        assert_eq!(raw_http(p.addr, "GET", target, "").await.0, 401, "{target}");
    }
    // The routes themselves still work, and what the rule matched is what Tomcat received.
    let (status, body) = raw_http(p.addr, "GET", "/public/hello.txt", "").await;
    assert_eq!((status, body.contains(TOMCAT_HELLO)), (200, true), "{body}");
    let (status, body) = raw_http(p.addr, "GET", "/img/logo.png", "").await;
    assert_eq!((status, body.contains("png-by-rule")), (200, true), "{body}");
    for (target, received) in [
        ("/public/echo/a%20b", "/public/echo/a%20b"),
        ("/private/..;/public/echo/x", "/public/echo/x"),
        ("/private/%2e%2e;x/public/echo/x", "/public/echo/x"),
        ("/public/echo/x/..%3b/y", "/public/echo/y"),
    ] {
        let (status, body) = raw_http(p.addr, "GET", target, "").await;
        assert_eq!(status, 200, "{target}: {body}");
        assert!(body.contains(&format!("requestURI={received}\n")), "{target}: {body}");
    }
    // Path parameters on a public path are refused a skip rather than guessed at: servlet
    // containers and everything else disagree about what they name.
    for target in [
        "/public;x=1/hello.txt",
        "/public/hello.txt;jsessionid=1",
        "/public/echo/a;b",
        "/public/echo/a%3Bb",
        "/public/echo/a%3b.png",
        "/public/echo/%252e%252e/x",
    ] {
        let (status, body) = raw_http(p.addr, "GET", target, "").await;
        assert_eq!(status, 403, "{target} must need a login: {body}");
        assert!(body.contains("Sign in"), "{target}: {body}");
    }
    // Signed in, nothing depends on the parameters: they reach Tomcat as the client sent
    // them (URL-rewritten `;jsessionid=` keeps working), and an encoded `;` stays encoded.
    let cookie = signed_in_cookie();
    let (status, body) = raw_http(p.addr, "GET", "/public/echo/a;jsessionid=1/b%3Bc", &cookie).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("requestURI=/public/echo/a;jsessionid=1/b%3Bc\n"), "{body}");
    assert!(body.contains("resolved=/public/echo/a/b;c"), "{body}");
    let (status, body) = raw_http(p.addr, "GET", "/private/secret.txt;jsessionid=1", &cookie).await;
    assert_eq!((status, body.contains(TOMCAT_SECRET)), (200, true), "{body}");
}

#[tokio::test]
async fn forward_auth_refuses_servlet_path_parameters() {
    let tomcat = Tomcat::start().await;
    // `/oauth2/auth` (nginx auth_request, Caddy, Envoy) and a static upstream answering the
    // front end's subrequest (the Traefik pattern).
    let p = tomcat_proxy(&tomcat, None).await;
    let traefik = tomcat_proxy(&tomcat, Some("static://202")).await;
    for target in SERVLET_BYPASSES.iter().chain(SERVLET_VARIANTS) {
        let headers = format!("X-Forwarded-Uri: {target}\r\nX-Forwarded-Method: GET\r\n");
        let envoy = format!("/oauth2/auth{target}");
        for (what, proxy, path, headers) in [
            ("X-Forwarded-Uri", &p, "/oauth2/auth", headers.as_str()),
            ("Envoy path", &p, envoy.as_str(), ""),
            ("static upstream", &traefik, "/", headers.as_str()),
        ] {
            let (status, _) = raw_http(proxy.addr, "GET", path, headers).await;
            if (200..300).contains(&status) {
                // The front end would now send the client's request, as it came, to the app.
                let (_, body) = raw_http(tomcat.addr, "GET", target, "").await;
                assert!(
                    !body.contains(TOMCAT_SECRET),
                    "{what}: {target} answered {status} and Tomcat returns the protected file"
                );
            }
            assert!(matches!(status, 401 | 403), "{what}: {target} must need a session: {status}");
        }
    }
    for target in ["/public/hello.txt", "/img/logo.png", "/public/echo/a%20b"] {
        let headers = format!("X-Forwarded-Uri: {target}\r\n");
        assert_eq!(raw_http(p.addr, "GET", "/oauth2/auth", &headers).await.0, 202, "{target}");
        assert_eq!(
            raw_http(p.addr, "GET", &format!("/oauth2/auth{target}"), "").await.0,
            202,
            "{target}"
        );
        assert_eq!(raw_http(traefik.addr, "GET", "/", &headers).await.0, 202, "{target}");
    }
}
