//! The request path: strip spoofed identity headers → route (`/oauth2/*`, ping, ready, or
//! protected) → load and authorize the session → forward with identity headers, or answer
//! with the sign-in flow. Every failure is mapped to a response in [`App::fail`]; nothing on
//! this path panics or answers 500 for bad client input.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rand::RngCore;
use sha2::Digest;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::authz::{Authorizer, Constraints};
use crate::bearer::{self, BearerVerifier};
use crate::body::{Body, full};
use crate::config::{Config, SameSite, UpstreamTarget};
use crate::forwarded::Origin;
use crate::headers;
use crate::metrics;
use crate::oidc::{Clock, Oidc, OidcError, unix};
use crate::pages;
use crate::redirect::RedirectPolicy;
use crate::refresh::{self, Outcome, SingleFlight};
use crate::routes;
use crate::session::codec::{Purpose, Sealer};
use crate::session::cookies::{CookieWriter, RequestCookies, strip_proxy_cookies};
use crate::session::store::{Loaded, RedisStore, Sessions, StoreError, Ticket};
use crate::session::{LoginState, Session};
use crate::upstream::{UpstreamError, Upstreams};

/// RFC 3986 unreserved characters stay as they are (a JWT needs no escaping).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a request did not get what it asked for; decides status, page and log level.
#[derive(Debug, thiserror::Error)]
enum Failure {
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
            Failure::Provider(OidcError::Unavailable(_) | OidcError::ClientAuth(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Provider(OidcError::TokenTransport(_) | OidcError::NoIdToken | OidcError::Graph(_)) => StatusCode::BAD_GATEWAY,
            Failure::Provider(_) => StatusCode::FORBIDDEN,
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
            Failure::Provider(OidcError::Unavailable(_) | OidcError::ClientAuth(_)) => "Sign-in is unavailable",
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
            Failure::Provider(OidcError::Unavailable(_) | OidcError::ClientAuth(_)) => {
                "Signing in is not possible right now. Please try again in a few minutes.".into()
            }
            Failure::Provider(OidcError::TokenTransport(_) | OidcError::NoIdToken | OidcError::Graph(_)) => {
                "The identity provider did not complete the sign-in. Please try again.".into()
            }
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

struct Paths {
    start: String,
    callback: String,
    sign_in: String,
    sign_out: String,
    /// Where sign-out lands without an `rd`: the "You are signed out" page.
    signed_out: String,
    userinfo: String,
    auth: String,
    /// `auth` + `/`: Envoy's ext_authz appends the app's path to the auth URL.
    auth_subtree: String,
}

/// The endpoints a request can be for; everything outside the proxy prefix is the app's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
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
    fn metric_label(self) -> &'static str {
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

pub struct App {
    cfg: Config,
    oidc: Arc<Oidc>,
    upstreams: Upstreams,
    authz: Authorizer,
    redirects: RedirectPolicy,
    sessions: Sessions,
    csrf: Sealer,
    clock: Clock,
    paths: Paths,
    refreshes: SingleFlight,
    bearer: Option<BearerVerifier>,
    /// Whether the client credential was usable at the last look, to log changes once.
    credential_ok: std::sync::atomic::AtomicBool,
    /// Whether the session store answered the last readiness probe, to log changes once.
    store_ok: std::sync::atomic::AtomicBool,
    /// Whether the plain-http-with-Secure-cookies warning was logged (once per process).
    warned_plain_http: std::sync::atomic::AtomicBool,
}

/// The request's session after any refresh, and the cookies that refresh (or its failure) sets.
struct Lookup {
    session: Option<Arc<Session>>,
    set_cookies: Vec<HeaderValue>,
}

impl Lookup {
    fn add_cookies(self, resp: &mut Response<Body>) {
        for c in self.set_cookies {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
    }
}

/// What is known about a request before handling it: for routing decisions, redirects,
/// cookies and the access log.
struct Ctx {
    method: Method,
    path: String,
    request_id: HeaderValue,
    started: Instant,
    peer: SocketAddr,
    /// The original request as a trusted front end describes it (or as it arrived).
    origin: Origin,
    /// `Authorization: Bearer <jwt>` as the client sent it, with `skip_jwt_bearer_tokens`
    /// (read before identity headers are stripped).
    bearer: Option<String>,
}

impl App {
    /// `workers`: how many server workers will call [`App::handle`] (one upstream connection
    /// pool each).
    pub fn new(cfg: Config, oidc: Arc<Oidc>, clock: Clock, workers: usize) -> Result<Self, String> {
        let mut emails: HashSet<String> = match &cfg.authz.emails_file {
            Some(path) => Authorizer::read_emails_file(path).map_err(|e| format!("authenticated_emails_file {}: {e}", path.display()))?,
            None => HashSet::new(),
        };
        emails.extend(cfg.authz.allowed_emails.iter().cloned());
        let prefix = &cfg.proxy_prefix;
        let paths = Paths {
            start: format!("{prefix}/start"),
            callback: format!("{prefix}/callback"),
            sign_in: format!("{prefix}/sign_in"),
            sign_out: format!("{prefix}/sign_out"),
            signed_out: format!("{prefix}/signed_out"),
            userinfo: format!("{prefix}/userinfo"),
            auth: format!("{prefix}/auth"),
            auth_subtree: format!("{prefix}/auth/"),
        };
        Ok(App {
            authz: Authorizer::new(&cfg.authz.email_domains, emails, &cfg.authz.allowed_groups),
            redirects: RedirectPolicy::new(&cfg.whitelist_domains),
            sessions: Sessions::new(
                &cfg.cookie.name,
                cfg.cookie.secret.expose(),
                cfg.redis.as_ref().map(RedisStore::new).transpose()?,
            ),
            csrf: Sealer::new(cfg.cookie.secret.expose(), Purpose::Csrf),
            upstreams: Upstreams::new(cfg.upstreams.clone(), cfg.upstream_timeout, workers)?,
            oidc,
            clock,
            paths,
            refreshes: SingleFlight::default(),
            bearer: None,
            credential_ok: std::sync::atomic::AtomicBool::new(true),
            store_ok: std::sync::atomic::AtomicBool::new(true),
            warned_plain_http: std::sync::atomic::AtomicBool::new(false),
            cfg,
        })
    }

    /// Accepts bearer JWTs (`skip_jwt_bearer_tokens`) verified by `verifier`.
    pub fn set_bearer(&mut self, verifier: Option<BearerVerifier>) {
        self.bearer = verifier;
    }

    pub fn oidc(&self) -> &Arc<Oidc> {
        &self.oidc
    }

    /// Handles one request. `scheme` is the listener's (`http` or `https`).
    pub async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr, scheme: &'static str) -> Response<Body> {
        // First, while every header is still the client's: see the function for why.
        headers::remove_connection_nominated(req.headers_mut(), &self.cfg.trust.client_ip_header);
        let bearer = self.bearer.as_ref().and_then(|_| bearer::bearer_token(req.headers()));
        headers::strip_identity_headers(req.headers_mut(), &self.cfg.headers);
        let origin = Origin::read(req.headers_mut(), peer.ip(), scheme, &self.cfg.trust);
        let cx = Ctx {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            request_id: self.request_id(req.headers()),
            started: Instant::now(),
            peer,
            origin,
            bearer,
        };
        req.headers_mut()
            .insert(self.cfg.logging.request_id_header.clone(), cx.request_id.clone());

        // Every event while handling the request (auth events, upstream errors) carries its id.
        let span = tracing::info_span!(target: "sidekey::request", "request", request_id = %cx.request_id.to_str().unwrap_or(""));
        let (mut resp, user) = self.route(req, &cx).instrument(span).await;
        resp.headers_mut()
            .insert(self.cfg.logging.request_id_header.clone(), cx.request_id.clone());
        self.log_request(&cx, resp.status(), user.as_deref());
        metrics::request(self.endpoint(&cx.path).metric_label(), resp.status().as_u16(), cx.started.elapsed());
        resp
    }

    /// Which endpoint a path is: decided once, for both routing and the metrics label.
    fn endpoint(&self, path: &str) -> Endpoint {
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

    async fn route(&self, req: Request<Incoming>, cx: &Ctx) -> (Response<Body>, Option<String>) {
        if req.method() == Method::CONNECT {
            return (crate::upgrade::connect_refused(), None);
        }
        let result = match self.endpoint(req.uri().path()) {
            Endpoint::App => return self.protected(req, cx).await,
            Endpoint::Ping => return (text(StatusCode::OK, "OK"), None),
            Endpoint::Ready => return (self.ready().await, None),
            Endpoint::Auth => return self.auth(&req, cx).await,
            Endpoint::Start => self.start(&req, cx, None).await,
            Endpoint::Callback => self.callback(&req, cx).await,
            Endpoint::SignIn => Ok(self.sign_in_page(&req, cx, StatusCode::OK, None).await),
            Endpoint::SignOut => Ok(self.sign_out(&req, cx).await),
            Endpoint::SignedOut => Ok(html(StatusCode::OK, pages::signed_out("/", self.cfg.footer.as_deref()))),
            Endpoint::Userinfo => Ok(self.userinfo(&req, cx).await),
            Endpoint::Unknown => Err(Failure::UnknownEndpoint),
        };
        (result.unwrap_or_else(|f| self.fail(f, &cx.request_id)), None)
    }

    /// Ready when the client credential is usable, the session store answers and discovery
    /// has succeeded.
    async fn ready(&self) -> Response<Body> {
        if !self.credential_usable() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the client credential is not available; see the log",
            );
        }
        let ping = self.sessions.ping().await;
        // Probes come every few seconds: log the changes, not every probe.
        if self.store_ok.swap(ping.is_ok(), std::sync::atomic::Ordering::Relaxed) != ping.is_ok() {
            match &ping {
                Ok(()) => tracing::info!("the session store is reachable again"),
                Err(e) => tracing::error!(error = %e, "the session store is unreachable; /ready reports 503 until it is back"),
            }
        }
        if let Err(e) = ping {
            let mut resp = Response::new(full(format!("{e}\n")));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return resp;
        }
        match self.oidc.current() {
            Some(_) => text(StatusCode::OK, "OK"),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "identity provider discovery has not succeeded yet"),
        }
    }

    /// A request for the application itself.
    async fn protected(&self, mut req: Request<Incoming>, cx: &Ctx) -> (Response<Body>, Option<String>) {
        // One normalized path for the access rules, upstream routing and the upstream itself.
        let as_sent = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let path = match routes::parse(req.uri().path()) {
            Ok(p) => p,
            Err(e) => return (self.fail(Failure::BadPath(e), &cx.request_id), None),
        };
        if let Err(e) = set_path(&mut req, &path.wire) {
            return (self.fail(Failure::BadPath(e), &cx.request_id), None);
        }
        // A static upstream answers a front end's auth subrequest (the Traefik/Envoy pattern):
        // the app's request is what a trusted front end forwarded, not this request, and the
        // app gets it from the front end as the client sent it.
        let forward_auth = self
            .upstreams
            .route(&path.decoded)
            .is_some_and(|u| matches!(u.target, UpstreamTarget::Static(_)));
        let (skip, rule_path, original) = if forward_auth {
            match self.forwarded_app_request(&req, &as_sent, cx) {
                Ok((method, app_path, original)) => (self.cfg.routes.skips_as_sent(&method, &app_path), app_path.decoded, original),
                Err(e) => return (self.fail(Failure::BadPath(e), &cx.request_id), None),
            }
        } else {
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
            (self.cfg.routes.skips(req.method(), &path.decoded), path.decoded, pq)
        };
        if skip {
            headers::remove_all_spellings(req.headers_mut(), routes::METHOD_OVERRIDE_HEADERS);
            metrics::decision("skipped");
            return self.forward_unauthenticated(req, cx).await;
        }
        match self.bearer_session(cx).await {
            Some(Ok(session)) => return self.forward(req, cx, &session, &original).await,
            Some(Err(resp)) => return (resp, None),
            None => {}
        }
        let mut lookup = match self.session(req.headers(), cx).await {
            Ok(l) => l,
            Err(e) => return (self.fail(Failure::Store(e), &cx.request_id), None),
        };
        let Some(session) = lookup.session.take() else {
            metrics::decision("unauthenticated");
            let mut resp = if self.cfg.routes.is_api(&rule_path) {
                text(StatusCode::UNAUTHORIZED, "Unauthorized")
            } else {
                self.unauthenticated(&req, cx, original).await
            };
            lookup.add_cookies(&mut resp);
            return (resp, None);
        };
        let (mut resp, user) = self.forward(req, cx, &session, &original).await;
        lookup.add_cookies(&mut resp);
        (resp, user)
    }

    /// For a front end's auth subrequest: the app request's method, path (for the access
    /// rules) and the target to return to after signing in. Only a trusted front end's
    /// `X-Forwarded-Method`/`-Uri` count; otherwise the subrequest itself, as it arrived
    /// (`as_sent`), is the request.
    fn forwarded_app_request(
        &self,
        req: &Request<Incoming>,
        as_sent: &str,
        cx: &Ctx,
    ) -> Result<(Method, routes::RequestPath, String), routes::PathError> {
        let uri = cx.origin.uri.clone().unwrap_or_else(|| as_sent.to_string());
        let (method, path) = app_method_and_path(req, cx, &uri)?;
        Ok((method, path, self.return_target(cx, &uri)))
    }

    /// Where to send the browser after signing in, for an app URI on the original host: a
    /// local path when the callback is on that host, else the absolute URL (which must then
    /// pass `whitelist_domains`, as for any cross-host redirect).
    fn return_target(&self, cx: &Ctx, uri: &str) -> String {
        let callback_host = self
            .cfg
            .redirect_url
            .as_ref()
            .and_then(|u| u.host_str().map(|h| (h.to_string(), u.port())));
        let same_host = match (&callback_host, &cx.origin.host) {
            (None, _) | (_, None) => true,
            (Some((h, port)), Some(orig)) => {
                let expected = match port {
                    Some(p) => format!("{h}:{p}"),
                    None => h.clone(),
                };
                expected.eq_ignore_ascii_case(orig)
            }
        };
        match cx.origin.base_url() {
            Some(base) if !same_host => format!("{base}{uri}"),
            _ => uri.to_string(),
        }
    }

    /// A skip-auth request: no session is read and no identity is sent (client copies of the
    /// identity headers were already stripped); the proxy's cookies still stay here.
    async fn forward_unauthenticated(&self, mut req: Request<Incoming>, cx: &Ctx) -> (Response<Body>, Option<String>) {
        let Some(upstream) = self.upstreams.route(req.uri().path()) else {
            return (self.fail(Failure::Upstream(UpstreamError::NoRoute), &cx.request_id), None);
        };
        strip_own_cookies(req.headers_mut(), &self.cfg.cookie.name);
        match self
            .upstreams
            .serve(upstream, req, cx.peer, &cx.origin, self.cfg.pass_host_header)
            .await
        {
            Ok(resp) => (resp, None),
            Err(e) => (self.fail(Failure::Upstream(e), &cx.request_id), None),
        }
    }

    /// `original` is the app URL asked for: where a refused user who switches account returns.
    async fn forward(&self, mut req: Request<Incoming>, cx: &Ctx, session: &Session, original: &str) -> (Response<Body>, Option<String>) {
        if let Err(denial) = self.authz.authorize(&session.email, &session.groups) {
            metrics::decision("denied");
            self.auth_event("denied", &session.email, &denial.to_string());
            let failure = Failure::Denied {
                denial,
                account: session.email.clone(),
                retry: self.redirects.validate(original).unwrap_or_else(|| "/".into()),
            };
            return (self.fail(failure, &cx.request_id), Some(session.email.clone()));
        }
        metrics::decision("allowed");
        let Some(upstream) = self.upstreams.route(req.uri().path()) else {
            return (
                self.fail(Failure::Upstream(UpstreamError::NoRoute), &cx.request_id),
                Some(session.email.clone()),
            );
        };
        let h = req.headers_mut();
        strip_own_cookies(h, &self.cfg.cookie.name);
        headers::set_upstream_headers(h, &self.cfg.headers, session);
        let user = Some(session.email.clone());
        match self
            .upstreams
            .serve(upstream, req, cx.peer, &cx.origin, self.cfg.pass_host_header)
            .await
        {
            Ok(mut resp) => {
                headers::set_response_headers(resp.headers_mut(), &self.cfg.headers, session);
                (resp, user)
            }
            Err(e) => (self.fail(Failure::Upstream(e), &cx.request_id), user),
        }
    }

    /// No valid session: JSON clients get 401; browsers get the sign-in page (403), or go
    /// straight to the provider with `skip_provider_button`.
    async fn unauthenticated(&self, req: &Request<Incoming>, cx: &Ctx, original: String) -> Response<Body> {
        if wants_json_only(req.headers()) {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        if self.cfg.skip_provider_button {
            return self
                .start(req, cx, Some(original))
                .await
                .unwrap_or_else(|f| self.fail(f, &cx.request_id));
        }
        let rd = self.redirects.validate(&original).unwrap_or_else(|| "/".into());
        self.sign_in_page(req, cx, StatusCode::FORBIDDEN, Some(rd)).await
    }

    /// The sign-in page. Visiting it directly ends any current session, so a shared
    /// browser never keeps the previous user's session behind the page (CVE-2026-34454 class).
    /// `rd` is given for a protected page the user asked for; without it, this is the
    /// `/sign_in` endpoint, which takes `rd` from the query and ends the current session:
    /// the cookie, and with Redis the stored session, which a copy of the cookie would
    /// otherwise still open.
    async fn sign_in_page(&self, req: &Request<Incoming>, cx: &Ctx, status: StatusCode, rd: Option<String>) -> Response<Body> {
        let clear_session = rd.is_none();
        let rd = rd.or_else(|| self.requested_redirect(req, cx)).unwrap_or_else(|| "/".into());
        let body = pages::sign_in(
            &self.paths.start,
            &rd,
            &self.oidc.config().display_name,
            self.cfg.banner.as_deref(),
            self.cfg.footer.as_deref(),
        );
        let mut resp = html(status, body);
        if clear_session {
            let cookies = RequestCookies::parse(req.headers());
            self.end_stored_sessions(&cookies, "the sign-in page").await;
            let writer = self.cookie_writer(cx);
            for c in writer.clear_session(&cookies) {
                resp.headers_mut().append(header::SET_COOKIE, c);
            }
        }
        resp
    }

    /// Starts a login: state, nonce and PKCE verifier sealed into a CSRF cookie, then off
    /// to the provider.
    async fn start(&self, req: &Request<Incoming>, cx: &Ctx, target: Option<String>) -> Result<Response<Body>, Failure> {
        let rd = match target {
            Some(t) => self.redirects.validate(&t),
            None => self.requested_redirect(req, cx),
        }
        .unwrap_or_else(|| "/".into());
        let discovered = self.oidc.ensure().await?;
        if self.secure_cookie_dropped(cx) && !self.warned_plain_http.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                host = cx.origin.host.as_deref().unwrap_or(""),
                "a sign-in started over plain http while cookie_secure=true: browsers drop Secure cookies there, so it will fail; serve https, or set cookie_secure=false for plain-http testing"
            );
        }
        let state = random_token();
        let nonce = random_token();
        let (challenge, verifier) = if self.oidc.config().pkce {
            let (c, v) = openidconnect::PkceCodeChallenge::new_random_sha256();
            (Some(c.as_str().to_string()), Some(v.secret().clone()))
        } else {
            (None, None)
        };
        let redirect_uri = self.redirect_uri(cx);
        // "Sign in as someone else" on the access-denied page: the provider must ask again
        // rather than silently reuse the session that was just refused. Only this one value
        // is taken from the query; `prompt` otherwise stays the operator's setting.
        let prompt = (query_param(req.uri().query(), "prompt").as_deref() == Some("login")).then_some("login");
        let url = self
            .oidc
            .authorization_url(&discovered, &redirect_uri, &state, &nonce, challenge.as_deref(), prompt);
        let now = unix((self.clock)());
        let login = LoginState {
            state: state.clone(),
            nonce,
            pkce_verifier: verifier,
            redirect: rd,
            redirect_uri,
            expires_at: now + self.cfg.cookie.csrf_expire.as_secs(),
        };
        let name = self.csrf_cookie_name(&state);
        let writer = self.cookie_writer(cx);
        let mut resp = redirect(url.as_str());
        resp.headers_mut().append(
            header::SET_COOKIE,
            writer.set_csrf(&name, &self.csrf.seal(&name, &login), self.cfg.cookie.csrf_expire.as_secs()),
        );
        Ok(resp)
    }

