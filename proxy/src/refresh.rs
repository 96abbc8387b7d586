//! Token refresh: when a session is due for one, and doing each refresh exactly once.
//!
//! A page load fires many requests carrying the same cookie. Without coordination each would
//! redeem the same refresh token; with rotating refresh tokens all but the first fail and the
//! user is logged out (oauth2-proxy#1992). Here the first request refreshes and the others
//! wait for its result; requests that still carry the old cookie shortly afterwards (the
//! browser has not stored the new one yet) get the same result instead of a second refresh.

use crate::secret::Secret;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::oidc::Refreshed;
use crate::session::Session;

/// Refresh this long before the provider's tokens expire, so a request never goes upstream
/// with a token that expires in flight.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// How long a finished refresh is reused for requests carrying the old refresh token.
const REUSE_FOR: Duration = Duration::from_secs(30);

/// Whether `session` should be refreshed now: it has a refresh token, and either it is older
/// than `cookie_refresh` or its tokens are about to expire.
pub fn due(session: &Session, now: u64, cookie_refresh: Duration) -> bool {
    if session.refresh_token.is_none() {
        return false;
    }
    let by_age = !cookie_refresh.is_zero() && now >= session.refreshed_at.saturating_add(cookie_refresh.as_secs());
    let by_expiry = session
        .tokens_expire_at
        .is_some_and(|exp| now.saturating_add(EXPIRY_MARGIN.as_secs()) >= exp);
    by_age || by_expiry
}

/// The session after a successful refresh: new tokens, and new claims when an ID token came back.
pub fn apply(old: &Session, r: Refreshed, now: u64) -> Session {
    let mut s = old.clone();
    if let Some(id) = r.identity {
        s.user = id.user;
        s.email = id.email;
        s.preferred_username = id.preferred_username;
        s.groups = id.groups;
        s.groups_from_graph = id.groups_from_graph;
    }
    if let Some(groups) = r.graph_groups {
        s.groups = groups;
        s.groups_from_graph = true;
    }
    s.access_token = Some(Secret::new(r.access_token));
    s.id_token = r.id_token.map(Secret::new).or(s.id_token);
    // Providers that rotate refresh tokens send a new one; others keep the old one valid.
    s.refresh_token = r.refresh_token.map(Secret::new).or(s.refresh_token);
    s.tokens_expire_at = r.tokens_expire_at;
    s.refreshed_at = now;
    s
}

#[derive(Debug)]
pub enum Outcome {
    Refreshed(Session),
    /// The provider refused (revoked or expired refresh token, a user no longer allowed):
    /// the session is over.
    Ended(String),
    /// The provider or Graph could not be reached: the old session stands while its tokens last.
    Unavailable(String),
}

struct Entry {
    cell: Arc<tokio::sync::OnceCell<Arc<Outcome>>>,
    started: Instant,
}

/// One refresh per refresh token at a time, keyed by a digest of the token (never the token).
#[derive(Default)]
pub struct SingleFlight {
    inflight: Mutex<HashMap<[u8; 32], Entry>>,
}

impl SingleFlight {
    pub async fn run<F, Fut>(&self, refresh_token: &str, refresh: F) -> Arc<Outcome>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let key: [u8; 32] = sha2::Sha256::digest(refresh_token.as_bytes()).into();
        let cell = {
            let mut map = self.inflight.lock().expect("lock poisoned");
            map.retain(|_, e| e.started.elapsed() < REUSE_FOR);
            map.entry(key)
                .or_insert_with(|| Entry {
                    cell: Arc::new(tokio::sync::OnceCell::new()),
                    started: Instant::now(),
                })
                .cell
                .clone()
        };
        let outcome = cell.get_or_init(|| async { Arc::new(refresh().await) }).await.clone();
        if matches!(*outcome, Outcome::Unavailable(_)) {
            // Worth trying again on the next request, not in 30 s.
            let mut map = self.inflight.lock().expect("lock poisoned");
            if map.get(&key).is_some_and(|e| Arc::ptr_eq(&e.cell, &cell)) {
                map.remove(&key);
            }
        }
        outcome
    }

    pub fn len(&self) -> usize {
        self.inflight.lock().expect("lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Exposed;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn session(refresh: Option<&str>, refreshed_at: u64, expires: Option<u64>) -> Session {
        Session {
            refresh_token: refresh.map(Secret::from),
            refreshed_at,
            tokens_expire_at: expires,
            ..Session::default()
        }
    }

    #[test]
    fn due_by_age_or_near_expiry_and_only_with_a_refresh_token() {
        let hour = Duration::from_secs(3600);
        assert!(!due(&session(None, 0, Some(0)), 10_000, hour), "no refresh token");
        assert!(!due(&session(Some("r"), 1000, Some(10_000)), 2000, hour));
        assert!(
            due(&session(Some("r"), 1000, Some(10_000)), 4600, hour),
            "older than cookie_refresh"
        );
        assert!(!due(&session(Some("r"), 1000, Some(10_000)), 9000, Duration::ZERO));
        assert!(
            due(&session(Some("r"), 1000, Some(10_000)), 9941, Duration::ZERO),
            "within the margin"
        );
        assert!(
            !due(&session(Some("r"), 1000, None), 1_000_000, Duration::ZERO),
            "nothing says when"
        );
    }

    #[test]
    fn apply_keeps_what_the_provider_did_not_resend() {
        let old = Session {
            user: "u".into(),
            email: "e@x".into(),
            groups: vec!["g".into()],
            id_token: Some("id1".into()),
            refresh_token: Some("r1".into()),
            ..Session::default()
        };
        let r = Refreshed {
            identity: None,
            graph_groups: None,
            access_token: "a2".into(),
            id_token: None,
            refresh_token: None,
            tokens_expire_at: Some(99),
        };
        let s = apply(&old, r, 50);
        assert_eq!(
            (s.access_token.exposed(), s.id_token.exposed(), s.refresh_token.exposed()),
            (Some("a2"), Some("id1"), Some("r1"))
        );
        assert_eq!(
            (s.refreshed_at, s.tokens_expire_at, s.groups.clone()),
            (50, Some(99), vec!["g".to_string()])
        );
        // No new ID token, but Graph answered: only the groups change, the user stays.
        let r = Refreshed {
            identity: None,
            graph_groups: Some(vec!["g2".into()]),
            access_token: "a3".into(),
            id_token: None,
            refresh_token: None,
            tokens_expire_at: None,
        };
        let s = apply(&old, r, 60);
        assert_eq!((s.user.as_str(), s.email.as_str()), ("u", "e@x"));
        assert_eq!((s.groups, s.groups_from_graph), (vec!["g2".to_string()], true));
    }

    #[tokio::test]
    async fn parallel_requests_share_one_refresh() {
        let flight = Arc::new(SingleFlight::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (flight, calls) = (flight.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run("r1", || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Outcome::Refreshed(Session::default())
                    })
                    .await
            }));
        }
        for t in tasks {
            assert!(matches!(*t.await.unwrap(), Outcome::Refreshed(_)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A late request with the same (old) token reuses the result.
        flight.run("r1", || async { panic!("must not refresh again") }).await;
        // An unavailable provider is retried at the next request.
        let out = flight.run("r2", || async { Outcome::Unavailable("down".into()) }).await;
        assert!(matches!(*out, Outcome::Unavailable(_)));
        let out = flight.run("r2", || async { Outcome::Refreshed(Session::default()) }).await;
        assert!(matches!(*out, Outcome::Refreshed(_)));
    }
}
