//! The OpenID Connect relying party: lazy discovery with background retry, authorization
//! URLs (state, nonce, PKCE S256), token requests (code redemption and refresh, with a client
//! secret or a JWT assertion), and ID-token verification (signature via JWKS with a refetch on
//! an unknown `kid`, issuer — tenant-aware for Entra ID —, audience, expiry with a small skew,
//! nonce). Entra groups overage is resolved through Microsoft Graph here too.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod, CoreGrantType, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthUrl, ClaimsVerificationError, ClientId, IssuerUrl, JsonWebKeySetUrl, Nonce, ProviderMetadata,
    ResponseTypes, SignatureVerificationError, TokenUrl,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::client_auth::{self, ClientAuthError, Credential};
use crate::config::ProviderConfig;
use crate::entra;
use crate::http_client::{HttpClient, error_chain};
use crate::secret::Secret;

/// Clock skew tolerated on `exp`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// An unknown `kid` triggers a JWKS refetch at most this often (a forged token must not
/// turn the proxy into a JWKS-fetching amplifier).
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// The injected clock: tests move it, production reads the system time.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Discovery fields beyond OIDC Core that we use.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ExtraMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_session_endpoint: Option<String>,
    /// RFC 9207: the provider sends `iss` in authorization responses.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

pub type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The signed-in user as the provider describes them.
#[derive(Clone, Default)]
pub struct Identity {
    pub user: String,
    pub email: String,
    pub preferred_username: String,
    pub groups: Vec<String>,
    pub access_token: Option<Secret<String>>,
    pub id_token: Option<Secret<String>>,
    pub refresh_token: Option<Secret<String>>,
    pub tokens_expire_at: Option<u64>,
    pub groups_from_graph: bool,
}

/// The tokens never print.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |t: &Option<Secret<String>>| t.as_ref().map(|_| "[redacted]");
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("email", &self.email)
            .field("preferred_username", &self.preferred_username)
            .field("groups", &self.groups)
            .field("access_token", &redact(&self.access_token))
            .field("id_token", &redact(&self.id_token))
            .field("refresh_token", &redact(&self.refresh_token))
            .field("tokens_expire_at", &self.tokens_expire_at)
            .field("groups_from_graph", &self.groups_from_graph)
            .finish()
    }
}

/// A token endpoint response (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
}

/// A token endpoint error (RFC 6749 §5.2), plus Entra's `error_codes`.
#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// The result of a refresh: new tokens, the claims of a new ID token when one came back, and
/// the groups Graph reported when the session's groups come from there.
pub struct Refreshed {
    pub identity: Option<Identity>,
    pub graph_groups: Option<Vec<String>>,
    pub access_token: String,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub tokens_expire_at: Option<u64>,
}

pub struct Discovered {
    pub metadata: Metadata,
    /// By the injected clock, which the refetch limit is measured on.
    pub jwks_fetched: SystemTime,
}

pub struct Oidc {
    cfg: ProviderConfig,
    http: HttpClient,
    clock: Clock,
    current: RwLock<Option<Arc<Discovered>>>,
    /// Single flight for discovery and JWKS refetches.
    refresh: Mutex<()>,
}

