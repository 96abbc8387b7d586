//! The sign-in flow: the sign-in page, `/oauth2/start` (state, nonce, PKCE, the CSRF
//! cookie), `/oauth2/callback` (the code redeemed, the identity authorized, the session
//! cookie set) and `/oauth2/sign_out`.

use super::*;

impl CookieWriter<'_> {
    /// The CSRF cookie must come back on the provider's cross-site redirect, so it is never
    /// `SameSite=Strict` even when the session cookie is.
    fn set_csrf(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        self.set_with_samesite(name, value, max_age, |s| if s == SameSite::Strict { SameSite::Lax } else { s })
    }
}

impl App {
    /// No valid session: JSON clients get 401; browsers get the sign-in page (403), or go
    /// straight to the provider with `skip_provider_button`.
    pub(super) async fn unauthenticated(&self, req: &Request<Incoming>, cx: &Ctx, original: String) -> Response<Body> {
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
    pub(super) async fn sign_in_page(&self, req: &Request<Incoming>, cx: &Ctx, status: StatusCode, rd: Option<String>) -> Response<Body> {
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
    pub(super) async fn start(&self, req: &Request<Incoming>, cx: &Ctx, target: Option<String>) -> Result<Response<Body>, Failure> {
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
            nonce: nonce.into(),
            pkce_verifier: verifier.map(Secret::new),
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

    pub(super) async fn callback(&self, req: &Request<Incoming>, cx: &Ctx) -> Result<Response<Body>, Failure> {
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

    pub(super) async fn finish_login(
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
            .redeem(&code, &login.redirect_uri, login.pkce_verifier.exposed(), login.nonce.expose_str())
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
    pub(super) async fn sign_out(&self, req: &Request<Incoming>, cx: &Ctx) -> Response<Body> {
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
            let url = template.replace("{id_token}", &utf8_percent_encode(token.expose_str(), UNRESERVED).to_string());
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
                    .end_session_url(&discovered, id_token.exposed(), &back)
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

    pub(super) fn csrf_cookie_name(&self, state: &str) -> String {
        if self.cfg.cookie.csrf_per_request {
            let digest = sha2::Sha256::digest(state.as_bytes());
            format!("{}_{}_csrf", self.cfg.cookie.name, hex8(&digest))
        } else {
            format!("{}_csrf", self.cfg.cookie.name)
        }
    }

    /// The callback URL sent to the provider: `redirect_url`, else derived from the original
    /// request (a trusted front end's scheme and host).
    pub(super) fn redirect_uri(&self, cx: &Ctx) -> String {
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
    pub(super) fn requested_redirect(&self, req: &Request<Incoming>, cx: &Ctx) -> Option<String> {
        query_param(req.uri().query(), "rd")
            .or_else(|| cx.origin.auth_redirect.clone())
            .and_then(|rd| self.redirects.validate(&rd))
    }

    /// Whether a browser dropped our `Secure` cookies: the request came over plain http to a
    /// host browsers do not treat as a secure context (loopback names they do).
    /// With `redirect_url` set (the controller sets it whenever a route has a hostname) the
    /// browser's side is that URL: a sidecar behind a TLS gateway sees plain http from an
    /// untrusted peer, and must not blame plain http for an ordinary expired login.
    pub(super) fn secure_cookie_dropped(&self, cx: &Ctx) -> bool {
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
}
