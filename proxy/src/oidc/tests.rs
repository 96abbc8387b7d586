use super::*;

#[test]
fn identity_debug_keeps_the_tokens_out() {
    let id = Identity {
        email: "a@example.com".into(),
        access_token: Some("at-secret".into()),
        id_token: Some("idt-secret".into()),
        refresh_token: Some("rt-secret".into()),
        ..Default::default()
    };
    let text = format!("{id:?}");
    assert!(text.contains("a@example.com") && !text.contains("secret"), "{text}");
}
use crate::client_auth::ClientAuth;
use openidconnect::core::{CoreJsonWebKeySet, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};

const ISSUER: &str = "https://idp.example.com";
const KEY: &str = include_str!("../../testdata/rsa-test-key.pem");

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn mk_key(kid: &str) -> CoreRsaPrivateSigningKey {
    CoreRsaPrivateSigningKey::from_pem(KEY, Some(JsonWebKeyId::new(kid.into()))).unwrap()
}

fn mk_oidc(extra_audiences: &[&str]) -> Oidc {
    let cfg = ProviderConfig {
        display_name: "t".into(),
        issuer_url: url::Url::parse(ISSUER).unwrap(),
        skip_discovery: false,
        login_url: None,
        redeem_url: None,
        jwks_url: None,
        client_id: "app".into(),
        client_auth: ClientAuth::None,
        entra: None,
        scope: "openid".into(),
        prompt: None,
        approval_prompt: None,
        acr_values: None,
        pkce: true,
        email_claim: "email".into(),
        groups_claim: "groups".into(),
        user_id_claim: "email".into(),
        extra_audiences: extra_audiences.iter().map(|s| s.to_string()).collect(),
        allow_unverified_email: false,
        ca_files: vec![],
    };
    let http = HttpClient::new(&[], Duration::from_secs(1)).unwrap();
    Oidc::new(cfg, http, system_clock())
}

fn mk_discovered(kid: &str) -> Discovered {
    let jwks = CoreJsonWebKeySet::new(vec![mk_key(kid).as_verification_key()]);
    let metadata = Metadata::new(
        IssuerUrl::new(ISSUER.into()).unwrap(),
        AuthUrl::new(format!("{ISSUER}/auth")).unwrap(),
        JsonWebKeySetUrl::new(format!("{ISSUER}/jwks")).unwrap(),
        vec![ResponseTypes::new(vec![CoreResponseType::Code])],
        vec![CoreSubjectIdentifierType::Public],
        vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
        ExtraMetadata::default(),
    )
    .set_jwks(jwks);
    Discovered {
        metadata,
        jwks_fetched: SystemTime::now(),
    }
}

fn now() -> i64 {
    unix(SystemTime::now()) as i64
}

fn claims(overrides: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "iss": ISSUER, "sub": "u1", "aud": "app", "exp": now() + 300, "iat": now(), "nonce": "n1",
        "email": "a@example.com", "email_verified": true, "groups": ["g1", 7], "preferred_username": "alice",
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(header: serde_json::Value, claims: &serde_json::Value, kid: &str) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = mk_key(kid)
        .sign(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, input.as_bytes())
        .unwrap();
    format!("{input}.{}", b64(&sig))
}

fn rs256(claims: &serde_json::Value) -> String {
    sign(serde_json::json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}), claims, "k1")
}

fn verify(o: &Oidc, token: &str) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
    o.verify_with(&mk_discovered("k1"), token, Some("n1"))
}

#[test]
fn a_good_token_verifies_and_maps_to_an_identity() {
    let o = mk_oidc(&[]);
    let c = verify(&o, &rs256(&claims(serde_json::json!({})))).unwrap();
    let id = o.identity_from_claims(&c).unwrap();
    assert_eq!(id.email, "a@example.com");
    assert_eq!(id.user, "a@example.com");
    assert_eq!(id.groups, vec!["g1", "7"]);
    // No email claim: the user falls back to sub (Entra tokens often lack email).
    let c = verify(&o, &rs256(&claims(serde_json::json!({"email": null})))).unwrap();
    assert_eq!(o.identity_from_claims(&c).unwrap().user, "u1");
}

#[test]
fn bad_tokens_are_refused() {
    let o = mk_oidc(&[]);
    let cases = [
        (
            "wrong issuer",
            rs256(&claims(serde_json::json!({"iss": "https://evil.example.com"}))),
        ),
        ("wrong audience", rs256(&claims(serde_json::json!({"aud": "other-app"})))),
        (
            "extra untrusted audience",
            rs256(&claims(serde_json::json!({"aud": ["app", "other-app"]}))),
        ),
        ("untrusted azp", rs256(&claims(serde_json::json!({"azp": "other-app"})))),
        ("expired beyond the skew", rs256(&claims(serde_json::json!({"exp": now() - 60})))),
        ("not yet valid", rs256(&claims(serde_json::json!({"nbf": now() + 120})))),
        ("issued in the future", rs256(&claims(serde_json::json!({"iat": now() + 120})))),
        ("wrong nonce", rs256(&claims(serde_json::json!({"nonce": "n2"})))),
        ("missing nonce", rs256(&claims(serde_json::json!({"nonce": null})))),
        (
            "unknown kid",
            sign(
                serde_json::json!({"alg": "RS256", "kid": "k2"}),
                &claims(serde_json::json!({})),
                "k2",
            ),
        ),
    ];
    for (what, token) in cases {
        assert!(
            matches!(verify(&o, &token), Err(OidcError::InvalidIdToken(_) | OidcError::UnknownSigningKey)),
            "{what} accepted"
        );
    }
    // Flipped signature byte.
    let mut t = rs256(&claims(serde_json::json!({}))).into_bytes();
    let last = t.len() - 3;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    assert!(verify(&o, &String::from_utf8(t).unwrap()).is_err());
}