impl Oidc {
    pub fn new(cfg: ProviderConfig, http: HttpClient, clock: Clock) -> Self {
        Oidc {
            cfg,
            http,
            clock,
            current: RwLock::new(None),
            refresh: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    /// The discovered provider, if discovery has succeeded.
    pub fn current(&self) -> Option<Arc<Discovered>> {
        self.current.read().expect("lock poisoned").clone()
    }

    /// The discovered provider, discovering now if needed.
    pub async fn ensure(&self) -> Result<Arc<Discovered>, OidcError> {
        if let Some(d) = self.current() {
            return Ok(d);
        }
        let _guard = self.refresh.lock().await;
        if let Some(d) = self.current() {
            return Ok(d);
        }
        let started = Instant::now();
        let metadata = self.discover().await;
        crate::metrics::idp("discovery", started.elapsed());
        let metadata = metadata?;
        let d = Arc::new(Discovered {
            metadata,
            jwks_fetched: (self.clock)(),
        });
        *self.current.write().expect("lock poisoned") = Some(d.clone());
        Ok(d)
    }

    /// Retries discovery in the background until it succeeds, so `/ready` turns 200 as soon
    /// as the provider answers, while the process serves `/ping` from the first moment.
    pub async fn discover_until_ready(self: Arc<Self>) {
        let mut delay = Duration::from_millis(250);
        loop {
            match self.ensure().await {
                Ok(d) => {
                    tracing::info!(issuer = %d.metadata.issuer().as_str(), "OIDC discovery complete");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "OIDC discovery failed; /ready stays 503 until it succeeds");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn discover(&self) -> Result<Metadata, OidcError> {
        let client = self.http.as_oauth2();
        fn unavailable(e: &(dyn std::error::Error + 'static)) -> OidcError {
            OidcError::Unavailable(Unavailable::Unreachable(error_chain(e)))
        }
        let configured = self.cfg.issuer_url.as_str().trim_end_matches('/').to_string();
        let issuer = IssuerUrl::new(configured.clone()).map_err(|e| OidcError::Unavailable(Unavailable::Unreachable(e.to_string())))?;
        if !self.cfg.skip_discovery {
            let url = format!("{configured}/.well-known/openid-configuration");
            let request = http::Request::get(&url)
                .header(http::header::ACCEPT, "application/json")
                .body(Vec::new())
                .map_err(|e| OidcError::Unavailable(Unavailable::Unreachable(e.to_string())))?;
            let response = self.http.send(request).await.map_err(|e| unavailable(&e))?;
            if !response.status().is_success() {
                return Err(OidcError::Unavailable(Unavailable::DiscoveryStatus {
                    url,
                    status: response.status(),
                }));
            }
            let metadata: Metadata = serde_json::from_slice(response.body()).map_err(|e| {
                OidcError::Unavailable(Unavailable::NotDiscovery {
                    url: url.clone(),
                    reason: e.to_string(),
                })
            })?;
            // OpenID Discovery §4.3: the document must name the issuer we asked. Entra's
            // multi-tenant documents name the issuer template instead.
            let discovered = metadata.issuer().as_str().trim_end_matches('/');
            let issuer_ok = match &self.cfg.entra {
                Some(e) => e.discovered_issuer_ok(discovered),
                None => discovered == configured,
            };
            if !issuer_ok {
                return Err(OidcError::Unavailable(Unavailable::IssuerMismatch {
                    url,
                    discovered: discovered.to_string(),
                    configured,
                }));
            }
            let keys = CoreJsonWebKeySet::fetch_async(metadata.jwks_uri(), &client)
                .await
                .map_err(|e| unavailable(&e))?;
            return Ok(metadata.set_jwks(keys));
        }
        let (Some(login), Some(redeem), Some(jwks)) = (&self.cfg.login_url, &self.cfg.redeem_url, &self.cfg.jwks_url) else {
            unreachable!("config validation requires login_url, redeem_url and oidc_jwks_url with skip_oidc_discovery");
        };
        let jwks_url = JsonWebKeySetUrl::from_url(jwks.clone());
        let keys = CoreJsonWebKeySet::fetch_async(&jwks_url, &client)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Metadata::new(
            issuer,
            AuthUrl::from_url(login.clone()),
            jwks_url,
            vec![ResponseTypes::new(vec![CoreResponseType::Code])],
            vec![CoreSubjectIdentifierType::Public],
            vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
            ExtraMetadata::default(),
        )
        .set_token_endpoint(Some(TokenUrl::from_url(redeem.clone())))
        .set_jwks(keys))
    }

    /// Fetches the JWKS again (a `kid` we do not know may be a rotated key).
    async fn refetch_jwks(&self, seen: &Arc<Discovered>) -> Option<Arc<Discovered>> {
        let _guard = self.refresh.lock().await;
        let current = self.current()?;
        if !Arc::ptr_eq(&current, seen) {
            return Some(current); // someone else refreshed while we waited
        }
        // A clock that went back counts as "just fetched": the limit holds either way.
        let since = (self.clock)().duration_since(current.jwks_fetched).unwrap_or_default();
        if since < JWKS_REFETCH_INTERVAL {
            return None;
        }
        let client = self.http.as_oauth2();
        let started = Instant::now();
        let fetched = CoreJsonWebKeySet::fetch_async(current.metadata.jwks_uri(), &client).await;
        crate::metrics::idp("jwks", started.elapsed());
        match fetched {
            Ok(keys) => {
                let d = Arc::new(Discovered {
                    metadata: current.metadata.clone().set_jwks(keys),
                    jwks_fetched: (self.clock)(),
                });
                *self.current.write().expect("lock poisoned") = Some(d.clone());
                tracing::info!("JWKS refetched after an unknown key id");
                Some(d)
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "JWKS refetch failed");
                None
            }
        }
    }

    /// The provider URL that starts a login.
    pub fn authorization_url(
        &self,
        d: &Discovered,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        pkce_challenge: Option<&str>,
        prompt_override: Option<&str>,
    ) -> url::Url {
        let mut url = d.metadata.authorization_endpoint().url().clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.cfg.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &self.cfg.scope)
                .append_pair("state", state)
                .append_pair("nonce", nonce);
            if let Some(challenge) = pkce_challenge {
                q.append_pair("code_challenge", challenge)
                    .append_pair("code_challenge_method", "S256");
            }
            match (prompt_override.or(self.cfg.prompt.as_deref()), &self.cfg.approval_prompt) {
                (Some(p), _) => {
                    q.append_pair("prompt", p);
                }
                (None, Some(a)) => {
                    q.append_pair("approval_prompt", a);
                }
                _ => {}
            }
            if let Some(acr) = &self.cfg.acr_values {
                q.append_pair("acr_values", acr);
            }
        }
        url
    }

    /// One request to the token endpoint, authenticated as the configured client. Files
    /// behind the credential (a federated token, a secret) are read now, every time.
    async fn token_request(&self, d: &Discovered, mut form: Vec<(&'static str, String)>) -> Result<TokenResponse, OidcError> {
        let token_url = d
            .metadata
            .token_endpoint()
            .ok_or_else(|| OidcError::TokenTransport("the provider's discovery document has no token_endpoint".into()))?
            .url()
            .to_string();
        let now = unix((self.clock)());
        let client_id = self.cfg.client_id.clone();
        let mut request = http::Request::post(&token_url)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json");
        let mut assertion_claims = None;
        match self.cfg.client_auth.credential(&client_id, &token_url, now)? {
            Credential::None => form.push(("client_id", client_id)),
            Credential::Secret(secret) => {
                // client_secret_basic unless the provider only offers client_secret_post.
                let post_only = d.metadata.token_endpoint_auth_methods_supported().is_some_and(|m| {
                    m.contains(&CoreClientAuthMethod::ClientSecretPost) && !m.contains(&CoreClientAuthMethod::ClientSecretBasic)
                });
                if post_only {
                    form.push(("client_id", client_id));
                    form.push(("client_secret", secret.expose().clone()));
                } else {
                    // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
                    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(&client_id), enc(secret.expose())));
                    request = request.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
                }
            }
            Credential::Assertion(jwt) => {
                assertion_claims = client_auth::inspect(jwt.expose());
                form.push(("client_id", client_id));
                form.push(("client_assertion_type", client_auth::JWT_BEARER.to_string()));
                form.push(("client_assertion", jwt.expose().clone()));
            }
        }
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let request = request
            .body(body.into_bytes())
            .map_err(|e| OidcError::TokenTransport(e.to_string()))?;
        let started = Instant::now();
        let response = self.http.send(request).await;
        crate::metrics::idp("token", started.elapsed());
        let response = response.map_err(|e| OidcError::TokenTransport(error_chain(&e)))?;
        if response.status().is_success() {
            return serde_json::from_slice(response.body())
                .map_err(|e| OidcError::TokenTransport(format!("unparseable token response: {e}")));
        }
        match serde_json::from_slice::<TokenErrorResponse>(response.body()) {
            Ok(err) => Err(self.refused(err, assertion_claims.as_ref())),
            Err(_) => Err(OidcError::TokenTransport(format!(
                "the token endpoint answered {} without an OAuth error",
                response.status()
            ))),
        }
    }

    fn refused(&self, err: TokenErrorResponse, assertion: Option<&client_auth::AssertionClaims>) -> OidcError {
        let description = err.error_description.as_deref().unwrap_or("");
        let code = err.error_codes.first().copied().or_else(|| entra::aadsts_code(description));
        let tenant = self.cfg.entra.as_ref().and_then(|e| e.tenant.as_deref());
        let hint = code
            .and_then(|c| entra::hint(c, &self.cfg.client_id, tenant, assertion))
            .or_else(|| {
                // Not Entra, or a code we do not know: a refused assertion still deserves
                // to say what was presented.
                (err.error == "invalid_client")
                    .then_some(assertion)
                    .flatten()
                    .filter(|a| a.iss != self.cfg.client_id)
                    .map(|a| format!("the provider did not accept the client assertion with issuer {} and subject {} (audience {:?}): configure it to trust that issuer and subject for client {}", a.iss, a.sub, a.aud, self.cfg.client_id))
            });
        OidcError::TokenRefused {
            error: err.error,
            description: err.error_description,
            hint,
        }
    }

    /// Redeems an authorization code and verifies the ID token it returns.
    pub async fn redeem(&self, code: &str, redirect_uri: &str, pkce_verifier: Option<&str>, nonce: &str) -> Result<Identity, OidcError> {
        let d = self.ensure().await?;
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", redirect_uri.to_string()),
        ];
        if let Some(v) = pkce_verifier {
            form.push(("code_verifier", v.to_string()));
        }
        let response = self.token_request(&d, form).await?;
        let id_token = response.id_token.ok_or(OidcError::NoIdToken)?;
        let claims = self.verify_id_token(&d, &id_token, Some(nonce)).await?;
        let now = unix((self.clock)());
        let mut identity = self.identity_from_claims(&claims)?;
        identity.tokens_expire_at = response
            .expires_in
            .map(|e| now + e)
            .or_else(|| claims.get("exp").and_then(|v| v.as_u64()));
        identity.refresh_token = response.refresh_token.map(Secret::new);
        identity.id_token = Some(Secret::new(id_token));
        if identity.groups_from_graph {
            identity.groups = self.graph_groups(&response.access_token).await?;
        }
        identity.access_token = Some(Secret::new(response.access_token));
        Ok(identity)
    }

