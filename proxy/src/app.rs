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
use crate::launch::StartError;
use crate::metrics;
use crate::oidc::{Clock, Fault, Oidc, OidcError, unix};
use crate::pages;
use crate::redirect::RedirectPolicy;
use crate::refresh::{self, Outcome, SingleFlight};
use crate::routes;
use crate::secret::{Exposed, Secret};
use crate::session::codec::{Purpose, Sealer};
use crate::session::cookies::{CookieWriter, RequestCookies, strip_proxy_cookies};
use crate::session::store::{Loaded, RedisStore, Sessions, StoreError, Ticket};
use crate::session::{LoginState, Session};
use crate::upstream::{UpstreamError, Upstreams};

mod endpoints;
mod failure;
mod forward_auth;
mod identity_memo;
mod login;
mod responses;
mod sessions;

use endpoints::{Endpoint, Paths};
use failure::Failure;
use identity_memo::IdentityMemo;
use responses::{html, redirect, text};
use sessions::Lookup;

/// RFC 3986 unreserved characters stay as they are (a JWT needs no escaping).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

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
    /// The identity headers of cached sessions.
    identity: IdentityMemo,
    /// Whether the client credential was usable at the last look, to log changes once.
    credential_ok: std::sync::atomic::AtomicBool,
    /// Whether the session store answered the last readiness probe, to log changes once.
    store_ok: std::sync::atomic::AtomicBool,
    /// Whether the plain-http-with-Secure-cookies warning was logged (once per process).
    warned_plain_http: std::sync::atomic::AtomicBool,
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
    /// The request's span, made when first needed: see [`Ctx::span`].
    span: std::sync::OnceLock<tracing::Span>,
}

impl Ctx {
    /// The span that gives every event while handling the request its id. Made only when
    /// something may log: a signed-in request forwarded as it is logs nothing, and creating
    /// the span on every request cost about 4% of the proxy's CPU (BENCHMARKS.md).
    fn span(&self) -> tracing::Span {
        self.span
            .get_or_init(
                || tracing::info_span!(target: "sidekey::request", "request", request_id = %self.request_id.to_str().unwrap_or("")),
            )
            .clone()
    }
}

impl App {
    /// `workers`: how many server workers will call [`App::handle`] (one upstream connection
    /// pool each).
    pub fn new(cfg: Config, oidc: Arc<Oidc>, clock: Clock, workers: usize) -> Result<Self, StartError> {
        let mut emails: HashSet<String> = match &cfg.authz.emails_file {
            Some(path) => Authorizer::read_emails_file(path).map_err(|source| StartError::EmailsFile {
                path: path.clone(),
                source,
            })?,
            None => HashSet::new(),
        };
        emails.extend(cfg.authz.allowed_emails.iter().cloned());
        let paths = Paths::new(&cfg.proxy_prefix);
        Ok(App {
            authz: Authorizer::new(&cfg.authz.email_domains, emails, &cfg.authz.allowed_groups),
            redirects: RedirectPolicy::new(&cfg.whitelist_domains),
            sessions: Sessions::new(
                &cfg.cookie.name,
                cfg.cookie.secret.expose(),
                cfg.redis.as_ref().map(RedisStore::new).transpose()?,
                workers,
            ),
            csrf: Sealer::new(cfg.cookie.secret.expose(), Purpose::Csrf),
            upstreams: Upstreams::new(cfg.upstreams.clone(), cfg.upstream_timeout, workers),
            oidc,
            clock,
            paths,
            refreshes: SingleFlight::default(),
            bearer: None,
            identity: IdentityMemo::new(workers),
            credential_ok: std::sync::atomic::AtomicBool::new(true),
            store_ok: std::sync::atomic::AtomicBool::new(true),
            warned_plain_http: std::sync::atomic::AtomicBool::new(false),
            cfg,
        })
    }

    /// The deadlines the server holds this app's client connections to.
    pub fn limits(&self) -> crate::config::ConnectionLimits {
        self.cfg.limits
    }

    /// Called on a worker whose clients have all gone quiet: closes the worker's idle
    /// upstream connections.
    pub fn close_idle(&self) {
        self.upstreams.close_idle();
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
            span: std::sync::OnceLock::new(),
        };
        req.headers_mut()
            .insert(self.cfg.logging.request_id_header.clone(), cx.request_id.clone());

