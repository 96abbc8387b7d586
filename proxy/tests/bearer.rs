//! End-to-end: bearer JWTs for API clients (`skip_jwt_bearer_tokens`, `extra_jwt_issuers`)
//! verified against real providers' JWKS; no session is created for them.

use std::time::Duration;

use crate::support::*;

/// A provider, a proxy in front of `upstream` for it, and an ID token from a real login.
struct Issued {
    idp: Idp,
    token: String,
    _proxy: Proxy,
}

async fn issue_token(upstream: &Upstream) -> Issued {
    let listener = Proxy::bind().await;
    let addr = listener.local_addr().unwrap();
    let idp = Idp::start(&[format!("http://{addr}/oauth2/callback")], serde_json::json!({}));
    let proxy = Proxy::start(listener, &Proxy::args(&idp.issuer, &upstream.url, &["--set-authorization-header"])).await;
    let client = browser();
    login(&client, &proxy.url, "/", "alice", "alice-password").await;
    let auth = client.get(format!("{}/oauth2/auth", proxy.url)).send().await.unwrap();
    let token = auth.headers()["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    Issued { idp, token, _proxy: proxy }
}

async fn call(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = browser().get(url).header("accept", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn bearer_tokens_from_the_login_provider_and_extra_issuers() {
    let upstream = Upstream::start().await;
    let main = issue_token(&upstream).await;
    let other = issue_token(&upstream).await; // another issuer, audience sidekey-test

    let listener = Proxy::bind().await;
    let extra = format!("--extra-jwt-issuers={}=sidekey-test", other.idp.issuer);
    let api = Proxy::start(
        listener,
        &Proxy::args(
            &main.idp.issuer,
            &upstream.url,
            &["--skip-jwt-bearer-tokens", &extra, "--pass-basic-auth=false"],
        ),
    )
    .await;
    let p = &api.url;

    for token in [&main.token, &other.token] {
        let resp = call(&format!("{p}/api/orders"), Some(token)).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("set-cookie").is_none(), "no session for bearer clients");
        let view: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(view["headers"]["x-forwarded-email"][0], "alice@example.com");
        assert_eq!(
            view["headers"]["authorization"][0],
            format!("Bearer {token}"),
            "the API still gets its token"
        );
        assert_eq!(call(&format!("{p}/oauth2/auth"), Some(token)).await.status(), 202);
    }

    // Forged, tampered, unknown-issuer and expired tokens are refused with 401.
    let mut parts: Vec<String> = main.token.split('.').map(str::to_string).collect();
    let payload = String::from_utf8(base64_url_decode(&parts[1]))
        .unwrap()
        .replace("alice@example.com", "admin@example.com");
    parts[1] = base64_url_encode(payload.as_bytes());
    let tampered = parts.join(".");
    let none_alg = format!("{}.{}.", base64_url_encode(br#"{"alg":"none"}"#), parts[1]);
    for bad in [tampered.as_str(), none_alg.as_str(), "a.b.c"] {
        let resp = call(&format!("{p}/api/orders"), Some(bad)).await;
        assert_eq!(resp.status(), 401, "{bad}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    }
    api.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(call(&format!("{p}/api/orders"), Some(&main.token)).await.status(), 401, "expired");

    // Without a bearer token, the usual rules apply (a JSON client gets 401, no redirect).
    assert_eq!(call(&format!("{p}/api/orders"), None).await.status(), 401);
}

#[tokio::test]
async fn an_extra_issuer_token_must_carry_its_audience() {
    let upstream = Upstream::start().await;
    let main = issue_token(&upstream).await;
    let other = issue_token(&upstream).await;
    let listener = Proxy::bind().await;
    let extra = format!("--extra-jwt-issuers={}=api://orders", other.idp.issuer);
    let api = Proxy::start(
        listener,
        &Proxy::args(&main.idp.issuer, &upstream.url, &["--skip-jwt-bearer-tokens", &extra]),
    )
    .await;
    let resp = call(&format!("{}/api/orders", api.url), Some(&other.token)).await;
    assert_eq!(resp.status(), 401, "audience sidekey-test is not api://orders");
    // Bearer tokens are off by default: the same token is just not a session.
    let listener = Proxy::bind().await;
    let plain = Proxy::start(listener, &Proxy::args(&main.idp.issuer, &upstream.url, &[])).await;
    let resp = call(&format!("{}/api/orders", plain.url), Some(&main.token)).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("www-authenticate").is_none());
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn base64_url_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
