//! A scripted OpenID provider for attack and fault tests: the real provider (oidc-provider)
//! only ever issues well-formed tokens, so tests that need a hostile or failing provider —
//! forged ID tokens, a rotated JWKS, a token endpoint that hangs or drops connections — use
//! this one. It speaks just enough OIDC for the proxy's login: discovery, JWKS, an authorize
//! endpoint that signs the user in at once, and a token endpoint whose ID token the test
//! mints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use openidconnect::PrivateSigningKey;
use openidconnect::core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
use tokio::net::TcpListener;

use super::{CLIENT_ID, now_secs, repo_root};

/// One of the two committed test keys (`1` or `2`), with key id `key-<n>`.
pub fn signing_key(n: u8) -> CoreRsaPrivateSigningKey {
    let file = if n == 1 { "rsa-test-key.pem" } else { "rsa-test-key-2.pem" };
    let pem = std::fs::read_to_string(repo_root().join("proxy/testdata").join(file)).unwrap();
    CoreRsaPrivateSigningKey::from_pem(&pem, Some(openidconnect::JsonWebKeyId::new(format!("key-{n}")))).unwrap()
}

pub fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A JWT with this header and these claims, RS256-signed with test key `n`.
pub fn sign_jwt(header: &serde_json::Value, claims: &serde_json::Value, n: u8) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = signing_key(n)
        .sign(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, input.as_bytes())
        .unwrap();
    format!("{input}.{}", b64url(&sig))
}

/// How the token endpoint answers: given the claims a correct provider would put in the ID
/// token (nonce from the authorize request included), the ID token to send.
pub type Mint = Arc<dyn Fn(serde_json::Value) -> String + Send + Sync>;

struct Script {
    issuer: String,
    /// Key numbers published in the JWKS.
    published: Mutex<Vec<u8>>,
    mint: Mutex<Mint>,
    token_delay: Mutex<Duration>,
    /// Accept and drop every connection, as a crashed provider behind a load balancer.
    down: AtomicBool,
    /// Authorization code → the nonce its authorize request carried.
    codes: Mutex<HashMap<String, String>>,
    next_code: AtomicUsize,
    pub jwks_fetches: AtomicUsize,
    pub token_requests: AtomicUsize,
}

pub struct ScriptedIdp {
    pub issuer: String,
    script: Arc<Script>,
}

impl ScriptedIdp {
    /// A provider publishing key 1 and minting correct ID tokens signed with it.
    pub async fn start() -> ScriptedIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let script = Arc::new(Script {
            issuer: issuer.clone(),
            published: Mutex::new(vec![1]),
            mint: Mutex::new(Self::signed_by(1)),
            token_delay: Mutex::new(Duration::ZERO),
            down: AtomicBool::new(false),
            codes: Mutex::new(HashMap::new()),
            next_code: AtomicUsize::new(1),
            jwks_fetches: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
        });
        let s = script.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if s.down.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move {
                            // Kept-alive connections die with the provider too: an error here
                            // makes hyper close the connection without an answer.
                            if s.down.load(Ordering::SeqCst) {
                                return Err("provider down");
                            }
                            Ok(s.answer(req).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        ScriptedIdp { issuer, script }
    }

    /// Mints correct ID tokens signed with key `n` (kid `key-n`).
    pub fn signed_by(n: u8) -> Mint {
        Arc::new(move |claims| {
            sign_jwt(
                &serde_json::json!({"alg": "RS256", "kid": format!("key-{n}"), "typ": "JWT"}),
                &claims,
                n,
            )
        })
    }

    pub fn set_mint(&self, mint: Mint) {
        *self.script.mint.lock().unwrap() = mint;
    }

    pub fn publish(&self, keys: &[u8]) {
        *self.script.published.lock().unwrap() = keys.to_vec();
    }

    pub fn set_token_delay(&self, d: Duration) {
        *self.script.token_delay.lock().unwrap() = d;
    }

    pub fn set_down(&self, down: bool) {
        self.script.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.script.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The claims a correct provider issues for alice at `now`, for `nonce`.
    pub fn good_claims(&self, nonce: &str) -> serde_json::Value {
        good_claims(&self.issuer, nonce)
    }
}

fn good_claims(issuer: &str, nonce: &str) -> serde_json::Value {
    let now = now_secs();
    serde_json::json!({
        "iss": issuer, "aud": CLIENT_ID, "sub": "alice", "email": "alice@example.com",
        "email_verified": true, "preferred_username": "alice", "groups": ["admins"],
        "iat": now, "exp": now + 3600, "nonce": nonce,
    })
}

fn json(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

impl Script {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        match req.uri().path() {
            "/.well-known/openid-configuration" => json(
                200,
                serde_json::json!({
                    "issuer": self.issuer,
                    "authorization_endpoint": format!("{}/authorize", self.issuer),
                    "token_endpoint": format!("{}/token", self.issuer),
                    "jwks_uri": format!("{}/jwks", self.issuer),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }),
            ),
            "/jwks" => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                let keys: Vec<_> = self
                    .published
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|n| serde_json::to_value(signing_key(*n).as_verification_key()).unwrap())
                    .collect();
                json(200, serde_json::json!({ "keys": keys }))
            }
            "/authorize" => {
                // The user is signed in at once: straight back to the client with a code.
                let code = format!("code-{}", self.next_code.fetch_add(1, Ordering::SeqCst));
                let nonce = query.get("nonce").cloned().unwrap_or_default();
                self.codes.lock().unwrap().insert(code.clone(), nonce);
                let mut back = url::Url::parse(query.get("redirect_uri").map(String::as_str).unwrap_or("http://invalid/")).unwrap();
                back.query_pairs_mut()
                    .append_pair("code", &code)
                    .append_pair("state", query.get("state").map(String::as_str).unwrap_or(""));
                Response::builder()
                    .status(302)
                    .header("location", back.as_str())
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
            "/token" => {
                self.token_requests.fetch_add(1, Ordering::SeqCst);
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
                let delay = *self.token_delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // Codes are single use, as the spec requires of a provider.
                let Some(nonce) = form.get("code").and_then(|c| self.codes.lock().unwrap().remove(c)) else {
                    return json(400, serde_json::json!({"error": "invalid_grant"}));
                };
                let mint = self.mint.lock().unwrap().clone();
                let id_token = mint(good_claims(&self.issuer, &nonce));
                json(
                    200,
                    serde_json::json!({
                        "access_token": "opaque-access-token", "token_type": "Bearer",
                        "expires_in": 3600, "id_token": id_token,
                    }),
                )
            }
            _ => json(404, serde_json::json!({"error": "not_found"})),
        }
    }
}
