//! What can go wrong talking to the provider ([`OidcError`], [`Unavailable`]) and what each
//! failure means for the request ([`Fault`]), decided here once for every caller.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error(transparent)]
    Unavailable(Unavailable),
    #[error("the identity provider refused the token request: {error}{}{}",
        description.as_ref().map(|d| format!(": {d}")).unwrap_or_default(),
        hint.as_ref().map(|h| format!(" — to fix: {h}")).unwrap_or_default())]
    TokenRefused {
        error: String,
        description: Option<String>,
        /// What the user can do about it, when we can tell.
        hint: Option<String>,
    },
    #[error("no client credential: {0}")]
    ClientAuth(#[from] ClientAuthError),
    #[error("cannot read the user's groups (groups overage): {0}")]
    Graph(#[from] entra::GraphError),
    #[error("the token request failed: {0}")]
    TokenTransport(String),
    #[error("the token response has no ID token")]
    NoIdToken,
    #[error("the ID token is invalid: {0}")]
    InvalidIdToken(String),
    /// No key of the provider's JWKS has the token's key id (refetched once first).
    #[error("the ID token is invalid: no key in the provider's JWKS matches the token's key id")]
    UnknownSigningKey,
    #[error("the authorization response was issued by {got}, expected {expected}")]
    IssuerMismatch { got: String, expected: String },
    #[error("the sign-in came from the wrong Entra tenant: {0}")]
    Tenant(String),
    #[error("the provider marked the email address unverified")]
    UnverifiedEmail,
}

/// What a provider failure means for the request, decided in one place for every caller
/// (the error page's status, whether a refresh keeps or ends the session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The provider, or our credential for it, cannot be used now: 503, and a session being
    /// refreshed stands until its tokens expire.
    Unavailable,
    /// The provider answered, but not with a usable result: 502, transient like the above.
    BadAnswer,
    /// The provider or its token refused this sign-in: 403, and a refresh ends the session.
    Refused,
}

impl Fault {
    /// Worth trying again later, as opposed to a verdict on this sign-in.
    pub fn is_transient(self) -> bool {
        self != Fault::Refused
    }
}

impl OidcError {
    pub fn fault(&self) -> Fault {
        match self {
            OidcError::Unavailable(_) | OidcError::ClientAuth(_) => Fault::Unavailable,
            OidcError::TokenTransport(_) | OidcError::Graph(_) | OidcError::NoIdToken => Fault::BadAnswer,
            OidcError::TokenRefused { .. }
            | OidcError::InvalidIdToken(_)
            | OidcError::UnknownSigningKey
            | OidcError::IssuerMismatch { .. }
            | OidcError::Tenant(_)
            | OidcError::UnverifiedEmail => Fault::Refused,
        }
    }
}

/// Why discovery (or the JWKS fetch after it) failed. A wrong `oidc_issuer_url` answers,
/// just with the wrong thing; only a network failure or a 5xx means the provider is down.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the identity provider is unreachable: {0}")]
    Unreachable(String),
    #[error("{}", discovery_status(url, *status))]
    DiscoveryStatus { url: String, status: http::StatusCode },
    #[error("{url} is not an OpenID discovery document ({reason}); check oidc_issuer_url")]
    NotDiscovery { url: String, reason: String },
    #[error("{url} names issuer {discovered}, expected {configured}; check oidc_issuer_url")]
    IssuerMismatch {
        url: String,
        discovered: String,
        configured: String,
    },
}

fn discovery_status(url: &str, status: http::StatusCode) -> String {
    if status.is_server_error() {
        format!("the identity provider is unavailable: {url} answered {status}")
    } else {
        format!(
            "{url} answered {status}, so oidc_issuer_url does not name an OpenID provider; check oidc_issuer_url (discovery fetches <oidc_issuer_url>/.well-known/openid-configuration)"
        )
    }
}
