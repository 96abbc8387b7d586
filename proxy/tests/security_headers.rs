//! Spoofed identity: every header the proxy sets, sent by the client in other case, with
//! `_` for `-`, duplicated or folded, never reaches the upstream as sent; forwarding
//! headers from an untrusted peer are dropped; the proxy's own cookies, in any arrangement,
//! stay with the proxy. Raw HTTP, so no client library tidies the request first.

use crate::support::*;
use sidekey_proxy::headers::IDENTITY_HEADERS;
use sidekey_proxy::session::Session;

const SPOOF: &str = "spoofed-by-client";

fn sealed_session() -> String {
    let now = now_secs();
    seal_session(&Session {
        user: "alice".into(),
        email: "alice@example.com".into(),
        preferred_username: "alice".into(),
        groups: vec!["devs".into()],
        access_token: Some("real-access-token".into()),
        id_token: Some("real-id-token".into()),
        created_at: now,
        expires_at: now + 3600,
        ..Session::default()
    })
}

/// A proxy that sets every identity header it can, behind a front end it does not trust
/// (loopback is not in `trusted_proxy_ips`).
async fn proxy() -> (Proxy, Upstream) {
    proxy_with(&["--trusted-proxy-ip=10.0.0.0/8"]).await
}

/// The same proxy with `extra` flags: `--trusted-proxy-ip=127.0.0.1` makes the test a
/// trusted front end.
async fn proxy_with(extra: &[&str]) -> (Proxy, Upstream) {
    let upstream = Upstream::start().await;
    let mut flags = vec![
        "--pass-access-token",
        "--pass-authorization-header",
        "--set-xauthrequest",
        "--reverse-proxy",
    ];
    flags.extend_from_slice(extra);
    let args = Proxy::args(&dead_issuer(), &upstream.url, &flags);
    (Proxy::start(Proxy::bind().await, &args).await, upstream)
}

async fn raw(proxy: &Proxy, head: &str) -> (u16, String) {
    raw_http(proxy.addr, "GET", "/app", head).await
}

fn upstream_headers(body: &str) -> serde_json::Map<String, serde_json::Value> {
    let start = body.find('{').unwrap();
    let end = body.rfind('}').unwrap();
    let v: serde_json::Value = serde_json::from_str(&body[start..=end]).unwrap();
    v["headers"].as_object().unwrap().clone()
}

fn spellings(canonical: &str) -> Vec<String> {
    let title: String = canonical
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-");
    vec![
        canonical.to_string(),
        canonical.to_ascii_uppercase(),
        title.clone(),
        canonical.replace('-', "_"),
        title.replace('-', "_"),
        canonical.to_ascii_uppercase().replace('-', "_"),
        // Mixed: some dashes, some underscores.
        canonical.replacen('-', "_", 1),
    ]
}

