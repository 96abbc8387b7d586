//! What the relying party accepts from the provider: the issuer of an authorization
//! response (RFC 9207), and ID tokens (signature by the JWKS, refetched once for an unknown
//! key id; issuer, tenant-aware for Entra ID; audience; expiry and issue time within the
//! clock skew; nonce), turned into an [`Identity`].

use super::*;

impl Oidc {
    /// RFC 9207: an `iss` in the authorization response must be our issuer, and must be
    /// present when the provider says it sends one (mix-up attacks).
    pub fn check_response_issuer(&self, d: &Discovered, iss: Option<&str>) -> Result<(), OidcError> {
        let expected = d.metadata.issuer().as_str();
        if let (Some(e), Some(got)) = (&self.cfg.entra, iss) {
            return e.check_response_issuer(got).map_err(OidcError::Tenant);
        }
        match iss {
            Some(got) if got != expected => Err(OidcError::IssuerMismatch {
                got: got.to_string(),
                expected: expected.to_string(),
            }),
            None if d.metadata.additional_metadata().authorization_response_iss_parameter_supported => Err(OidcError::IssuerMismatch {
                got: "(none)".into(),
                expected: expected.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether unverified claims name this provider as their issuer (to pick a verifier).
    pub fn issuer_matches(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str());
        let iss = text("iss").unwrap_or("");
        match &self.cfg.entra {
            Some(e) => e.check_token_issuer(iss, text("tid")).is_ok(),
            None => iss.trim_end_matches('/') == self.cfg.issuer_url.as_str().trim_end_matches('/'),
        }
    }

    /// Verifies an ID token and returns its claims as JSON.
    pub async fn verify_id_token(
        &self,
        d: &Arc<Discovered>,
        raw: &str,
        nonce: Option<&str>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
        match self.verify_with(d, raw, nonce) {
            Err(OidcError::UnknownSigningKey) => match self.refetch_jwks(d).await {
                Some(fresh) => self.verify_with(&fresh, raw, nonce),
                None => Err(OidcError::UnknownSigningKey),
            },
            other => other,
        }
    }

    pub(super) fn verify_with(
        &self,
        d: &Discovered,
        raw: &str,
        nonce: Option<&str>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, OidcError> {
        let token: openidconnect::core::CoreIdToken = raw
            .parse()
            .map_err(|e: serde_json::Error| OidcError::InvalidIdToken(e.to_string()))?;
        let clock = self.clock.clone();
        let skew = chrono::Duration::from_std(CLOCK_SKEW).expect("small duration");
        let client = CoreClient::from_provider_metadata(d.metadata.clone(), ClientId::new(self.cfg.client_id.clone()), None);
        // Asymmetric algorithms only: HS* would make the (public) client id or secret a
        // verification key, the classic algorithm-confusion hole.
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs([
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
                CoreJwsSigningAlgorithm::RsaSsaPssSha256,
                CoreJwsSigningAlgorithm::RsaSsaPssSha384,
                CoreJwsSigningAlgorithm::RsaSsaPssSha512,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256,
                CoreJwsSigningAlgorithm::EcdsaP384Sha384,
                CoreJwsSigningAlgorithm::EdDsa,
            ])
            .require_audience_match(false)
            .require_issuer_match(self.cfg.entra.is_none())
            .set_time_fn(move || chrono::DateTime::<chrono::Utc>::from(clock()) - skew);
        let expected_nonce = nonce.map(|n| Nonce::new(n.to_string()));
        let result = match &expected_nonce {
            Some(n) => token.claims(&verifier, n).map(|_| ()),
            None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())).map(|_| ()),
        };
        result.map_err(|e| match e {
            ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey) => OidcError::UnknownSigningKey,
            other => OidcError::InvalidIdToken(other.to_string()),
        })?;
        let claims = crate::jwt::decode_payload(raw).ok_or_else(|| OidcError::InvalidIdToken("payload is not a JSON object".into()))?;
        // openidconnect checks `exp` only; a token from the future is as wrong as an expired one.
        let latest = unix((self.clock)() + CLOCK_SKEW);
        for claim in ["nbf", "iat"] {
            if let Some(t) = claims.get(claim).and_then(|v| v.as_f64())
                && t > latest as f64
            {
                return Err(OidcError::InvalidIdToken(format!(
                    "token is not yet valid ({claim} is in the future)"
                )));
            }
        }
        if let Some(e) = &self.cfg.entra {
            let text = |k: &str| claims.get(k).and_then(|v| v.as_str());
            e.check_token_issuer(text("iss").unwrap_or(""), text("tid"))
                .map_err(OidcError::InvalidIdToken)?;
        }
        self.check_audience(&claims)?;
        Ok(claims)
    }

    /// `aud` must name us (client_id or an extra audience) and nothing we do not trust;
    /// `azp`, when present, must be one of those too.
    pub(super) fn check_audience(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<(), OidcError> {
        let trusted = |a: &str| a == self.cfg.client_id || self.cfg.extra_audiences.iter().any(|e| e == a);
        let auds: Vec<&str> = match claims.get("aud") {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
            _ => vec![],
        };
        if auds.is_empty() || !auds.iter().all(|a| trusted(a)) {
            return Err(OidcError::InvalidIdToken(format!(
                "audience {auds:?} is not {} or an oidc_extra_audiences entry",
                self.cfg.client_id
            )));
        }
        if let Some(azp) = claims.get("azp").and_then(|v| v.as_str())
            && !trusted(azp)
        {
            return Err(OidcError::InvalidIdToken(format!("authorized party {azp} is not trusted")));
        }
        Ok(())
    }

    pub fn identity_from_claims(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<Identity, OidcError> {
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let email = text(&self.cfg.email_claim);
        if !email.is_empty() && !self.cfg.allow_unverified_email && claims.get("email_verified").and_then(|v| v.as_bool()) == Some(false) {
            return Err(OidcError::UnverifiedEmail);
        }
        let mut user = text(&self.cfg.user_id_claim);
        if user.is_empty() {
            user = text("sub");
        }
        let groups = match claims.get(&self.cfg.groups_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|v| match v {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        Ok(Identity {
            user,
            email,
            preferred_username: text("preferred_username"),
            groups,
            groups_from_graph: self.cfg.entra.is_some() && entra::has_groups_overage(claims),
            ..Identity::default()
        })
    }
}
