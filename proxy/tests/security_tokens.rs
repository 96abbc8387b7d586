//! Forged and misused tokens, end to end: a scripted provider hands the proxy hostile ID
//! tokens at login (and the same tokens arrive as bearer tokens); none may make a session or
//! reach the upstream, and none may cost a 500. Also the provider-side faults the login path
//! must survive: a rotated JWKS, a provider that drops connections or hangs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

async fn proxy_for(idp: &ScriptedIdp, extra: &[&str]) -> (Proxy, Upstream) {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(Proxy::bind().await, &Proxy::args(&idp.issuer, &upstream.url, extra)).await;
    let client = browser();
    eventually("/ready", Duration::from_secs(10), || async {
        client.get(format!("{}/ready", proxy.url)).send().await.unwrap().status() == 200
    })
    .await;
    (proxy, upstream)
}

/// A login through the scripted provider (which signs the user in at once); the proxy's
/// answer to the callback.
async fn scripted_login(client: &reqwest::Client, proxy: &str) -> reqwest::Response {
    let start = client.get(format!("{proxy}/oauth2/start?rd=%2Fapp")).send().await.unwrap();
    assert_eq!(start.status(), 302, "start redirects to the provider");
    let authorize = client.get(location(&start)).send().await.unwrap();
    assert_eq!(authorize.status(), 302, "the provider redirects back");
    client.get(location(&authorize)).send().await.unwrap()
}

