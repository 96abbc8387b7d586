//! Which of the proxy's endpoints a request path is (or the app's): decided once, for both
//! routing and the metrics label.

use super::App;

pub(super) struct Paths {
    pub(super) start: String,
    pub(super) callback: String,
    pub(super) sign_in: String,
    pub(super) sign_out: String,
    /// Where sign-out lands without an `rd`: the "You are signed out" page.
    pub(super) signed_out: String,
    pub(super) userinfo: String,
    pub(super) auth: String,
    /// `auth` + `/`: Envoy's ext_authz appends the app's path to the auth URL.
    pub(super) auth_subtree: String,
}

/// The endpoints a request can be for; everything outside the proxy prefix is the app's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Endpoint {
    Ping,
    Ready,
    Start,
    Callback,
    SignIn,
    SignOut,
    SignedOut,
    Userinfo,
    Auth,
    /// Under the proxy prefix, but none of ours.
    Unknown,
    App,
}

impl Endpoint {
    /// A low-cardinality label for the metrics.
    pub(super) fn metric_label(self) -> &'static str {
        match self {
            Endpoint::Ping => "ping",
            Endpoint::Ready => "ready",
            Endpoint::Start => "start",
            Endpoint::Callback => "callback",
            Endpoint::SignIn => "sign_in",
            Endpoint::SignOut => "sign_out",
            Endpoint::SignedOut => "signed_out",
            Endpoint::Userinfo => "userinfo",
            Endpoint::Auth => "auth",
            Endpoint::Unknown => "unknown",
            Endpoint::App => "app",
        }
    }
}

impl Paths {
    pub(super) fn new(prefix: &str) -> Self {
        Paths {
            start: format!("{prefix}/start"),
            callback: format!("{prefix}/callback"),
            sign_in: format!("{prefix}/sign_in"),
            sign_out: format!("{prefix}/sign_out"),
            signed_out: format!("{prefix}/signed_out"),
            userinfo: format!("{prefix}/userinfo"),
            auth: format!("{prefix}/auth"),
            auth_subtree: format!("{prefix}/auth/"),
        }
    }
}

impl App {
    /// Which endpoint a path is: decided once, for both routing and the metrics label.
    pub(super) fn endpoint(&self, path: &str) -> Endpoint {
        let p = &self.paths;
        if path == self.cfg.ping_path {
            Endpoint::Ping
        } else if path == self.cfg.ready_path {
            Endpoint::Ready
        } else if !(path.starts_with(&self.cfg.proxy_prefix) && path[self.cfg.proxy_prefix.len()..].starts_with('/')) {
            Endpoint::App
        } else if path == p.start {
            Endpoint::Start
        } else if path == p.callback {
            Endpoint::Callback
        } else if path == p.sign_in {
            Endpoint::SignIn
        } else if path == p.sign_out {
            Endpoint::SignOut
        } else if path == p.signed_out {
            Endpoint::SignedOut
        } else if path == p.userinfo {
            Endpoint::Userinfo
        } else if path == p.auth || path.starts_with(&p.auth_subtree) {
            Endpoint::Auth
        } else {
            Endpoint::Unknown
        }
    }
}
