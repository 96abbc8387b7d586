//! Bearer JWTs for API clients (`skip_jwt_bearer_tokens`): a request with
//! `Authorization: Bearer <jwt>` signed by the login provider (audience `client_id` or
//! `oidc_extra_audiences`) or by an `extra_jwt_issuers` issuer (with its audience) is served
//! without a session. The token is verified like an ID token — signature against the
//! issuer's JWKS (asymmetric algorithms only), `iss`, `aud`/`azp`, `exp` — and no cookie is
//! ever set for it.

use crate::secret::Secret;
use std::sync::Arc;

use http::{HeaderMap, header};

use crate::jwt::decode_payload;
use crate::oidc::{Oidc, OidcError};
use crate::session::Session;

pub struct BearerVerifier {
    /// The login provider first, then one relying party per extra issuer.
    issuers: Vec<Arc<Oidc>>,
}

/// The compact JWS in `Authorization: Bearer`, if that is what the request carries.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && token.split('.').count() == 3 && token.len() <= 16 * 1024).then(|| token.to_string())
}

impl BearerVerifier {
    pub fn new(issuers: Vec<Arc<Oidc>>) -> Self {
        BearerVerifier { issuers }
    }

    /// The identity the token proves, as a session that lives until the token expires.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Session, OidcError> {
        let claims = decode_payload(token).ok_or_else(|| OidcError::InvalidIdToken("the bearer token is not a JWT".into()))?;
        let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
        // Pick the verifier by issuer: trying every issuer would turn one forged token into
        // a JWKS fetch per issuer.
        let oidc = self
            .issuers
            .iter()
            .find(|o| o.issuer_matches(&claims))
            .ok_or_else(|| OidcError::InvalidIdToken(format!("issuer {iss} is not trusted for bearer tokens")))?;
        let discovered = oidc.ensure().await?;
        let verified = oidc.verify_id_token(&discovered, token, None).await?;
        let identity = oidc.identity_from_claims(&verified)?;
        let expires_at = verified.get("exp").and_then(|v| v.as_u64()).unwrap_or(now);
        Ok(Session {
            user: identity.user,
            email: identity.email,
            preferred_username: identity.preferred_username,
            groups: identity.groups,
            created_at: now,
            expires_at,
            access_token: Some(Secret::new(token.to_string())),
            id_token: Some(Secret::new(token.to_string())),
            refresh_token: None,
            tokens_expire_at: Some(expires_at),
            refreshed_at: now,
            groups_from_graph: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_a_bearer_jws_is_taken() {
        let mut h = HeaderMap::new();
        for (value, expected) in [
            ("Bearer a.b.c", Some("a.b.c")),
            ("bearer  a.b.c ", Some("a.b.c")),
            ("Bearer abc", None),
            ("Basic YTpi", None),
            ("Bearer a.b.c.d.e", None),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_token(&h).as_deref(), expected, "{value}");
        }
    }
}
