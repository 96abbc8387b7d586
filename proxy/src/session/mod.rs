//! Sessions: what a signed-in user carries ([`Session`]), how it is sealed into a cookie
//! value ([`codec`]), and how that value travels in one or more cookies ([`cookies`]).

pub mod codec;
pub mod cookies;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A signed-in user. Times are Unix seconds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Session {
    pub user: String,
    pub email: String,
    pub preferred_username: String,
    pub groups: Vec<String>,
    pub created_at: u64,
    /// The session ends here whatever the tokens say (`cookie_expire`).
    pub expires_at: u64,
    pub access_token: Option<String>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
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

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |t: &Option<String>| t.as_ref().map(|_| "[redacted]");
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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` parameter sent to the provider.
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: Option<String>,
    /// Where to send the user after login (already validated).
    pub redirect: String,
    /// The callback URL sent to the provider; the token request must repeat it exactly.
    pub redirect_uri: String,
    pub expires_at: u64,
}

impl fmt::Debug for LoginState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginState")
            .field("redirect", &self.redirect)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}
