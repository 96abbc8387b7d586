//! The session a request carries: read from its cookies (or its Redis ticket), refreshed
//! once when due, or taken from a bearer JWT; and ended everywhere on sign-out.

use super::*;

/// The request's session after any refresh, and the cookies that refresh (or its failure) sets.
pub(super) struct Lookup {
    pub(super) session: Option<Arc<Session>>,
    pub(super) set_cookies: Vec<HeaderValue>,
}

impl Lookup {
    pub(super) fn add_cookies(self, resp: &mut Response<Body>) {
        for c in self.set_cookies {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
    }
}

impl App {
    /// The request's session, refreshed first when it is due. Refreshes are single-flight per
    /// refresh token in this process and, with Redis, per session across replicas; a refused
    /// refresh ends the session (cookies cleared, Redis entry deleted), an unreachable
    /// provider leaves it standing until its tokens expire.
    pub(super) async fn session(&self, headers: &HeaderMap, cx: &Ctx) -> Result<Lookup, StoreError> {
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
        // A refresh logs (provider errors, refresh events): in the request's span from here.
        self.refreshed(session, ticket, refresh_token, headers, cx, now)
            .instrument(cx.span())
            .await
    }

    /// The lookup after refreshing `session` (or waiting for another request's refresh).
    async fn refreshed(
        &self,
        session: Arc<Session>,
        ticket: Option<Ticket>,
        refresh_token: Secret<String>,
        headers: &HeaderMap,
        cx: &Ctx,
        now: u64,
    ) -> Result<Lookup, StoreError> {
        let outcome = self
            .refreshes
            .run(refresh_token.expose_str(), || {
                self.refresh_session(&session, ticket.as_ref(), refresh_token.expose_str())
            })
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
    pub(super) async fn refresh_session(&self, session: &Session, ticket: Option<&Ticket>, refresh_token: &str) -> Outcome {
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
            Err(e) if e.fault().is_transient() => Outcome::Unavailable(e.to_string()),
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
    pub(super) async fn bearer_session(&self, cx: &Ctx) -> Option<Result<Session, Response<Body>>> {
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

    /// Deletes every stored (Redis) session the request's cookies name; the caller clears
    /// the cookies. Redis being down is logged, not fatal: the entry then expires by itself.
    pub(super) async fn end_stored_sessions(&self, cookies: &RequestCookies<'_>, by: &str) {
        let values = cookies.every_session_value(&self.cfg.cookie.name);
        if let Err(e) = self.sessions.delete_named(&values).await {
            tracing::warn!(error = %e, by, "could not delete a replaced or ended session from the store; it expires by itself");
        }
    }

    /// The session from the request's cookies; see [`Sessions::load`].
    pub(super) async fn load_session(&self, headers: &HeaderMap) -> Result<Option<Loaded>, StoreError> {
        self.load_session_from(&RequestCookies::parse(headers)).await
    }

    pub(super) async fn load_session_from(&self, cookies: &RequestCookies<'_>) -> Result<Option<Loaded>, StoreError> {
        let values = cookies.session_values(&self.cfg.cookie.name);
        if values.is_empty() {
            return Ok(None);
        }
        self.sessions.load(&values, unix((self.clock)())).await
    }
}