#[tokio::test]
async fn no_spelling_of_an_identity_header_reaches_the_upstream() {
    let (p, _u) = proxy().await;
    let cookie = format!("Cookie: _oauth2_proxy={}\r\n", sealed_session());
    let mut names: Vec<&str> = IDENTITY_HEADERS.to_vec();
    names.push("authorization");
    let mut checked = 0;
    for canonical in names {
        for name in spellings(canonical) {
            for head in [
                format!("{name}: {SPOOF}\r\n"),
                // Duplicated.
                format!("{name}: {SPOOF}\r\n{name}: {SPOOF}-2\r\n"),
                // Whitespace-padded.
                format!("{name}:   {SPOOF}   \r\n"),
            ] {
                let (status, body) = raw(&p, &format!("{head}{cookie}")).await;
                assert_eq!(status, 200, "{head:?}: {body}");
                let headers = upstream_headers(&body);
                let leaked: Vec<_> = headers
                    .iter()
                    .filter(|(_, v)| v.to_string().contains(SPOOF))
                    .map(|(k, _)| k.clone())
                    .collect();
                assert!(leaked.is_empty(), "{head:?} reached the upstream as {leaked:?}");
                checked += 1;
            }
            // An obsolete line folding continues the previous header: refused outright.
            let (status, _) = raw(&p, &format!("X-Other: a\r\n {name}: {SPOOF}\r\n{cookie}")).await;
            assert_eq!(status, 400, "folded {name}");
        }
    }
    assert!(checked >= 13 * 7 * 3, "{checked}");
    // And the proxy's own values are there, once each.
    let (_, body) = raw(&p, &cookie).await;
    let h = upstream_headers(&body);
    assert_eq!(h["x-forwarded-user"], serde_json::json!(["alice"]));
    assert_eq!(h["x-forwarded-email"], serde_json::json!(["alice@example.com"]));
    assert_eq!(h["x-forwarded-access-token"], serde_json::json!(["real-access-token"]));
    // `--pass-authorization-header` passes the ID token, as in oauth2-proxy.
    assert_eq!(h["authorization"], serde_json::json!(["Bearer real-id-token"]));
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_dropped() {
    let (p, _u) = proxy().await;
    let cookie = format!("Cookie: _oauth2_proxy={}\r\n", sealed_session());
    for name in [
        "X-Forwarded-Host",
        "X-Forwarded-Uri",
        "X-Forwarded-Proto",
        "X-Forwarded-Method",
        "X-Original-URL",
        "X-Real-IP",
        "X-Auth-Request-Redirect",
        "x_forwarded_host",
        "X_Forwarded_Proto",
        "x_original_url",
        "X_Real_IP",
        "X-ORIGINAL-URL",
    ] {
        let (status, body) = raw(&p, &format!("{name}: {SPOOF}\r\n{cookie}")).await;
        assert_eq!(status, 200, "{name}: {body}");
        let headers = upstream_headers(&body);
        assert!(
            !headers.values().any(|v| v.to_string().contains(SPOOF)),
            "{name} reached the upstream: {headers:?}"
        );
    }
    // X-Forwarded-For is replaced by the real peer, never extended with the client's claim.
    for name in ["X-Forwarded-For", "x_forwarded_for"] {
        let (_, body) = raw(&p, &format!("{name}: 10.9.9.9\r\n{cookie}")).await;
        let headers = upstream_headers(&body);
        let all = serde_json::to_string(&headers).unwrap();
        assert!(!all.contains("10.9.9.9"), "{name}: {all}");
        assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]), "{name}");
    }
}

#[tokio::test]
async fn the_proxys_cookies_never_reach_the_upstream_and_the_apps_arrive_as_sent() {
    let (p, _u) = proxy().await;
    let session = sealed_session();
    for (cookies, upstream) in [
        (format!("Cookie: _oauth2_proxy={session}; app=kept\r\n"), "app=kept"),
        (format!("Cookie: app=kept; _oauth2_proxy={session}\r\n"), "app=kept"),
        (
            format!("Cookie: _oauth2_proxy={session}\r\nCookie: app=kept; _oauth2_proxy_csrf=x\r\n"),
            "app=kept",
        ),
        (
            format!("Cookie: _oauth2_proxy={session};app=kept;_oauth2_proxy_0=x;_oauth2_proxy_1=y\r\n"),
            "app=kept",
        ),
        (
            format!("Cookie: _oauth2_proxy={session}; _oauth2_proxy_0123abcd_csrf=x; app=kept\r\n"),
            "app=kept",
        ),
        // The app's own cookies byte for byte: quoted values, a pair without `=`, spacing.
        (
            format!("Cookie: pref=\"a b\"; _oauth2_proxy={session}; flag;  app=kept\r\n"),
            "pref=\"a b\"; flag;  app=kept",
        ),
    ] {
        let (status, body) = raw(&p, &cookies).await;
        assert_eq!(status, 200, "{cookies:?}: {body}");
        let headers = upstream_headers(&body);
        assert_eq!(headers["cookie"], serde_json::json!([upstream]), "{cookies:?}");
    }
}

/// Every header the proxy sets or reads from a front end, named in `Connection`.
const NAMED: &str = "X-Forwarded-Email, X-Forwarded-User, X-Forwarded-Groups, X-Forwarded-Preferred-Username, \
X-Forwarded-Access-Token, Authorization, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Uri, \
X-Forwarded-Method, X-Forwarded-Prefix, X-Real-IP, Forwarded, X-Auth-Request-Email, X-Auth-Request-User, \
X-Auth-Request-Groups, X-Auth-Request-Preferred-Username, X-Auth-Request-Access-Token, GAP-Auth, Host";

