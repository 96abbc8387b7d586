//! Sessions: what a signed-in user carries ([`Session`]), how it is sealed into a cookie
//! value ([`codec`]), and how that value travels in one or more cookies ([`cookies`]).

pub mod codec;
pub mod cookies;
mod opened;
pub mod store;

use crate::secret::Secret;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A signed-in user. Times are Unix seconds.
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct Session {
    pub user: String,
    pub email: String,
    pub preferred_username: String,
    pub groups: Vec<String>,
    pub created_at: u64,
    /// The session ends here whatever the tokens say (`cookie_expire`).
    pub expires_at: u64,
    pub access_token: Option<Secret<String>>,
    pub id_token: Option<Secret<String>>,
    pub refresh_token: Option<Secret<String>>,
    /// When the provider's tokens expire, for refresh.
    pub tokens_expire_at: Option<u64>,
    /// When the tokens were last obtained (login or refresh), for `cookie_refresh`.
    pub refreshed_at: u64,
    /// The groups came from Microsoft Graph (Entra groups overage), so a refresh must ask again.
    pub groups_from_graph: bool,
}

impl Session {
    /// The session without tokens (`session_cookie_minimal`).
    pub fn minimal(mut self) -> Self {
        self.access_token = None;
        self.id_token = None;
        self.refresh_token = None;
        self
    }
}

/// Equal field by field, the tokens compared in constant time.
impl PartialEq for Session {
    fn eq(&self, o: &Self) -> bool {
        self.user == o.user
            && self.email == o.email
            && self.preferred_username == o.preferred_username
            && self.groups == o.groups
            && self.created_at == o.created_at
            && self.expires_at == o.expires_at
            && crate::secret::same(&self.access_token, &o.access_token)
            && crate::secret::same(&self.id_token, &o.id_token)
            && crate::secret::same(&self.refresh_token, &o.refresh_token)
            && self.tokens_expire_at == o.tokens_expire_at
            && self.refreshed_at == o.refreshed_at
            && self.groups_from_graph == o.groups_from_graph
    }
}

impl Eq for Session {}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |t: &Option<Secret<String>>| t.as_ref().map(|_| "[redacted]");
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("email", &self.email)
            .field("preferred_username", &self.preferred_username)
            .field("groups", &self.groups)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("access_token", &redact(&self.access_token))
            .field("id_token", &redact(&self.id_token))
            .field("refresh_token", &redact(&self.refresh_token))
            .field("tokens_expire_at", &self.tokens_expire_at)
            .field("refreshed_at", &self.refreshed_at)
            .field("groups_from_graph", &self.groups_from_graph)
            .finish()
    }
}

/// A login in progress, sealed into the CSRF cookie between `/start` and `/callback`.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` parameter sent to the provider (not secret: it is in the URL and names
    /// the CSRF cookie; compared in constant time all the same).
    pub state: String,
    pub nonce: Secret<String>,
    pub pkce_verifier: Option<Secret<String>>,
    /// Where to send the user after login (already validated).
    pub redirect: String,
    /// The callback URL sent to the provider; the token request must repeat it exactly.
    pub redirect_uri: String,
    pub expires_at: u64,
}

/// Equal field by field, the nonce and the verifier compared in constant time.
impl PartialEq for LoginState {
    fn eq(&self, o: &Self) -> bool {
        self.state == o.state
            && self.nonce.ct_eq(o.nonce.expose().as_bytes())
            && crate::secret::same(&self.pkce_verifier, &o.pkce_verifier)
            && self.redirect == o.redirect
            && self.redirect_uri == o.redirect_uri
            && self.expires_at == o.expires_at
    }
}

impl Eq for LoginState {}

impl fmt::Debug for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginState")
            .field("redirect", &self.redirect)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}