    async fn callback(&self, req: &Request<Incoming>, cx: &Ctx) -> Result<Response<Body>, Failure> {
        let query = req.uri().query();
        let state = query_param(query, "state").ok_or(Failure::LoginState)?;
        let csrf_name = self.csrf_cookie_name(&state);
        let cookies = RequestCookies::parse(req.headers());
        let writer = self.cookie_writer(cx);
        let Some(sealed) = cookies.get(&csrf_name) else {
            return Err(if self.secure_cookie_dropped(cx) {
                Failure::SecureCookieOverHttp
            } else {
                Failure::LoginState
            });
        };
        let login: LoginState = self.csrf.open(&csrf_name, sealed).map_err(|_| Failure::LoginState)?;
        // The CSRF cookie is single-use whatever happens next.
        let clear_csrf = writer.clear(&csrf_name);
        let result = self.finish_login(query, &state, &login, &cookies, &writer).await;
        let mut resp = result.unwrap_or_else(|f| {
            if let Failure::Denied { denial, account, .. } = &f {
                self.auth_event("denied", account, &denial.to_string());
            }
            self.fail(f, &cx.request_id)
        });
        resp.headers_mut().append(header::SET_COOKIE, clear_csrf);
        Ok(resp)
    }

    async fn finish_login(
        &self,
        query: Option<&str>,
        state: &str,
        login: &LoginState,
        cookies: &RequestCookies<'_>,
        writer: &CookieWriter<'_>,
    ) -> Result<Response<Body>, Failure> {
        let now = unix((self.clock)());
        if !bool::from(login.state.as_bytes().ct_eq(state.as_bytes())) || now >= login.expires_at {
            return Err(Failure::LoginState);
        }
        if let Some(error) = query_param(query, "error") {
            let description = query_param(query, "error_description")
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            return Err(Failure::ProviderRedirect(format!("{error}{description}")));
        }
        let code = query_param(query, "code").ok_or(Failure::BadRequest("the callback has no code"))?;
        let discovered = self.oidc.ensure().await?;
        self.oidc.check_response_issuer(&discovered, query_param(query, "iss").as_deref())?;
        // A failure is logged once, with the request id, where the page is made (`fail`).
        let identity = self
            .oidc
            .redeem(&code, &login.redirect_uri, login.pkce_verifier.as_deref(), &login.nonce)
            .await?;
        self.authz
            .authorize(&identity.email, &identity.groups)
            .map_err(|denial| Failure::Denied {
                denial,
                account: identity.email.clone(),
                retry: login.redirect.clone(),
            })?;
        let mut session = Session {
            user: identity.user,
            email: identity.email,
            preferred_username: identity.preferred_username,
            groups: identity.groups,
            created_at: now,
            expires_at: now + self.cfg.cookie.expire.as_secs(),
            access_token: identity.access_token,
            id_token: identity.id_token,
            refresh_token: identity.refresh_token,
            tokens_expire_at: identity.tokens_expire_at,
            refreshed_at: now,
            groups_from_graph: identity.groups_from_graph,
        };
        if self.cfg.cookie.minimal {
            session = session.minimal();
        }
        // A login always starts a new session (a new ticket with Redis); the ones it replaces
        // are deleted rather than left valid until they expire.
        self.end_stored_sessions(cookies, "a new login").await;
        let sealed = self
            .sessions
            .save(&session, None, now)
            .await?
            .expect("a new session always has a cookie value");
        self.auth_event("login", &session.email, "authenticated");
        let mut resp = redirect(&login.redirect);
        for c in writer.set_session(cookies, &sealed, self.cfg.cookie.expire.as_secs()) {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        Ok(resp)
    }

    /// Ends the session: cookies cleared, `backend_logout_url` called, and with
    /// `oidc_logout` the browser continues to the provider's end-session endpoint, which
    /// sends it back to the validated `rd`.
    async fn sign_out(&self, req: &Request<Incoming>, cx: &Ctx) -> Response<Body> {
        let rd = self.requested_redirect(req, cx).unwrap_or_else(|| self.paths.signed_out.clone());
        let cookies = RequestCookies::parse(req.headers());
        let writer = self.cookie_writer(cx);
        let loaded = match self.load_session(req.headers()).await {
            Ok(l) => l,
            Err(e) => {
                // The cookies are still cleared below; the Redis entry expires by itself.
                tracing::warn!(error = %e, "sign-out could not reach the session store");
                None
            }
        };
        if let Some(l) = &loaded {
            self.auth_event("logout", &l.session.email, "signed out");
        }
        self.end_stored_sessions(&cookies, "sign-out").await;
        let id_token = loaded.as_ref().and_then(|l| l.session.id_token.clone());
        if let (Some(template), Some(token)) = (&self.cfg.sign_out.backend_logout_url, &id_token) {
            let url = template.replace("{id_token}", &utf8_percent_encode(token, UNRESERVED).to_string());
            match self.oidc.backend_logout(&url).await {
                Ok(status) if status.is_success() || status.is_redirection() => {}
                Ok(status) => tracing::warn!(status = status.as_u16(), "backend_logout_url answered with an error"),
                Err(e) => tracing::warn!(error = %e, "backend_logout_url could not be called"),
            }
        }
        let location = match (self.cfg.sign_out.at_provider, self.oidc.current()) {
            (true, Some(discovered)) => {
                let back = match cx.origin.base_url() {
                    Some(base) if rd.starts_with('/') => format!("{base}{rd}"),
                    _ => rd.clone(),
                };
                self.oidc
                    .end_session_url(&discovered, id_token.as_deref(), &back)
                    .map(String::from)
                    .unwrap_or(rd)
            }
            _ => rd,
        };
        let mut resp = redirect(&location);
        for c in writer.clear_session(&cookies) {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        for name in cookies
            .names()
            .filter(|n| n.starts_with(self.cfg.cookie.name.as_str()) && n.ends_with("_csrf"))
        {
            resp.headers_mut().append(header::SET_COOKIE, writer.clear(name));
        }
        resp
    }

    async fn userinfo(&self, req: &Request<Incoming>, cx: &Ctx) -> Response<Body> {
        let mut lookup = match self.session(req.headers(), cx).await {
            Ok(l) => l,
            Err(e) => return self.fail(Failure::Store(e), &cx.request_id),
        };
        let mut resp = match lookup.session.take().filter(|s| self.authz.authorize(&s.email, &s.groups).is_ok()) {
            Some(s) => {
                let body = serde_json::json!({
                    "user": s.user,
                    "email": s.email,
                    "groups": s.groups,
                    "preferredUsername": s.preferred_username,
                });
                let mut resp = Response::new(full(body.to_string()));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            None => text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        };
        lookup.add_cookies(&mut resp);
        resp
    }

    /// Forward-auth: `auth_success_status` (202) with identity response headers for a valid,
    /// authorized session; 401 without one; 403 when the proxy's rules or the query's
    /// constraints (`allowed_groups`, `allowed_emails`, `allowed_email_domains`) refuse it.
    /// A refreshed session's cookies ride on this response, so the front end can pass them on.
    ///
    /// The app request is the trusted front end's `X-Forwarded-Uri`, or the path below
    /// `/oauth2/auth/` (Envoy's ext_authz appends the original path to the auth URL); the
    /// skip-auth and API rules apply to it.
    async fn auth(&self, req: &Request<Incoming>, cx: &Ctx) -> (Response<Body>, Option<String>) {
        let app_uri = cx.origin.uri.clone().or_else(|| {
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
            pq.strip_prefix(self.paths.auth_subtree.as_str()).map(|rest| format!("/{rest}"))
        });
        if let Some(uri) = &app_uri {
            let (method, path) = match app_method_and_path(req, cx, uri) {
                Ok(mp) => mp,
                Err(e) => return (self.fail(Failure::BadPath(e), &cx.request_id), None),
            };
            if self.cfg.routes.skips_as_sent(&method, &path) {
                metrics::decision("skipped");
                return (text(self.cfg.auth_success_status, ""), None);
            }
        }
        let constraints = Constraints::from_query(req.uri().query());
        let mut lookup = match self.bearer_session(cx).await {
            Some(Ok(session)) => Lookup {
                session: Some(Arc::new(session)),
                set_cookies: vec![],
            },
            Some(Err(resp)) => return (resp, None),
            None => match self.session(req.headers(), cx).await {
                Ok(l) => l,
                Err(e) => return (self.fail(Failure::Store(e), &cx.request_id), None),
            },
        };
        let (mut resp, user) = match lookup.session.take() {
            Some(s) => match self
                .authz
                .authorize(&s.email, &s.groups)
                .and_then(|()| constraints.check(&s.email, &s.groups))
            {
                Ok(()) => {
                    metrics::decision("allowed");
                    let mut resp = text(self.cfg.auth_success_status, "");
                    headers::set_response_headers(resp.headers_mut(), &self.cfg.headers, &s);
                    (resp, Some(s.email.clone()))
                }
                Err(denial) => {
                    metrics::decision("denied");
                    self.auth_event("denied", &s.email, &denial.to_string());
                    (text(StatusCode::FORBIDDEN, "Forbidden"), Some(s.email.clone()))
                }
            },
            None => {
                metrics::decision("unauthenticated");
                (text(StatusCode::UNAUTHORIZED, "Unauthorized"), None)
            }
        };
        lookup.add_cookies(&mut resp);
        (resp, user)
    }

    /// The request's session, refreshed first when it is due. Refreshes are single-flight per
    /// refresh token in this process and, with Redis, per session across replicas; a refused
    /// refresh ends the session (cookies cleared, Redis entry deleted), an unreachable
    /// provider leaves it standing until its tokens expire.
    async fn session(&self, headers: &HeaderMap, cx: &Ctx) -> Result<Lookup, StoreError> {
        let Some(Loaded { session, ticket }) = self.load_session(headers).await? else {
            return Ok(Lookup {
                session: None,
                set_cookies: vec![],
            });
        };
        let now = unix((self.clock)());
        let Some(refresh_token) = session
            .refresh_token
            .clone()
            .filter(|_| refresh::due(&session, now, self.cfg.cookie.refresh))
        else {
            return Ok(Lookup {
                session: Some(session),
                set_cookies: vec![],
            });
        };
        let outcome = self
            .refreshes
            .run(&refresh_token, || self.refresh_session(&session, ticket.as_ref(), &refresh_token))
            .await;
        let cookies = RequestCookies::parse(headers);
        let writer = self.cookie_writer(cx);
        Ok(match &*outcome {
            Outcome::Refreshed(fresh) => {
                // Only the cookie store changes the cookie on refresh; a Redis ticket stays.
                let set_cookies = if self.sessions.is_redis() {
                    vec![]
                } else {
                    let sealed = self
                        .sessions
                        .save(fresh, None, now)
                        .await?
                        .expect("the cookie store always returns a value");
                    writer.set_session(&cookies, &sealed, fresh.expires_at.saturating_sub(now))
                };
                Lookup {
                    session: Some(Arc::new(fresh.clone())),
                    set_cookies,
                }
            }
            Outcome::Ended(why) => {
                self.auth_event("refresh_failed", &session.email, &format!("session ended: {why}"));
                if let Err(e) = self.sessions.delete(ticket.as_ref()).await {
                    tracing::warn!(error = %e, "could not delete an ended session; it expires by itself");
                }
                Lookup {
                    session: None,
                    set_cookies: writer.clear_session(&cookies),
                }
            }
            Outcome::Unavailable(why) => {
                let tokens_valid = session.tokens_expire_at.is_none_or(|exp| now < exp);
                tracing::warn!(error = %why, keeping_session = tokens_valid, "token refresh failed");
                // A session whose cookie is cleared is over: a copy of the cookie must not
                // revive it once the provider answers again.
                if !tokens_valid && let Err(e) = self.sessions.delete(ticket.as_ref()).await {
                    tracing::warn!(error = %e, "could not delete an ended session; it expires by itself");
                }
                Lookup {
                    session: tokens_valid.then_some(session),
                    set_cookies: if tokens_valid { vec![] } else { writer.clear_session(&cookies) },
                }
            }
        })
    }

    /// One refresh of one session (run once per refresh token by [`SingleFlight`]). With
    /// Redis the refreshed session is stored under the lock, and a replica that finds the
    /// lock taken waits for the other's result instead of spending the refresh token twice.
    async fn refresh_session(&self, session: &Session, ticket: Option<&Ticket>, refresh_token: &str) -> Outcome {
        match self.sessions.lock_refresh(ticket).await {
            Ok(true) => {}
            Ok(false) => {
                let t = ticket.expect("only Redis sessions can find the lock taken");
                return match self.sessions.wait_for_refresh(t, session.refreshed_at).await {
                    Ok(Some(fresh)) => Outcome::Refreshed(fresh),
                    Ok(None) => Outcome::Unavailable("another replica's refresh of this session did not finish in time".into()),
                    Err(e) => Outcome::Unavailable(e.to_string()),
                };
            }
            Err(e) => return Outcome::Unavailable(e.to_string()),
        }
        let outcome = match self.oidc.refresh(refresh_token, session.groups_from_graph).await {
            Ok(r) => {
                self.auth_event("refresh", &session.email, "tokens refreshed");
                let now = unix((self.clock)());
                let fresh = refresh::apply(session, r, now);
                match ticket {
                    Some(t) => match self.sessions.update(&fresh, t, now).await {
                        Ok(true) => Outcome::Refreshed(fresh),
                        Ok(false) => Outcome::Ended("the session was ended while it was being refreshed".into()),
                        Err(e) => Outcome::Unavailable(format!("the refreshed session could not be stored: {e}")),
                    },
                    None => Outcome::Refreshed(fresh),
                }
            }
            Err(e @ (OidcError::Unavailable(_) | OidcError::TokenTransport(_) | OidcError::ClientAuth(_) | OidcError::Graph(_))) => {
                Outcome::Unavailable(e.to_string())
            }
            Err(e) => Outcome::Ended(e.to_string()),
        };
        self.sessions.unlock_refresh(ticket).await;
        metrics::refresh(match &outcome {
            Outcome::Refreshed(_) => "refreshed",
            Outcome::Ended(_) => "ended",
            Outcome::Unavailable(_) => "unavailable",
        });
        outcome
    }

    /// With `skip_jwt_bearer_tokens` and a bearer JWT: the session it proves, or a 401 for
    /// an API client whose token does not verify. `None` when there is no bearer token.
    async fn bearer_session(&self, cx: &Ctx) -> Option<Result<Session, Response<Body>>> {
        let (verifier, token) = (self.bearer.as_ref()?, cx.bearer.as_deref()?);
        Some(match verifier.verify(token, unix((self.clock)())).await {
            Ok(session) => Ok(session),
            Err(e) => {
                metrics::decision("unauthenticated");
                self.auth_event("denied", "", &format!("bearer token refused: {e}"));
                let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized");
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
                Err(resp)
            }
        })
    }

    /// Whether a client credential can be produced (a federated token file is mounted and
    /// non-empty). Changes are logged once, naming the path and the likely cause.
    pub fn credential_usable(&self) -> bool {
        use std::sync::atomic::Ordering;
        let result = self.oidc.config().client_auth.check();
        let ok = result.is_ok();
        if self.credential_ok.swap(ok, Ordering::Relaxed) != ok {
            match result {
                Ok(()) => tracing::info!("client credential available again"),
                Err(e) => tracing::error!(error = %e, "client credential unavailable; /ready reports 503 until it is fixed"),
            }
        }
        ok
    }

    /// Deletes every stored (Redis) session the request's cookies name; the caller clears
    /// the cookies. Redis being down is logged, not fatal: the entry then expires by itself.
    async fn end_stored_sessions(&self, cookies: &RequestCookies<'_>, by: &str) {
        let values = cookies.every_session_value(&self.cfg.cookie.name);
        if let Err(e) = self.sessions.delete_named(&values).await {
            tracing::warn!(error = %e, by, "could not delete a replaced or ended session from the store; it expires by itself");
        }
    }

    /// The session from the request's cookies; see [`Sessions::load`].
    async fn load_session(&self, headers: &HeaderMap) -> Result<Option<Loaded>, StoreError> {
        self.load_session_from(&RequestCookies::parse(headers)).await
    }

    async fn load_session_from(&self, cookies: &RequestCookies<'_>) -> Result<Option<Loaded>, StoreError> {
        let values = cookies.session_values(&self.cfg.cookie.name);
        if values.is_empty() {
            return Ok(None);
        }
        self.sessions.load(&values, unix((self.clock)())).await
    }

    fn csrf_cookie_name(&self, state: &str) -> String {
        if self.cfg.cookie.csrf_per_request {
            let digest = sha2::Sha256::digest(state.as_bytes());
            format!("{}_{}_csrf", self.cfg.cookie.name, hex8(&digest))
        } else {
            format!("{}_csrf", self.cfg.cookie.name)
        }
    }

    fn cookie_writer(&self, cx: &Ctx) -> CookieWriter<'_> {
        CookieWriter::new(&self.cfg.cookie, cx.origin.host.as_deref().unwrap_or(""))
    }

    /// The callback URL sent to the provider: `redirect_url`, else derived from the original
    /// request (a trusted front end's scheme and host).
    fn redirect_uri(&self, cx: &Ctx) -> String {
        match &self.cfg.redirect_url {
            Some(u) => u.to_string(),
            None => format!(
                "{}{}",
                cx.origin.base_url().unwrap_or_else(|| "http://localhost".into()),
                self.paths.callback
            ),
        }
    }

    /// The validated `rd` of `/start`, `/sign_in` and `/sign_out`: the query's, else a
    /// trusted front end's `X-Auth-Request-Redirect` (nginx sets it to `$request_uri`).
    fn requested_redirect(&self, req: &Request<Incoming>, cx: &Ctx) -> Option<String> {
        query_param(req.uri().query(), "rd")
            .or_else(|| cx.origin.auth_redirect.clone())
            .and_then(|rd| self.redirects.validate(&rd))
    }

    /// Whether a browser dropped our `Secure` cookies: the request came over plain http to a
    /// host browsers do not treat as a secure context (loopback names they do).
    /// With `redirect_url` set (the controller sets it whenever a route has a hostname) the
    /// browser's side is that URL: a sidecar behind a TLS gateway sees plain http from an
    /// untrusted peer, and must not blame plain http for an ordinary expired login.
    fn secure_cookie_dropped(&self, cx: &Ctx) -> bool {
        let (scheme, host) = match &self.cfg.redirect_url {
            Some(u) => (u.scheme(), u.host_str().unwrap_or("").to_string()),
            None => {
                let host = cx.origin.host.as_deref().unwrap_or("");
                let hostname = match host.rsplit_once(':') {
                    Some((h, port)) if !h.ends_with(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
                    _ => host,
                };
                (cx.origin.scheme, hostname.to_string())
            }
        };
        let loopback = host == "localhost"
            || host.ends_with(".localhost")
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        self.cfg.cookie.secure && scheme == "http" && !loopback
    }

    fn request_id(&self, headers: &HeaderMap) -> HeaderValue {
        headers
            .get(&self.cfg.logging.request_id_header)
            .filter(|v| v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
            .cloned()
            .unwrap_or_else(|| {
                let mut id = [0u8; 12];
                rand::thread_rng().fill_bytes(&mut id);
                HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(id)).expect("base64url is header-safe")
            })
    }

    fn fail(&self, failure: Failure, request_id: &HeaderValue) -> Response<Body> {
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

    fn auth_event(&self, event: &str, email: &str, detail: &str) {
        if self.cfg.logging.auth {
            tracing::info!(target: "sidekey::auth", event, email, detail, "auth");
        }
    }

    fn log_request(&self, meta: &Ctx, status: StatusCode, user: Option<&str>) {
        let log = &self.cfg.logging;
        if !log.request
            || (log.silence_ping && (meta.path == self.cfg.ping_path || meta.path == self.cfg.ready_path))
            || log.exclude_paths.contains(&meta.path)
        {
            return;
        }
        // The path only: queries carry codes and state.
        tracing::info!(
            target: "sidekey::request",
            method = %meta.method,
            path = %meta.path,
            status = status.as_u16(),
            duration_ms = meta.started.elapsed().as_secs_f64() * 1000.0,
            user = user.unwrap_or("-"),
            client = %meta.origin.client,
            request_id = meta.request_id.to_str().unwrap_or(""),
            "request"
        );
    }
}

impl CookieWriter<'_> {
    /// The CSRF cookie must come back on the provider's cross-site redirect, so it is never
    /// `SameSite=Strict` even when the session cookie is.
    fn set_csrf(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        self.set_with_samesite(name, value, max_age, |s| if s == SameSite::Strict { SameSite::Lax } else { s })
    }
}

/// The proxy's own cookies never reach the application.
fn strip_own_cookies(h: &mut HeaderMap, cookie_name: &str) {
    if let Some(cookie) = strip_proxy_cookies(h, cookie_name) {
        h.remove(header::COOKIE);
        if let Some(kept) = cookie {
            h.insert(header::COOKIE, kept);
        }
    }
}

/// The app request's method (a trusted front end's `X-Forwarded-Method`, else this
/// request's) and its path, for the access rules.
fn app_method_and_path(req: &Request<Incoming>, cx: &Ctx, uri: &str) -> Result<(Method, routes::RequestPath), routes::PathError> {
    let path = routes::parse(uri.split(['?', '#']).next().unwrap_or("/"))?;
    let method = cx
        .origin
        .trusted
        .then(|| req.headers().get("x-forwarded-method"))
        .flatten()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or_else(|| req.method().clone());
    Ok((method, path))
}

/// Replaces the request's path, keeping its query.
fn set_path(req: &mut Request<Incoming>, path: &str) -> Result<(), routes::PathError> {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| routes::PathError::Control)?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| routes::PathError::Control)?;
    Ok(())
}

fn wants_json_only(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn hex8(digest: &[u8]) -> String {
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
    resp
}

fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(crate::body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    resp
}