/// `Connection` headers naming [`NAMED`] in the spellings and arrangements a client can
/// choose: any case, `_` for `-`, stray commas and whitespace, one name per header.
fn connection_spellings() -> Vec<String> {
    let names: Vec<&str> = NAMED.split(", ").collect();
    vec![
        format!("Connection: close, {NAMED}\r\n"),
        format!("Connection: keep-alive, {}\r\n", NAMED.to_ascii_lowercase()),
        format!("Connection: {}\r\n", NAMED.to_ascii_uppercase()),
        format!("Connection: {}\r\n", NAMED.replace('-', "_")),
        format!("Connection: ,, {} ,,\r\n", names.join(" ,\t, ")),
        format!("Connection:\t{}\t\r\n", names.join("\t,")),
        names.iter().map(|n| format!("Connection: {n}\r\n")).collect(),
        names
            .iter()
            .map(|n| format!("connection: {}\r\n", n.to_ascii_lowercase()))
            .collect(),
    ]
}

/// One raw request with any request-line version, read by its Content-Length (HTTP/1.0
/// keep-alive leaves the connection open).
async fn raw_versioned(proxy: &Proxy, version: &str, target: &str, head: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!("GET {target} {version}\r\nHost: app.example.com\r\nAccept: text/html\r\n{head}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok());
            if n == 0 || length.is_some_and(|l| body.len() >= l) {
                let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (status, head.to_string(), body.to_string());
            }
        }
        assert!(n > 0, "closed before a response: {}", String::from_utf8_lossy(&buf));
    }
}

/// What the app must receive from the proxy whatever `Connection` says.
fn assert_proxy_headers_intact(what: &str, h: &serde_json::Map<String, serde_json::Value>) {
    let one = |v: &str| serde_json::json!([v]);
    for (name, want) in [
        ("x-forwarded-user", one("alice")),
        ("x-forwarded-email", one("alice@example.com")),
        ("x-forwarded-groups", one("devs")),
        ("x-forwarded-preferred-username", one("alice")),
        ("x-forwarded-access-token", one("real-access-token")),
        ("authorization", one("Bearer real-id-token")),
        ("x-forwarded-for", one("127.0.0.1")),
        ("x-forwarded-proto", one("http")),
        ("x-forwarded-host", one("app.example.com")),
    ] {
        assert_eq!(h.get(name), Some(&want), "{what}: {name} in {h:?}");
    }
}

/// Traefik CVE-2024-45410 class: hop-by-hop processing of `Connection` ran after the proxy
/// had set its headers, so a client could name them and the app received none.
#[tokio::test]
async fn connection_cannot_remove_the_headers_the_proxy_sets() {
    let (p, _u) = proxy().await;
    let cookie = format!("Cookie: _oauth2_proxy={}\r\n", sealed_session());
    for connection in connection_spellings() {
        let (status, body) = raw(&p, &format!("{connection}{cookie}")).await;
        assert_eq!(status, 200, "{connection:?}: {body}");
        assert_proxy_headers_intact(&connection, &upstream_headers(&body));
    }
    // HTTP/1.0, where `Connection: keep-alive` is how a client keeps the connection.
    for connection in [
        "Connection: keep-alive, X-Forwarded-Email\r\n".to_string(),
        format!("Connection: keep-alive, {NAMED}\r\n"),
    ] {
        let (status, head, body) = raw_versioned(&p, "HTTP/1.0", "/app", &format!("{connection}{cookie}")).await;
        assert_eq!(status, 200, "{connection:?}: {head}");
        assert_proxy_headers_intact(&format!("HTTP/1.0 {connection}"), &upstream_headers(&body));
    }
    // A header of the client's own that it names is still hop-by-hop (RFC 9110 §7.6.1).
    let (_, body) = raw(&p, &format!("X-App-Hop: 1\r\nX-App-Kept: 1\r\nConnection: X-App-Hop\r\n{cookie}")).await;
    let h = upstream_headers(&body);
    assert!(h.get("x-app-hop").is_none() && h.get("x-app-kept").is_some(), "{h:?}");
}