        let (mut resp, user) = self.dispatch(req, &cx).await;
        resp.headers_mut()
            .insert(self.cfg.logging.request_id_header.clone(), cx.request_id.clone());
        self.log_request(&cx, resp.status(), user.as_deref());
        metrics::request(self.endpoint(&cx.path).metric_label(), resp.status().as_u16(), cx.started.elapsed());
        resp
    }

    /// Sends the request to its endpoint: the proxy's own pages, or the protected app. Every
    /// event while handling the request (auth events, provider and store errors) carries its
    /// id: the proxy's endpoints run in the request's span, and [`App::protected`] enters it
    /// wherever something may log.
    async fn dispatch(&self, req: Request<Incoming>, cx: &Ctx) -> (Response<Body>, Option<String>) {
        if req.method() == Method::CONNECT {
            return (crate::upgrade::connect_refused(), None);
        }
        match self.endpoint(req.uri().path()) {
            Endpoint::App => self.protected(req, cx).await,
            // Probes, every few seconds: they log only changes of state, which need no id.
            Endpoint::Ping => (text(StatusCode::OK, "OK"), None),
            Endpoint::Ready => (self.ready().await, None),
            // The forward-auth answer runs on every request of the app behind a front end;
            // like `protected`, it enters the span where something may log.
            Endpoint::Auth => self.auth(&req, cx).await,
            endpoint => self.endpoint_of_ours(endpoint, req, cx).instrument(cx.span()).await,
        }
    }

    async fn endpoint_of_ours(&self, endpoint: Endpoint, req: Request<Incoming>, cx: &Ctx) -> (Response<Body>, Option<String>) {
        let result = match endpoint {
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
            .for_path(&path.decoded)
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
        match self.bearer_session(cx).instrument(cx.span()).await {
            // A bearer token's session is made per request: nothing to remember.
            Some(Ok(session)) => return self.forward(req, cx, &Arc::new(session), false, &original).await,
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
                self.unauthenticated(&req, cx, original).instrument(cx.span()).await
            };
            lookup.add_cookies(&mut resp);
            return (resp, None);
        };
        // Cookie sessions come from the opened-cookie cache, the same `Arc` for the same
        // cookie; a Redis session is read afresh every time.
        let remembered = !self.sessions.is_redis();
        let (mut resp, user) = self.forward(req, cx, &session, remembered, &original).await;
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
        let Some(upstream) = self.upstreams.for_path(req.uri().path()) else {
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
    /// `remembered`: the session is the opened-cookie cache's, so its identity headers are
    /// made once ([`IdentityMemo`]).
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        cx: &Ctx,
        session: &Arc<Session>,
        remembered: bool,
        original: &str,
    ) -> (Response<Body>, Option<String>) {
        if let Err(denial) = self.authz.authorize(&session.email, &session.groups) {
            metrics::decision("denied");
            cx.span()
                .in_scope(|| self.auth_event("denied", &session.email, &denial.to_string()));
            let failure = Failure::Denied {
                denial,
                account: session.email.clone(),
                retry: self.redirects.validate(original).unwrap_or_else(|| "/".into()),
            };
            return (self.fail(failure, &cx.request_id), Some(session.email.clone()));
        }
        metrics::decision("allowed");
        let Some(upstream) = self.upstreams.for_path(req.uri().path()) else {
            return (
                self.fail(Failure::Upstream(UpstreamError::NoRoute), &cx.request_id),
                Some(session.email.clone()),
            );
        };
        let h = req.headers_mut();
        strip_own_cookies(h, &self.cfg.cookie.name);
        if remembered {
            self.identity.set(h, &self.cfg.headers, session);
        } else {
            headers::set_upstream_headers(h, &self.cfg.headers, session);
        }
        let user = Some(session.email.clone());
        // Not in the request's span: forwarding logs only at debug level, and its failures
        // are logged by `fail` with the request id.
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

    fn cookie_writer(&self, cx: &Ctx) -> CookieWriter<'_> {
        CookieWriter::new(&self.cfg.cookie, cx.origin.host.as_deref().unwrap_or(""))
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
