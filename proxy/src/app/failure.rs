//! Why a request did not get what it asked for ([`Failure`]), and the one place that turns
//! each into a status, a page and a log line ([`App::fail`]).

use super::*;

/// Why a request did not get what it asked for; decides status, page and log level.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("login state is missing, expired or does not match; start the login again")]
    LoginState,
    /// The login state cookie is `Secure` and the browser came over plain http to a host it
    /// does not treat as secure, so it never stored the cookie: say why, not "missing".
    #[error(
        "the login state cookie is missing: this sign-in went over plain http and the cookie is Secure (cookie_secure=true), so the browser dropped it; serve the app over https, or set cookie_secure=false for plain-http testing"
    )]
    SecureCookieOverHttp,
    #[error("{0}")]
    Provider(#[from] OidcError),
    #[error("the identity provider reported an error: {0}")]
    ProviderRedirect(String),
    /// `account` is who signed in; `retry` is where "sign in as someone else" returns to.
    #[error("{denial}")]
    Denied {
        denial: crate::authz::Denial,
        account: String,
        retry: String,
    },
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("bad request: {0}")]
    BadPath(#[from] routes::PathError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no such endpoint under the proxy prefix")]
    UnknownEndpoint,
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::LoginState | Failure::SecureCookieOverHttp | Failure::Denied { .. } | Failure::ProviderRedirect(_) => {
                StatusCode::FORBIDDEN
            }
            Failure::UnknownEndpoint => StatusCode::NOT_FOUND,
            Failure::BadRequest(_) | Failure::BadPath(_) => StatusCode::BAD_REQUEST,
            Failure::Provider(e) => match e.fault() {
                Fault::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Fault::BadAnswer => StatusCode::BAD_GATEWAY,
                Fault::Refused => StatusCode::FORBIDDEN,
            },
            Failure::Upstream(UpstreamError::NoRoute) => StatusCode::NOT_FOUND,
            Failure::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Upstream(UpstreamError::Unreachable { .. } | UpstreamError::Switched { .. }) => StatusCode::BAD_GATEWAY,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Failure::Denied { .. } => "Access denied",
            Failure::UnknownEndpoint => "Page not found",
            Failure::Upstream(_) => "The application is not responding",
            Failure::Provider(e) if e.fault() == Fault::Unavailable => "Sign-in is unavailable",
            Failure::BadRequest(_) | Failure::BadPath(_) => "Bad request",
            Failure::Store(_) => "Sessions are unavailable",
            _ => "Sign-in failed",
        }
    }

    /// What the page says: a sentence for a person. The error itself (transport errors,
    /// internal URLs, provider answers) goes to the log under the request id instead.
    fn public_message(&self) -> String {
        match self {
            Failure::LoginState => "The sign-in took too long or was started in another tab. Please sign in again.".into(),
            // The one failure only the operator can fix and a tester always meets first
            // (a port-forward, a lab without TLS): the page says what to change.
            Failure::SecureCookieOverHttp => "This application was opened over plain http, but its sign-in cookie is only sent over https, \
                 so the browser dropped it. Open it over https, or (for testing over plain http only) set cookie_secure=false."
                .into(),
            // The provider's own words are meant for the person signing in (Entra's AADSTS
            // texts are), and only a browser holding this login's state gets here.
            Failure::ProviderRedirect(e) => format!("The identity provider did not complete the sign-in: {e}"),
            Failure::Provider(e) if e.fault() == Fault::Unavailable => {
                "Signing in is not possible right now. Please try again in a few minutes.".into()
            }
            Failure::Provider(e) if e.fault() == Fault::BadAnswer => "The identity provider did not complete the sign-in. Please try again.".into(),
            Failure::Provider(OidcError::UnverifiedEmail) => {
                "Your email address is not verified at the identity provider, so it cannot be used to sign in here.".into()
            }
            Failure::Provider(OidcError::Tenant(_)) => "Accounts of your organization may not use this application.".into(),
            Failure::Provider(OidcError::TokenRefused { .. }) => {
                "The identity provider refused to complete the sign-in. If this keeps happening, give the request id below to the application's owner.".into()
            }
            Failure::Provider(_) => "The sign-in could not be verified. Please sign in again.".into(),
            Failure::Denied { .. } => "This account may not use this application.".into(),
            Failure::Upstream(UpstreamError::NoRoute) => "There is no application at this address.".into(),
            Failure::Upstream(UpstreamError::Timeout { .. }) => {
                "The application took too long to answer. Please try again.".into()
            }
            Failure::Upstream(UpstreamError::Unreachable { .. } | UpstreamError::Switched { .. }) => {
                "The application cannot be reached right now. Please try again in a few minutes.".into()
            }
            // Our own fixed texts about the request itself: no internals in them.
            Failure::BadRequest(_) | Failure::BadPath(_) => format!("This request cannot be served: {self}."),
            Failure::Store(_) => "Sessions cannot be checked right now. Please try again in a few minutes.".into(),
            Failure::UnknownEndpoint => "There is no page at this address.".into(),
        }
    }
}

impl App {
    pub(super) fn fail(&self, failure: Failure, request_id: &HeaderValue) -> Response<Body> {
        let status = failure.status();
        if let Failure::Upstream(e) = &failure {
            metrics::upstream_error(match e {
                UpstreamError::NoRoute => "no_route",
                UpstreamError::Timeout { .. } => "timeout",
                UpstreamError::Unreachable { .. } => "unreachable",
                UpstreamError::Switched { .. } => "switched_protocols",
            });
        }
        let request_id = request_id.to_str().unwrap_or("");
        let footer = self.cfg.footer.as_deref();
        match &failure {
            // Denials are logged as auth events where they happen; the unknown path as a request.
            Failure::Denied { .. } | Failure::UnknownEndpoint => {}
            _ if status.is_server_error() => {
                tracing::warn!(status = status.as_u16(), error = %failure, request_id, "request failed")
            }
            _ => tracing::info!(status = status.as_u16(), error = %failure, request_id, "request refused"),
        }
        let body = match &failure {
            Failure::Denied { denial, account, retry } => {
                let switch = format!("{}?rd={}&prompt=login", self.paths.start, utf8_percent_encode(retry, UNRESERVED));
                pages::denied(account, &denial.to_string(), &switch, request_id, footer)
            }
            _ => pages::error(status.as_u16(), failure.title(), &failure.public_message(), request_id, footer),
        };
        html(status, body)
    }
}
