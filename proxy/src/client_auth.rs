//! How the proxy proves it is the OAuth client at the token endpoint: a client secret, a JWT
//! assertion someone else issued (a projected Kubernetes service-account token for Entra
//! workload identity federation, re-read at every request because the kubelet rotates it), or
//! an assertion signed with our own key (`private_key_jwt`, RFC 7523).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey};
use openidconnect::{JsonWebKeyId, PrivateSigningKey};
use rand::RngCore;

use crate::secret::Secret;

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of a `private_key_jwt` assertion: one request, with room for clock skew.
const OWN_ASSERTION_LIFETIME: u64 = 300;

#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// A public client: PKCE only.
    None,
    Secret(Secret<String>),
    /// Read at every token request, so a rotated file needs no restart.
    SecretFile(PathBuf),
    /// A JWT issued by someone else, read at every token request. `option` names where the
    /// path came from, for error messages.
    AssertionFile {
        path: PathBuf,
        option: &'static str,
    },
    PrivateKeyJwt(std::sync::Arc<JwtSigner>),
}

/// What goes into one token request.
pub enum Credential {
    None,
    Secret(Secret<String>),
    Assertion(Secret<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("cannot read {} (from {option}): {source}; likely cause: {}", path.display(), unreadable_cause(source))]
    Unreadable {
        path: PathBuf,
        option: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{} (from {option}) is empty; likely cause: the token has not been projected yet, or the file is not the projected service-account token",
        path.display()
    )]
    Empty { path: PathBuf, option: &'static str },
}

fn unreadable_cause(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "the projected service-account token volume is not mounted (set workloadIdentity in the AuthPolicy, or label the pod azure.workload.identity/use: \"true\" for the Azure webhook), or the path is wrong"
        }
        std::io::ErrorKind::PermissionDenied => {
            "the proxy's user cannot read it; check the projected volume's defaultMode and the pod's fsGroup"
        }
        _ => "the volume is not readable",
    }
}

impl ClientAuth {
    /// The credential for one request to `token_url`. Files are read now, never cached.
    pub fn credential(&self, client_id: &str, token_url: &str, now: u64) -> Result<Credential, ClientAuthError> {
        Ok(match self {
            ClientAuth::None => Credential::None,
            ClientAuth::Secret(s) => Credential::Secret(s.clone()),
            ClientAuth::SecretFile(path) => Credential::Secret(Secret::new(read_trimmed(path, "client_secret_file")?)),
            ClientAuth::AssertionFile { path, option } => Credential::Assertion(Secret::new(read_trimmed(path, option)?)),
            ClientAuth::PrivateKeyJwt(signer) => Credential::Assertion(Secret::new(signer.sign(client_id, token_url, now))),
        })
    }

    /// Whether a credential can be produced at all; `/ready` reports this.
    pub fn check(&self) -> Result<(), ClientAuthError> {
        match self {
            ClientAuth::AssertionFile { path, option } => read_trimmed(path, option).map(drop),
            _ => Ok(()),
        }
    }

    /// For start-up logs; never the credential itself.
    pub fn describe(&self) -> String {
        match self {
            ClientAuth::None => "none (public client with PKCE)".into(),
            ClientAuth::Secret(_) => "client secret".into(),
            ClientAuth::SecretFile(p) => format!("client secret file {}", p.display()),
            ClientAuth::AssertionFile { path, option } => format!("JWT assertion from {} ({option})", path.display()),
            ClientAuth::PrivateKeyJwt(_) => "private_key_jwt".into(),
        }
    }
}

fn read_trimmed(path: &Path, option: &'static str) -> Result<String, ClientAuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientAuthError::Unreadable {
        path: path.to_path_buf(),
        option,
        source,
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ClientAuthError::Empty {
            path: path.to_path_buf(),
            option,
        });
    }
    Ok(text.to_string())
}

/// Signs `private_key_jwt` assertions with an RSA key.
pub struct JwtSigner {
    key: CoreRsaPrivateSigningKey,
    kid: Option<String>,
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl JwtSigner {
    pub fn from_pem(pem: &str, kid: Option<String>) -> Result<Self, String> {
        let key = CoreRsaPrivateSigningKey::from_pem(pem, kid.clone().map(JsonWebKeyId::new))?;
        Ok(JwtSigner { key, kid })
    }

    /// RFC 7523 §3: iss = sub = client_id, aud = the token endpoint, a unique jti, short exp.
    pub fn sign(&self, client_id: &str, token_url: &str, now: u64) -> String {
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = kid.clone().into();
        }
        let mut jti = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut jti);
        let claims = serde_json::json!({
            "iss": client_id, "sub": client_id, "aud": token_url, "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": now, "nbf": now, "exp": now + OWN_ASSERTION_LIFETIME,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, input.as_bytes())
            .expect("RS256 signing with a parsed RSA key cannot fail");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// What an assertion says about itself, read WITHOUT verifying it: only to tell the user what
/// the identity provider must be configured to trust.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: Option<u64>,
}

pub fn inspect(jwt: &str) -> Option<AssertionClaims> {
    let claims = crate::jwt::decode_payload(jwt)?;
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let aud = match claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        _ => vec![],
    };
    Some(AssertionClaims {
        iss: text("iss"),
        sub: text("sub"),
        aud,
        exp: claims.get("exp").and_then(|v| v.as_u64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../testdata/rsa-test-key.pem");

    #[test]
    fn assertion_files_are_read_fresh_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let auth = ClientAuth::AssertionFile {
            path: path.clone(),
            option: "AZURE_FEDERATED_TOKEN_FILE",
        };
        let err = auth.check().unwrap_err().to_string();
        assert!(
            err.contains("token (from AZURE_FEDERATED_TOKEN_FILE)") && err.contains("not mounted"),
            "{err}"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(auth.check().unwrap_err().to_string().contains("is empty"));
        std::fs::write(&path, "first\n").unwrap();
        let read = |a: &ClientAuth| match a.credential("c", "https://t", 0).unwrap() {
            Credential::Assertion(s) => s.expose().clone(),
            _ => panic!("an assertion"),
        };
        assert_eq!(read(&auth), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(read(&auth), "second", "rotation is picked up without a restart");
    }

    #[test]
    fn private_key_jwt_follows_rfc7523() {
        let signer = JwtSigner::from_pem(KEY, Some("k1".into())).unwrap();
        let jwt = signer.sign("client-1", "https://idp.example.com/token", 1000);
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}));
        let c = inspect(&jwt).unwrap();
        assert_eq!((c.iss.as_str(), c.sub.as_str()), ("client-1", "client-1"));
        assert_eq!(c.aud, vec!["https://idp.example.com/token"]);
        assert_eq!(c.exp, Some(1300));
        assert_ne!(jwt, signer.sign("client-1", "https://idp.example.com/token", 1000), "unique jti");
        assert!(JwtSigner::from_pem("not a key", None).is_err());
    }

    #[test]
    fn inspect_never_panics_on_garbage() {
        for s in ["", ".", "a.b.c", "a.!!!.c", "a.bnVsbA.c"] {
            assert!(inspect(s).is_none(), "{s}");
        }
    }
}