#[test]
fn alg_none_and_hs256_with_the_public_key_are_refused() {
    let o = mk_oidc(&[]);
    let c = claims(serde_json::json!({}));
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(c.to_string().as_bytes()));
    assert!(verify(&o, &none).is_err(), "alg none");
    // HS256 keyed with the RSA public key bytes: the classic algorithm-confusion attack.
    use hmac::Mac;
    let input = format!("{}.{}", b64(br#"{"alg":"HS256","kid":"k1"}"#), b64(c.to_string().as_bytes()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let forged = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
    assert!(verify(&o, &forged).is_err(), "HS256 confusion");
    assert!(verify(&o, "not.a.jwt").is_err());
    assert!(verify(&o, "").is_err());
}

#[test]
fn extra_audiences_and_skew() {
    let o = mk_oidc(&["api://shared"]);
    assert!(verify(&o, &rs256(&claims(serde_json::json!({"aud": ["app", "api://shared"]})))).is_ok());
    assert!(verify(&o, &rs256(&claims(serde_json::json!({"aud": "api://shared"})))).is_ok());
    assert!(verify(&o, &rs256(&claims(serde_json::json!({"azp": "api://shared"})))).is_ok());
    // Expired 10 s ago: within the 30 s clock skew.
    assert!(verify(&o, &rs256(&claims(serde_json::json!({"exp": now() - 10})))).is_ok());
    // Issued by a clock 10 s ahead of ours: within the skew too.
    assert!(verify(&o, &rs256(&claims(serde_json::json!({"iat": now() + 10, "nbf": now() + 10})))).is_ok());
}

#[test]
fn unverified_email_is_refused_unless_allowed() {
    let o = mk_oidc(&[]);
    let c = verify(&o, &rs256(&claims(serde_json::json!({"email_verified": false})))).unwrap();
    assert!(matches!(o.identity_from_claims(&c), Err(OidcError::UnverifiedEmail)));
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_once() {
    // A JWKS endpoint that now serves the rotated key k2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetches.clone();
    let body = serde_json::to_string(&CoreJsonWebKeySet::new(vec![mk_key("k2").as_verification_key()])).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let o = mk_oidc(&[]);
    let mut d = mk_discovered("k1");
    d.metadata = d
        .metadata
        .set_jwks_uri(JsonWebKeySetUrl::new(format!("http://{addr}/jwks")).unwrap());
    d.jwks_fetched = SystemTime::now() - Duration::from_secs(60);
    let d = Arc::new(d);
    *o.current.write().unwrap() = Some(d.clone());
    let rotated = sign(
        serde_json::json!({"alg": "RS256", "kid": "k2"}),
        &claims(serde_json::json!({})),
        "k2",
    );
    assert!(
        o.verify_id_token(&d, &rotated, Some("n1")).await.is_ok(),
        "the rotated key is fetched and accepted"
    );
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The old key is gone from the new set; a forged kid does not refetch again within 10 s.
    let fresh = o.current().unwrap();
    assert!(
        o.verify_id_token(&fresh, &rs256(&claims(serde_json::json!({}))), Some("n1"))
            .await
            .is_err()
    );
    let forged = sign(
        serde_json::json!({"alg": "RS256", "kid": "k9"}),
        &claims(serde_json::json!({})),
        "k9",
    );
    assert!(o.verify_id_token(&fresh, &forged, Some("n1")).await.is_err());
    assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1, "rate-limited");
}

#[test]
fn claim_names_are_configurable() {
    let mut o = mk_oidc(&[]);
    o.cfg.email_claim = "mail".into();
    o.cfg.groups_claim = "roles".into();
    o.cfg.user_id_claim = "oid".into();
    let c = verify(
        &o,
        &rs256(&claims(
            serde_json::json!({"mail": "m@example.com", "roles": "admin", "oid": "0000-1"}),
        )),
    )
    .unwrap();
    let id = o.identity_from_claims(&c).unwrap();
    assert_eq!(
        (id.email.as_str(), id.groups, id.user.as_str()),
        ("m@example.com", vec!["admin".to_string()], "0000-1")
    );
}

#[test]
fn response_issuer_is_checked() {
    let o = mk_oidc(&[]);
    let mut d = mk_discovered("k1");
    assert!(o.check_response_issuer(&d, Some(ISSUER)).is_ok());
    assert!(o.check_response_issuer(&d, None).is_ok());
    assert!(o.check_response_issuer(&d, Some("https://evil.example.com")).is_err());
    d.metadata.additional_metadata_mut().authorization_response_iss_parameter_supported = true;
    assert!(o.check_response_issuer(&d, None).is_err(), "RFC 9207: required when advertised");
}