/// A trusted front end's forwarding headers are the proxy's input: a client's `Connection`
/// (which some front ends pass on) must not delete them either.
#[tokio::test]
async fn connection_cannot_remove_a_trusted_front_ends_forwarding_headers() {
    let (p, _u) = proxy_with(&["--trusted-proxy-ip=127.0.0.1", "--real-client-ip-header=X-Client-IP"]).await;
    let cookie = format!("Cookie: _oauth2_proxy={}\r\n", sealed_session());
    let forwarded = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example.com\r\n\
X-Forwarded-Prefix: /app\r\nX-Forwarded-Ssl: on\r\nX-Real-IP: 203.0.113.9\r\nX-Client-IP: 203.0.113.9\r\n\
Forwarded: for=203.0.113.9;proto=https\r\nX-Forwarded-Client-Cert: By=spiffe://front;Hash=abc\r\n";
    for connection in [
        "Connection: X-Forwarded-For, X-Forwarded-Prefix, X-Forwarded-Ssl, X-Real-IP, X-Client-IP, Forwarded, X-Forwarded-Client-Cert\r\n",
        "Connection: x_forwarded_for\r\nConnection: X-FORWARDED-PREFIX, x-forwarded-ssl,, X-Real-Ip ,X-Client-Ip\r\nConnection: forwarded, x-forwarded-client-cert\r\n",
    ] {
        let (status, body) = raw(&p, &format!("{forwarded}{connection}{cookie}")).await;
        assert_eq!(status, 200, "{connection:?}: {body}");
        let h = upstream_headers(&body);
        let one = |v: &str| Some(serde_json::json!([v]));
        assert_eq!(
            h.get("x-forwarded-for").cloned(),
            one("203.0.113.9, 127.0.0.1"),
            "{connection:?}: {h:?}"
        );
        assert_eq!(h.get("x-forwarded-proto").cloned(), one("https"), "{connection:?}");
        assert_eq!(h.get("x-forwarded-prefix").cloned(), one("/app"), "{connection:?}");
        assert_eq!(h.get("x-forwarded-ssl").cloned(), one("on"), "{connection:?}");
        assert_eq!(h.get("x-real-ip").cloned(), one("203.0.113.9"), "{connection:?}");
        assert_eq!(h.get("x-client-ip").cloned(), one("203.0.113.9"), "{connection:?}");
        assert_eq!(h.get("forwarded").cloned(), one("for=203.0.113.9;proto=https"), "{connection:?}");
        assert_eq!(
            h.get("x-forwarded-client-cert").cloned(),
            one("By=spiffe://front;Hash=abc"),
            "{connection:?}"
        );
    }
}

/// Forward-auth: `Connection` can neither take the app request's description away from the
/// proxy (an `X-Forwarded-Method: POST` dropped would meet a GET-only skip rule) nor the
/// identity headers off the answer nginx or Caddy copies to the app.
#[tokio::test]
async fn connection_cannot_change_a_forward_auth_answer() {
    let (p, _u) = proxy_with(&[
        "--trusted-proxy-ip=127.0.0.1",
        "--skip-auth-route=GET=^/public/",
        "--set-authorization-header",
    ])
    .await;
    let cookie = format!("Cookie: _oauth2_proxy={}\r\n", sealed_session());
    let auth = |head: String| {
        let addr = p.addr;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET /oauth2/auth HTTP/1.1\r\nHost: app.example.com\r\n{head}Connection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    for connection in connection_spellings() {
        let resp = auth(format!("{connection}{cookie}X-Forwarded-Uri: /private/x\r\n")).await;
        assert!(resp.starts_with("HTTP/1.1 202"), "{connection:?}: {resp}");
        let lower = resp.to_ascii_lowercase();
        for header in [
            "\r\nx-auth-request-user: alice\r\n",
            "\r\nx-auth-request-email: alice@example.com\r\n",
            "\r\nx-auth-request-groups: devs\r\n",
            "\r\nx-auth-request-preferred-username: alice\r\n",
            "\r\nx-auth-request-access-token: real-access-token\r\n",
            "\r\nauthorization: bearer real-id-token\r\n",
        ] {
            assert!(lower.contains(header), "{connection:?}: {header:?} missing from {resp}");
        }
        let post = auth(format!("{connection}X-Forwarded-Uri: /public/x\r\nX-Forwarded-Method: POST\r\n")).await;
        assert!(
            post.starts_with("HTTP/1.1 401"),
            "{connection:?}: a POST met the GET-only rule: {post}"
        );
        let get = auth(format!("{connection}X-Forwarded-Uri: /public/x\r\n")).await;
        assert!(get.starts_with("HTTP/1.1 202"), "{connection:?}: {get}");
    }
}

/// Headers a front end uses to describe the client (address, scheme, host, path, TLS client
/// certificate), as nginx and ingress-nginx, Envoy/Istio, Traefik, HAProxy, Apache/Tomcat,
/// Jetty, AWS ALB, Azure Application Gateway and Front Door, Cloudflare, Fastly and Akamai
/// send them, plus names no front end uses yet: all forged when an untrusted peer sends them.
const CLIENT_DESCRIPTIONS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-protocol",
    "x-forwarded-path",
    "x-forwarded-by",
    "x-forwarded-client-cert",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    "x-forwarded-tlsversion",
    "x-forwarded-something-new",
    "x-forwarded",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "cf-visitor",
    "cf-ipcountry",
    "fastly-client-ip",
    "x-azure-clientip",
    "x-azure-socketip",
    "x-envoy-external-address",
    "x-envoy-internal",
    "x-envoy-original-path",
    "x-client-cert",
    "x-client-cert-chain-verified",
    "x-client-verify",
    "x-client-dn",
    "ssl-client-cert",
    "ssl-client-verify",
    "ssl-client-subject-dn",
    "x-ssl-client-cert",
    "x-ssl-client-verify",
    "x-ssl-client-s-dn",
    "x-ssl-cert",
    "x-arr-clientcert",
    "x-arr-ssl",
    "x-amzn-mtls-clientcert",
    "x-amzn-mtls-clientcert-leaf",
    "proxy-auth-cert",
    "proxy-ssl-id",
    "ssl-cipher",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
    "x-original-host",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-auth-request-redirect",
];

