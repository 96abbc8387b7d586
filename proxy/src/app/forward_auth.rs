//! The endpoints a front end asks instead of proxying through us: `/oauth2/auth` (202 with
//! identity headers, or 401; nginx `auth_request`, Caddy `forward_auth`, Traefik
//! `forwardAuth`) and `/oauth2/userinfo`.

use super::*;

impl App {
    /// Forward-auth: `auth_success_status` (202) with identity response headers for a valid,
    /// authorized session; 401 without one; 403 when the proxy's rules or the query's
    /// constraints (`allowed_groups`, `allowed_emails`, `allowed_email_domains`) refuse it.
    /// A refreshed session's cookies ride on this response, so the front end can pass them on.
    ///
    /// The app request is the trusted front end's `X-Forwarded-Uri`, or the path below
    /// `/oauth2/auth/` (Envoy's ext_authz appends the original path to the auth URL); the
    /// skip-auth and API rules apply to it.
    pub(super) async fn auth(&self, req: &Request<Incoming>, cx: &Ctx) -> (Response<Body>, Option<String>) {
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
        let mut lookup = match self.bearer_session(cx).instrument(cx.span()).await {
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
                    cx.span().in_scope(|| self.auth_event("denied", &s.email, &denial.to_string()));
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

    pub(super) async fn userinfo(&self, req: &Request<Incoming>, cx: &Ctx) -> Response<Body> {
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
}