async fn signed_in(client: &reqwest::Client, proxy: &str) -> bool {
    let resp = client
        .get(format!("{proxy}/app"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    resp.status() == 200
}

fn hs256(header: &serde_json::Value, claims: &serde_json::Value, key: &[u8]) -> String {
    use hmac::Mac;
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

fn rs256_kid(n: u8) -> serde_json::Value {
    serde_json::json!({"alg": "RS256", "kid": format!("key-{n}"), "typ": "JWT"})
}

/// Each hostile way to answer a token request, by name: from the claims a correct provider
/// would sign, the token sent instead.
fn forgeries() -> Vec<(&'static str, Mint)> {
    use openidconnect::PrivateSigningKey;
    let public_jwk = serde_json::to_string(&signing_key(1).as_verification_key()).unwrap();
    let modulus = serde_json::from_str::<serde_json::Value>(&public_jwk).unwrap()["n"]
        .as_str()
        .unwrap()
        .to_string();
    let with = |patch: serde_json::Value| -> Mint {
        Arc::new(move |mut c: serde_json::Value| {
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            sign_jwt(&rs256_kid(1), &c, 1)
        })
    };
    let now = now_secs() as i64;
    vec![
        (
            "alg none",
            Arc::new(|c: serde_json::Value| format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(c.to_string().as_bytes()))),
        ),
        (
            "HS256 keyed with the public JWK",
            Arc::new(move |c| hs256(&serde_json::json!({"alg": "HS256", "kid": "key-1"}), &c, public_jwk.as_bytes())),
        ),
        (
            "HS256 keyed with the public modulus",
            Arc::new(move |c| hs256(&serde_json::json!({"alg": "HS256", "kid": "key-1"}), &c, modulus.as_bytes())),
        ),
        ("unknown kid (an unpublished key)", Arc::new(|c| sign_jwt(&rs256_kid(2), &c, 2))),
        (
            "a published kid, signed by another key",
            Arc::new(|c| sign_jwt(&rs256_kid(1), &c, 2)),
        ),
        (
            "signature stripped",
            Arc::new(|c| {
                let t = sign_jwt(&rs256_kid(1), &c, 1);
                format!("{}.", t.rsplit_once('.').unwrap().0)
            }),
        ),
        (
            "signature bit flipped",
            Arc::new(|c| {
                let mut t = sign_jwt(&rs256_kid(1), &c, 1).into_bytes();
                let i = t.len() - 10;
                t[i] = if t[i] == b'A' { b'B' } else { b'A' };
                String::from_utf8(t).unwrap()
            }),
        ),
        (
            "claims swapped after signing",
            Arc::new(|c: serde_json::Value| {
                let t = sign_jwt(&rs256_kid(1), &c, 1);
                let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
                let mut evil = c.clone();
                evil["email"] = "admin@example.com".into();
                parts[1] = b64url(evil.to_string().as_bytes());
                parts.join(".")
            }),
        ),
        ("not a JWT", Arc::new(|_| "opaque-garbage".to_string())),
        ("wrong iss", with(serde_json::json!({"iss": "https://evil.example.com"}))),
        ("wrong aud", with(serde_json::json!({"aud": "another-app"}))),
        (
            "an untrusted aud beside ours",
            with(serde_json::json!({"aud": [CLIENT_ID, "another-app"]})),
        ),
        ("no aud", with(serde_json::json!({"aud": null}))),
        ("untrusted azp", with(serde_json::json!({"azp": "another-app"}))),
        ("expired", with(serde_json::json!({"exp": now - 300, "iat": now - 3900}))),
        ("not yet valid (nbf)", with(serde_json::json!({"nbf": now + 3600}))),
        (
            "issued in the future (iat)",
            with(serde_json::json!({"iat": now + 3600, "exp": now + 7200})),
        ),
        ("wrong nonce", with(serde_json::json!({"nonce": "someone-elses-nonce"}))),
        ("no nonce", with(serde_json::json!({"nonce": null}))),
        (
            "email with two @",
            with(serde_json::json!({"email": "mallory@evil.com@example.com"})),
        ),
        ("unverified email", with(serde_json::json!({"email_verified": false}))),
    ]
}

#[tokio::test]
async fn forged_id_tokens_never_make_a_session() {
    install_crypto();
    let idp = ScriptedIdp::start().await;
    let (proxy, upstream) = proxy_for(&idp, &[]).await;

    // The harness works: a correct token signs in.
    let good = browser();
    let resp = scripted_login(&good, &proxy.url).await;
    assert_eq!(resp.status(), 302, "a correct ID token signs in");
    assert_eq!(location(&resp), "/app");
    assert!(signed_in(&good, &proxy.url).await);

    for (what, mint) in forgeries() {
        idp.set_mint(mint);
        let client = browser();
        let resp = scripted_login(&client, &proxy.url).await;
        let status = resp.status().as_u16();
        let sets_session = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("_oauth2_proxy=") && !c.to_str().unwrap().starts_with("_oauth2_proxy=;"));
        let body = resp.text().await.unwrap();
        assert_eq!(status, 403, "{what}: refused with a sign-in error page, got {status}: {body}");
        assert!(!sets_session, "{what}: no session cookie");
        assert!(!signed_in(&client, &proxy.url).await, "{what}: not signed in afterwards");
    }

    // Nonce replay: an ID token from a finished login presented at another login.
    let captured: Arc<Mutex<Option<String>>> = Arc::default();
    let keep = captured.clone();
    idp.set_mint(Arc::new(move |c| {
        let t = sign_jwt(&rs256_kid(1), &c, 1);
        keep.lock().unwrap().get_or_insert(t).clone()
    }));
    assert_eq!(scripted_login(&browser(), &proxy.url).await.status(), 302, "first use of the token");
    let replayed = scripted_login(&browser(), &proxy.url).await;
    assert_eq!(replayed.status(), 403, "the same ID token at a second login");

    // Nothing above reached the upstream except the two good sessions' requests.
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(seen, vec!["/app".to_string()], "only the good session reached the app");
}

#[tokio::test]
async fn forged_bearer_tokens_are_refused_like_forged_id_tokens() {
    install_crypto();
    let idp = ScriptedIdp::start().await;
    let (proxy, upstream) = proxy_for(&idp, &["--skip-jwt-bearer-tokens"]).await;
    let call = |token: String| {
        let url = format!("{}/api", proxy.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Bearer tokens carry no nonce; the rest of a login's ID token is the same.
    let claims = || {
        let mut c = idp.good_claims("");
        c.as_object_mut().unwrap().remove("nonce");
        c
    };
    assert_eq!(call(sign_jwt(&rs256_kid(1), &claims(), 1)).await, 200, "a correct token is served");
    for (what, mint) in forgeries() {
        if what.contains("nonce") || what.contains("email") {
            continue; // login-only checks
        }
        let status = call(mint(claims())).await;
        assert!(status == 401 || status == 403, "{what}: got {status}");
    }
    assert_eq!(upstream.seen.lock().unwrap().len(), 1, "only the correct token reached the app");
}

#[tokio::test]
async fn a_rotated_jwks_is_fetched_again_and_the_removed_key_refused() {
    install_crypto();
    let idp = ScriptedIdp::start().await;
    let (proxy, _upstream) = proxy_for(&idp, &[]).await;
    assert_eq!(scripted_login(&browser(), &proxy.url).await.status(), 302);
    let fetched = idp.jwks_fetches();

    // The provider rotates to key 2 and drops key 1. A refetch is rate limited (a forged kid
    // must not make the proxy hammer the provider): within the limit the new kid is refused,
    // once the limit is over (on the proxy's clock) it is fetched.
    idp.publish(&[2]);
    idp.set_mint(ScriptedIdp::signed_by(2));
    assert_eq!(scripted_login(&browser(), &proxy.url).await.status(), 403, "within the limit");
    assert_eq!(idp.jwks_fetches(), fetched, "no refetch within the limit");
    proxy.clock.advance(Duration::from_secs(11));
    assert_eq!(
        scripted_login(&browser(), &proxy.url).await.status(),
        302,
        "the new kid is accepted"
    );
    assert_eq!(idp.jwks_fetches(), fetched + 1, "one refetch for the new kid");

    idp.set_mint(ScriptedIdp::signed_by(1));
    assert_eq!(
        scripted_login(&browser(), &proxy.url).await.status(),
        403,
        "the removed key is refused"
    );
    // A burst of unknown kids right after a refetch costs the provider nothing more.
    idp.set_mint(Arc::new(|c| sign_jwt(&rs256_kid(7), &c, 1)));
    for _ in 0..5 {
        assert_eq!(scripted_login(&browser(), &proxy.url).await.status(), 403);
    }
    assert_eq!(idp.jwks_fetches(), fetched + 1, "unknown kids do not refetch within the limit");
}

#[tokio::test]
async fn provider_down_or_hanging_during_login_gives_a_clear_page_then_recovers() {
    install_crypto();
    let idp = ScriptedIdp::start().await;
    let (proxy, _upstream) = proxy_for(&idp, &[]).await;

    // The provider dies between the redirect and the code exchange.
    let client = browser();
    let start = client.get(format!("{}/oauth2/start", proxy.url)).send().await.unwrap();
    let callback = location(&client.get(location(&start)).send().await.unwrap());
    idp.set_down(true);
    let began = Instant::now();
    let resp = client.get(&callback).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert!(status == 502 || status == 503, "a gateway error, not a 500: {status}");
    assert!(
        body.contains("Sign-in") || body.contains("sign-in") || body.contains("provider"),
        "{body}"
    );
    assert!(began.elapsed() < Duration::from_secs(5), "refused connections fail fast");
    // No redirect loop: the error page is the answer, and pages still load.
    assert!(!body.contains("http-equiv=\"refresh\""));
    idp.set_down(false);
    assert_eq!(scripted_login(&browser(), &proxy.url).await.status(), 302, "recovered");

    // The provider hangs on the code exchange: bounded by the provider timeout.
    idp.set_token_delay(Duration::from_secs(60));
    let client = browser();
    let start = client.get(format!("{}/oauth2/start", proxy.url)).send().await.unwrap();
    let callback = location(&client.get(location(&start)).send().await.unwrap());
    let began = Instant::now();
    let resp = client.get(&callback).send().await.unwrap();
    let took = began.elapsed();
    assert!(
        took >= sidekey_proxy::PROVIDER_TIMEOUT && took < sidekey_proxy::PROVIDER_TIMEOUT + Duration::from_secs(5),
        "bounded by the provider timeout: {took:?}"
    );
    let status = resp.status().as_u16();
    assert!(status == 502 || status == 503 || status == 504, "{status}");
    let id = request_id(&resp);
    let body = resp.text().await.unwrap();
    assert!(body.contains("did not complete the sign-in") && body.contains(&id), "{body}");
    assert!(
        logged(&id).iter().any(|l| l.contains("timed out")),
        "the cause is logged under {id}"
    );
    idp.set_token_delay(Duration::ZERO);
    assert_eq!(scripted_login(&browser(), &proxy.url).await.status(), 302, "recovered");
}

#[tokio::test]
async fn provider_dropping_connections_at_start_keeps_ready_503_until_it_answers() {
    install_crypto();
    let idp = ScriptedIdp::start().await;
    idp.set_down(true);
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(Proxy::bind().await, &Proxy::args(&idp.issuer, &upstream.url, &[])).await;
    let client = browser();
    assert_eq!(client.get(format!("{}/ping", proxy.url)).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.get(format!("{}/ready", proxy.url)).send().await.unwrap().status(), 503);
    let start = client.get(format!("{}/oauth2/start", proxy.url)).send().await.unwrap();
    assert_eq!(start.status(), 503);
    // Protected pages fail closed: never the upstream.
    let page = client
        .get(format!("{}/app", proxy.url))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 401);
    assert!(upstream.seen.lock().unwrap().is_empty());
    idp.set_down(false);
    eventually("/ready to turn 200", Duration::from_secs(60), || async {
        client.get(format!("{}/ready", proxy.url)).send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(scripted_login(&browser(), &proxy.url).await.status(), 302);
}