#[tokio::test]
async fn every_client_description_from_an_untrusted_peer_is_dropped() {
    let (p, _u) = proxy_with(&["--trusted-proxy-ip=10.0.0.0/8", "--real-client-ip-header=X-Client-IP"]).await;
    let cookie = format!("Cookie: _oauth2_proxy={}\r\n", sealed_session());
    let mut names: Vec<&str> = CLIENT_DESCRIPTIONS.to_vec();
    names.extend(sidekey_proxy::forwarded::FORWARDING_HEADERS);
    let mut all = String::new();
    for (i, canonical) in names.into_iter().enumerate() {
        let spelled = spellings(canonical);
        // One spelling each at once (hyper takes at most 100 headers).
        all.push_str(&format!("{}: {SPOOF}\r\n", spelled[i % spelled.len()]));
        for name in spelled {
            let (status, body) = raw(&p, &format!("{name}: {SPOOF}\r\n{cookie}")).await;
            assert_eq!(status, 200, "{name}: {body}");
            let h = upstream_headers(&body);
            let leaked: Vec<_> = h.iter().filter(|(_, v)| v.to_string().contains(SPOOF)).map(|(k, _)| k).collect();
            assert!(leaked.is_empty(), "{name} reached the upstream as {leaked:?}");
        }
    }
    // All at once, and the issue's own example.
    let (status, body) = raw(&p, &format!("{all}X-Client-IP: 6.6.6.6\r\n{cookie}")).await;
    assert_eq!(status, 200, "{body}");
    let h = upstream_headers(&body);
    let text = serde_json::to_string(&h).unwrap();
    assert!(!text.contains(SPOOF) && !text.contains("6.6.6.6"), "{text}");
    // Then the proxy's own description of the request, and only that.
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(h["x-forwarded-host"], serde_json::json!(["app.example.com"]));
}

/// From a trusted front end, its description of the client reaches the app as today.
#[tokio::test]
async fn a_trusted_front_ends_client_description_is_kept() {
    let (p, _u) = proxy_with(&["--trusted-proxy-ip=127.0.0.1", "--real-client-ip-header=X-Client-IP"]).await;
    let cookie = format!("Cookie: _oauth2_proxy={}\r\n", sealed_session());
    let sent = [
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-scheme", "https"),
        ("x-forwarded-client-cert", "By=spiffe://front;Hash=abc"),
        ("x-forwarded-tls-client-cert", "MIIB"),
        ("x-client-ip", "203.0.113.9"),
        ("x-real-ip", "203.0.113.9"),
        ("ssl-client-cert", "MIIB"),
        ("ssl_client_cert", "MIIB-tomcat"),
        ("cf-connecting-ip", "203.0.113.9"),
        ("x-envoy-external-address", "203.0.113.9"),
    ];
    let head: String = sent.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let (status, body) = raw(&p, &format!("{head}{cookie}")).await;
    assert_eq!(status, 200, "{body}");
    let h = upstream_headers(&body);
    for (k, v) in sent {
        assert_eq!(h.get(k), Some(&serde_json::json!([v])), "{k} in {h:?}");
    }
}
