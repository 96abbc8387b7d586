//! Spoofed identity: every header the proxy sets, sent by the client in other case, with
//! `_` for `-`, duplicated or folded, never reaches the upstream as sent; forwarding
//! headers from an untrusted peer are dropped; the proxy's own cookies, in any arrangement,
//! stay with the proxy. Raw HTTP, so no client library tidies the request first.

mod support;

use sidekey_proxy::headers::IDENTITY_HEADERS;
use sidekey_proxy::session::Session;
use support::*;

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
    let upstream = Upstream::start().await;
    let args = Proxy::args(
        &dead_issuer(),
        &upstream.url,
        &[
            "--pass-access-token",
            "--pass-authorization-header",
            "--set-xauthrequest",
            "--reverse-proxy",
            "--trusted-proxy-ip=10.0.0.0/8",
        ],
    );
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
async fn the_proxys_cookies_never_reach_the_upstream() {
    let (p, _u) = proxy().await;
    let session = sealed_session();
    for cookies in [
        format!("Cookie: _oauth2_proxy={session}; app=kept\r\n"),
        format!("Cookie: app=kept; _oauth2_proxy={session}\r\n"),
        format!("Cookie: _oauth2_proxy={session}\r\nCookie: app=kept; _oauth2_proxy_csrf=x\r\n"),
        format!("Cookie: _oauth2_proxy={session};app=kept;_oauth2_proxy_0=x;_oauth2_proxy_1=y\r\n"),
        format!("Cookie: _oauth2_proxy={session}; _oauth2_proxy_0123abcd_csrf=x; app=kept\r\n"),
    ] {
        let (status, body) = raw(&p, &cookies).await;
        assert_eq!(status, 200, "{cookies:?}: {body}");
        let headers = upstream_headers(&body);
        let seen = headers.get("cookie").map(|c| c.to_string()).unwrap_or_default();
        assert!(seen.contains("app=kept"), "{cookies:?}: the app's cookie is kept: {seen}");
        assert!(!seen.contains("_oauth2_proxy"), "{cookies:?}: {seen}");
    }
}