    /// Redeems a refresh token. A new ID token is verified (without a nonce: none was sent);
    /// groups that came from Graph are fetched again with the new access token.
    pub async fn refresh(&self, refresh_token: &str, groups_from_graph: bool) -> Result<Refreshed, OidcError> {
        let d = self.ensure().await?;
        let form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh_token.to_string()),
            ("scope", self.cfg.scope.clone()),
        ];
        let response = self.token_request(&d, form).await?;
        let now = unix((self.clock)());
        let (identity, id_token_exp) = match &response.id_token {
            Some(raw) => {
                let claims = self.verify_id_token(&d, raw, None).await?;
                (
                    Some(self.identity_from_claims(&claims)?),
                    claims.get("exp").and_then(|v| v.as_u64()),
                )
            }
            None => (None, None),
        };
        let tokens_expire_at = response.expires_in.map(|e| now + e).or(id_token_exp);
        // A new ID token says whether the user is (still) over the limit; without one, the
        // session's last answer stands.
        let graph_groups = match identity.as_ref().map_or(groups_from_graph, |i| i.groups_from_graph) {
            true => Some(self.graph_groups(&response.access_token).await?),
            false => None,
        };
        Ok(Refreshed {
            identity,
            graph_groups,
            access_token: response.access_token,
            id_token: response.id_token,
            refresh_token: response.refresh_token,
            tokens_expire_at,
        })
    }

    /// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): the provider's
    /// `end_session_endpoint` with `id_token_hint` (or `client_id` without one) and
    /// `post_logout_redirect_uri`. `None` when the provider has no such endpoint.
    pub fn end_session_url(&self, d: &Discovered, id_token: Option<&str>, post_logout_redirect_uri: &str) -> Option<url::Url> {
        let mut url = url::Url::parse(d.metadata.additional_metadata().end_session_endpoint.as_deref()?).ok()?;
        {
            let mut q = url.query_pairs_mut();
            match id_token {
                Some(t) => q.append_pair("id_token_hint", t),
                None => q.append_pair("client_id", &self.cfg.client_id),
            };
            q.append_pair("post_logout_redirect_uri", post_logout_redirect_uri);
        }
        Some(url)
    }

    /// `backend_logout_url`: a server-side GET; the outcome is only logged, since the
    /// user's own session is already gone.
    pub async fn backend_logout(&self, url: &str) -> Result<http::StatusCode, String> {
        let request = http::Request::get(url).body(Vec::new()).map_err(|e| e.to_string())?;
        let resp = self.http.send(request).await.map_err(|e| error_chain(&e))?;
        Ok(resp.status())
    }

    /// Entra groups overage: the ID token has no groups, Graph has them. A Graph failure is
    /// a failed login, never a silently empty group list.
    async fn graph_groups(&self, access_token: &str) -> Result<Vec<String>, OidcError> {
        let e = self
            .cfg
            .entra
            .as_ref()
            .expect("groups_from_graph is only set for the entra-id provider");
        let started = Instant::now();
        let groups = entra::group_ids(&self.http, &e.graph_url, access_token).await;
        crate::metrics::idp("graph", started.elapsed());
        Ok(groups?)
    }
}

mod error;
mod verify;

pub use error::{Fault, OidcError, Unavailable};

#[cfg(test)]
mod tests;
