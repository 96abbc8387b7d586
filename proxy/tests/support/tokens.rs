//! What the tests mint: a stand-in for a Kubernetes service-account issuer (keys, a JWKS,
//! projected tokens written to files) and TLS certificates from a throwaway CA.

use super::*;

/// A Kubernetes cluster's service-account token issuer, as Entra sees it: an OIDC discovery
/// document and a JWKS on loopback, and RS256 tokens shaped like the kube-apiserver's.
pub struct ClusterIssuer {
    pub issuer: String,
    key: openidconnect::core::CoreRsaPrivateSigningKey,
}

const CLUSTER_KID: &str = "cluster-key-1";

impl ClusterIssuer {
    pub async fn start() -> ClusterIssuer {
        use openidconnect::PrivateSigningKey;
        let pem = std::fs::read_to_string(repo_root().join("proxy/testdata/rsa-test-key.pem")).unwrap();
        let key = openidconnect::core::CoreRsaPrivateSigningKey::from_pem(&pem, Some(openidconnect::JsonWebKeyId::new(CLUSTER_KID.into())))
            .unwrap();
        let jwks = serde_json::json!({ "keys": [key.as_verification_key()] }).to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let discovery = serde_json::json!({
            "issuer": issuer, "jwks_uri": format!("{issuer}/openid/v1/jwks"),
            "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        })
        .to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (jwks, discovery) = (jwks.clone(), discovery.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let body = match req.uri().path() {
                            "/.well-known/openid-configuration" => Some(discovery.clone()),
                            "/openid/v1/jwks" => Some(jwks.clone()),
                            _ => None,
                        };
                        async move {
                            Ok::<_, Infallible>(match body {
                                Some(b) => Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(b)))
                                    .unwrap(),
                                None => Response::builder().status(404).body(Full::new(Bytes::new())).unwrap(),
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        ClusterIssuer { issuer, key }
    }

    /// A projected service-account token for `namespace/sa`, valid from now for `ttl_secs`
    /// (negative: already expired), with audience `aud`.
    pub fn token(&self, namespace: &str, sa: &str, aud: &str, ttl_secs: i64) -> String {
        use base64::Engine;
        use openidconnect::PrivateSigningKey;
        let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let issued = if ttl_secs < 0 { now + ttl_secs - 3600 } else { now };
        let claims = serde_json::json!({
            "aud": [aud], "exp": now + ttl_secs, "iat": issued, "nbf": issued, "iss": self.issuer,
            "jti": format!("{:x}", rand_u64()),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": "0f6b7e43-0000-4000-8000-000000000001"},
                "pod": {"name": format!("{sa}-7d9f8c6b5-x2x7q"), "uid": "0f6b7e43-0000-4000-8000-000000000002"},
                "serviceaccount": {"name": sa, "uid": "0f6b7e43-0000-4000-8000-000000000003"},
            },
            "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        });
        let header = serde_json::json!({"alg": "RS256", "kid": CLUSTER_KID});
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self
            .key
            .sign(
                &openidconnect::core::CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                input.as_bytes(),
            )
            .unwrap();
        format!("{input}.{}", b64(&sig))
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}

/// The `jti` of a JWT, read without verification.
pub fn jti(jwt: &str) -> String {
    sidekey_proxy::jwt::decode_payload(jwt).unwrap()["jti"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A private CA and a certificate for 127.0.0.1 (common name `serial_name`) signed by it (rustls refuses a
/// self-signed CA certificate as a server certificate).
pub fn tls_files(dir: &std::path::Path, serial_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sidekey test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        &format!("/CN={serial_name}"),
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}
