//! Server-side sessions in Redis (`session_store_type = "redis"`).
//!
//! The browser holds only a ticket: a random id and a random per-session key, sealed with the
//! cookie secret. Redis holds the session sealed with that per-session key, under a name
//! derived from the id. Reading Redis alone reveals no session, and a cookie alone holds no
//! tokens. Signing out, the sign-in page, a new login and a refused refresh delete the
//! entry, so a copied cookie dies with it; a refresh never brings a deleted one back.
//!
//! Connections are made lazily and re-made after an error, so Redis being down at start or
//! later never takes the proxy down: callers get [`StoreError`] and show a clear page.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::RngCore;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::Session;
use super::codec::{Purpose, Sealer};
use super::opened::Opened;
use crate::config::RedisConfig;

/// What the session cookie carries with the Redis store: the session's key in Redis and the
/// key it is sealed with there. Neither prints.
#[derive(Clone, Serialize, Deserialize)]
pub struct Ticket {
    pub id: [u8; 16],
    pub key: [u8; 32],
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket([redacted])")
    }
}

impl Ticket {
    pub fn new() -> Ticket {
        let mut t = Ticket { id: [0; 16], key: [0; 32] };
        rand::rngs::OsRng.fill_bytes(&mut t.id);
        rand::rngs::OsRng.fill_bytes(&mut t.key);
        t
    }

    /// The Redis key: `<cookie name>-<hex id>` (oauth2-proxy's layout).
    pub fn redis_key(&self, cookie_name: &str) -> String {
        let hex: String = self.id.iter().map(|b| format!("{b:02x}")).collect();
        format!("{cookie_name}-{hex}")
    }

    /// Seals a session for storage under this ticket.
    pub fn seal(&self, cookie_name: &str, session: &Session) -> String {
        Sealer::new(&self.key, Purpose::Session).seal(&self.redis_key(cookie_name), session)
    }

    /// Opens a stored value; anything wrong with it is no session.
    pub fn open(&self, cookie_name: &str, stored: &str) -> Option<Session> {
        Sealer::new(&self.key, Purpose::Session)
            .open(&self.redis_key(cookie_name), stored)
            .ok()
    }
}

impl Default for Ticket {
    fn default() -> Self {
        Ticket::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the session store (Redis) is unreachable: {0}")]
    Unavailable(String),
    #[error("the session store (Redis) did not answer within {0:?}")]
    Timeout(Duration),
}

enum Backend {
    Single(Client),
    /// The sentinels are asked for the current master at every (re)connect.
    Sentinel(Mutex<redis::sentinel::SentinelClient>),
    Cluster(redis::cluster::ClusterClient),
}

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn run(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd).await,
            Conn::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }
}

struct Cached {
    conn: Conn,
    last_used: Instant,
}

pub struct RedisStore {
    backend: Backend,
    cached: Mutex<Option<Cached>>,
    timeout: Duration,
    idle_timeout: Option<Duration>,
}

impl RedisStore {
    pub fn new(cfg: &RedisConfig) -> Result<Arc<RedisStore>, redis::RedisError> {
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: cfg.ca_pem.clone(),
        };
        let backend = if !cfg.sentinel_urls.is_empty() {
            let mut b = redis::sentinel::SentinelClientBuilder::new(
                cfg.sentinel_urls
                    .iter()
                    .map(|u| redis::IntoConnectionInfo::into_connection_info(u.as_str()).map(|i| i.addr().clone()))
                    .collect::<Result<Vec<_>, _>>()?,
                &cfg.sentinel_master,
                redis::sentinel::SentinelServerType::Master,
            )?;
            if let Some(p) = &cfg.sentinel_password {
                b = b.set_client_to_sentinel_password(p.expose());
            }
            if let Some(p) = &cfg.password {
                b = b.set_client_to_redis_password(p.expose());
            }
            if let Some(u) = &cfg.username {
                b = b.set_client_to_redis_username(u);
            }
            if cfg.ca_pem.is_some() {
                b = b
                    .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_redis_certificates(certs());
            }
            Backend::Sentinel(Mutex::new(b.build()?))
        } else if !cfg.cluster_urls.is_empty() {
            let mut b = redis::cluster::ClusterClientBuilder::new(cfg.cluster_urls.iter().map(String::as_str))
                .connection_timeout(cfg.timeout)
                .response_timeout(cfg.timeout)
                .retries(2);
            if let Some(p) = &cfg.password {
                b = b.password(p.expose());
            }
            if let Some(u) = &cfg.username {
                b = b.username(u);
            }
            if cfg.ca_pem.is_some() {
                b = b.certs(certs());
            }
            Backend::Cluster(b.build()?)
        } else {
            let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.url.as_str())?;
            let mut redis_info = info.redis_settings().clone();
            if let Some(p) = &cfg.password {
                redis_info = redis_info.set_password(p.expose());
            }
            if let Some(u) = &cfg.username {
                redis_info = redis_info.set_username(u);
            }
            info = info.set_redis_settings(redis_info);
            let client = match &cfg.ca_pem {
                Some(_) => Client::build_with_tls(info, certs()),
                None => Client::open(info),
            }?;
            Backend::Single(client)
        };
        Ok(Arc::new(RedisStore {
            backend,
            cached: Mutex::new(None),
            timeout: cfg.timeout,
            idle_timeout: cfg.idle_timeout,
        }))
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        Ok(match &self.backend {
            Backend::Single(c) => Conn::Single(c.get_multiplexed_async_connection_with_config(&config).await?),
            Backend::Sentinel(s) => Conn::Single(s.lock().await.get_async_connection_with_config(&config).await?),
            Backend::Cluster(c) => Conn::Cluster(c.get_async_connection().await?),
        })
    }

    /// The shared connection, made on first use and after an error or an idle period.
    async fn conn(&self) -> Result<Conn, StoreError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_mut()
            && self.idle_timeout.is_none_or(|idle| c.last_used.elapsed() < idle)
        {
            c.last_used = Instant::now();
            return Ok(c.conn.clone());
        }
        let conn = tokio::time::timeout(self.timeout, self.connect())
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        *cached = Some(Cached {
            conn: conn.clone(),
            last_used: Instant::now(),
        });
        Ok(conn)
    }

    async fn run(&self, op: &'static str, cmd: Cmd) -> Result<Value, StoreError> {
        let started = Instant::now();
        let result = self.run_timed(cmd).await;
        crate::metrics::redis(op, started.elapsed());
        result
    }

    async fn run_timed(&self, cmd: Cmd) -> Result<Value, StoreError> {
        let mut conn = self.conn().await?;
        // A server error reply (NOAUTH, READONLY on a replica, OOM) arrives as a value:
        // it must fail the operation, or a session would be "stored" nowhere.
        let result = match tokio::time::timeout(self.timeout, conn.run(&cmd)).await {
            Ok(Ok(v)) => match v.extract_error() {
                Ok(v) => return Ok(v),
                Err(e) => StoreError::Unavailable(e.to_string()),
            },
            Ok(Err(e)) => StoreError::Unavailable(e.to_string()),
            Err(_) => StoreError::Timeout(self.timeout),
        };
        // Start over with a new connection next time (the server may have restarted).
        *self.cached.lock().await = None;
        Err(result)
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self.run("get", redis::cmd("GET").arg(key).clone()).await? {
            Value::BulkString(b) => Ok(String::from_utf8(b).ok()),
            _ => Ok(None),
        }
    }

    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        self.run("set", redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms).clone())
            .await
            .map(drop)
    }

    /// `SET key value PX ttl XX`: false when there is no such key (any more).
    pub async fn set_existing(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let v = self
            .run("set", redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms).arg("XX").clone())
            .await?;
        Ok(matches!(v, Value::Okay | Value::SimpleString(_)))
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run("del", redis::cmd("DEL").arg(key).clone()).await.map(drop)
    }

    /// `SET key NX PX ttl`: true when this caller now holds the lock.
    pub async fn try_lock(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let v = self
            .run("lock", redis::cmd("SET").arg(key).arg("1").arg("NX").arg("PX").arg(ms).clone())
            .await?;
        Ok(matches!(v, Value::Okay | Value::SimpleString(_)))
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", redis::cmd("PING")).await.map(drop)
    }
}

/// The session's home, cookie or Redis, behind one interface for the request path.
pub struct Sessions {
    cookie_name: String,
    /// Cookie store: values already opened (most of the cost of `/oauth2/auth`).
    opened: Opened,
    /// Seals whole sessions (cookie store) ...
    sessions: Sealer,
    /// ... or tickets (Redis store).
    tickets: Sealer,
    redis: Option<Arc<RedisStore>>,
}

/// A session read from a request, with the ticket that names it in Redis.
pub struct Loaded {
    pub session: Arc<Session>,
    pub ticket: Option<Ticket>,
}

/// How long a replica may hold the refresh lock of one session.
const REFRESH_LOCK_TTL: Duration = Duration::from_secs(15);
/// How long another replica waits for that refresh before giving up.
const REFRESH_WAIT: Duration = Duration::from_secs(5);

impl Sessions {
    /// `workers`: how many server workers load sessions (one cache shard each).
    pub fn new(cookie_name: &str, cookie_secret: &[u8], redis: Option<Arc<RedisStore>>, workers: usize) -> Sessions {
        Sessions {
            cookie_name: cookie_name.to_string(),
            opened: Opened::new(workers),
            sessions: Sealer::new(cookie_secret, Purpose::Session),
            tickets: Sealer::new(cookie_secret, Purpose::Ticket),
            redis,
        }
    }

    pub fn is_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// The newest valid session among the request's session cookie values (see
    /// `RequestCookies::session_values`). Anything wrong with a value — tampered, truncated,
    /// another secret, expired, deleted from Redis — is no session; only Redis being
    /// unreachable is an error.
    pub async fn load(&self, values: &[String], now: u64) -> Result<Option<Loaded>, StoreError> {
        let mut best: Option<Loaded> = None;
        for value in values {
            let loaded = match &self.redis {
                None => self.open_cookie(value).map(|session| Loaded { session, ticket: None }),
                Some(redis) => {
                    let Ok(ticket) = self.tickets.open::<Ticket>(&self.cookie_name, value) else {
                        continue;
                    };
                    let stored = redis.get(&ticket.redis_key(&self.cookie_name)).await?;
                    stored.and_then(|s| ticket.open(&self.cookie_name, &s)).map(|session| Loaded {
                        session: Arc::new(session),
                        ticket: Some(ticket),
                    })
                }
            };
            if let Some(l) = loaded.filter(|l| now < l.session.expires_at)
                && best.as_ref().is_none_or(|b| l.session.refreshed_at > b.session.refreshed_at)
            {
                best = Some(l);
            }
        }
        Ok(best)
    }

    fn open_cookie(&self, value: &str) -> Option<Arc<Session>> {
        if let Some(s) = self.opened.get(value) {
            return Some(s);
        }
        let session = Arc::new(self.sessions.open::<Session>(&self.cookie_name, value).ok()?);
        self.opened.insert(value, session.clone());
        Some(session)
    }

    /// Stores a session. Returns the new cookie value when the cookie must change: always
    /// for the cookie store, and for Redis only for a new ticket.
    pub async fn save(&self, session: &Session, ticket: Option<&Ticket>, now: u64) -> Result<Option<String>, StoreError> {
        let Some(redis) = &self.redis else {
            return Ok(Some(self.sessions.seal(&self.cookie_name, session)));
        };
        let fresh;
        let t = match ticket {
            Some(t) => t,
            None => {
                fresh = Ticket::new();
                &fresh
            }
        };
        let ttl = Duration::from_secs(session.expires_at.saturating_sub(now).max(1));
        redis
            .set(&t.redis_key(&self.cookie_name), &t.seal(&self.cookie_name, session), ttl)
            .await?;
        Ok(ticket.is_none().then(|| self.tickets.seal(&self.cookie_name, t)))
    }

    /// Stores a refreshed Redis session under its ticket, only if the session still
    /// exists: false when it was deleted meanwhile (signed out while another request or
    /// replica refreshed it), which a plain SET would have brought back to life.
    pub async fn update(&self, session: &Session, ticket: &Ticket, now: u64) -> Result<bool, StoreError> {
        let Some(redis) = &self.redis else { return Ok(true) };
        let ttl = Duration::from_secs(session.expires_at.saturating_sub(now).max(1));
        redis
            .set_existing(&ticket.redis_key(&self.cookie_name), &ticket.seal(&self.cookie_name, session), ttl)
            .await
    }

    /// Deletes a Redis session (a no-op for the cookie store).
    pub async fn delete(&self, ticket: Option<&Ticket>) -> Result<(), StoreError> {
        match (&self.redis, ticket) {
            (Some(redis), Some(t)) => redis.delete(&t.redis_key(&self.cookie_name)).await,
            _ => Ok(()),
        }
    }

    /// Deletes every Redis session these cookie values name, valid or not, without reading
    /// them first (a no-op for the cookie store, whose sessions live only in the cookie).
    /// Every value is tried; the first error is returned.
    pub async fn delete_named(&self, values: &[String]) -> Result<(), StoreError> {
        let Some(redis) = &self.redis else { return Ok(()) };
        let mut keys: Vec<String> = values
            .iter()
            .filter_map(|v| self.tickets.open::<Ticket>(&self.cookie_name, v).ok())
            .map(|t| t.redis_key(&self.cookie_name))
            .collect();
        keys.sort();
        keys.dedup();
        let mut first_error = None;
        // One DEL per key: a cluster refuses a multi-key DEL across slots.
        for key in keys {
            if let Err(e) = redis.delete(&key).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Across replicas only one refreshes a Redis session: true when this one may. The
    /// cookie store has no shared state, so it always may.
    pub async fn lock_refresh(&self, ticket: Option<&Ticket>) -> Result<bool, StoreError> {
        match (&self.redis, ticket) {
            (Some(redis), Some(t)) => redis.try_lock(&refresh_lock_key(&self.cookie_name, t), REFRESH_LOCK_TTL).await,
            _ => Ok(true),
        }
    }

    pub async fn unlock_refresh(&self, ticket: Option<&Ticket>) {
        if let (Some(redis), Some(t)) = (&self.redis, ticket)
            && let Err(e) = redis.delete(&refresh_lock_key(&self.cookie_name, t)).await
        {
            tracing::warn!(error = %e, "could not release a refresh lock; it expires by itself");
        }
    }

    /// Waits for another replica's refresh of this session; `None` when it did not land in time.
    pub async fn wait_for_refresh(&self, ticket: &Ticket, refreshed_before: u64) -> Result<Option<Session>, StoreError> {
        let Some(redis) = &self.redis else { return Ok(None) };
        let deadline = Instant::now() + REFRESH_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stored = redis.get(&ticket.redis_key(&self.cookie_name)).await?;
            match stored.and_then(|s| ticket.open(&self.cookie_name, &s)) {
                Some(s) if s.refreshed_at > refreshed_before => return Ok(Some(s)),
                Some(_) => {}
                None => return Ok(None), // signed out meanwhile
            }
        }
        Ok(None)
    }

    /// For `/ready`: the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.redis {
            Some(redis) => redis.ping().await,
            None => Ok(()),
        }
    }
}

fn refresh_lock_key(cookie_name: &str, t: &Ticket) -> String {
    format!("{}.refresh-lock", t.redis_key(cookie_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::opened;

    #[test]
    fn a_ticket_never_prints() {
        let t = Ticket::new();
        assert_eq!(format!("{t:?}"), "Ticket([redacted])");
    }

    fn cookie_store() -> Sessions {
        Sessions::new("_oauth2_proxy", &[7u8; 32], None, 1)
    }

    fn signed_in(email: &str, expires_at: u64) -> Session {
        Session {
            email: email.into(),
            expires_at,
            ..Session::default()
        }
    }

    #[tokio::test]
    async fn an_opened_cookie_is_reused_but_still_expires_and_tampering_never_enters() {
        let store = cookie_store();
        let value = store.save(&signed_in("a@example.com", 1000), None, 0).await.unwrap().unwrap();
        let first = store.load(std::slice::from_ref(&value), 10).await.unwrap().unwrap();
        let again = store.load(std::slice::from_ref(&value), 20).await.unwrap().unwrap();
        assert!(
            Arc::ptr_eq(&first.session, &again.session),
            "the second request reuses the opened session"
        );
        assert_eq!(again.session.email, "a@example.com");
        // The cache holds what a value opens to, not a verdict: expiry is checked every time.
        assert!(store.load(std::slice::from_ref(&value), 1000).await.unwrap().is_none());

        let mut tampered = value.clone().into_bytes();
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        for _ in 0..2 {
            assert!(store.load(std::slice::from_ref(&tampered), 10).await.unwrap().is_none());
        }
        assert!(store.opened.get(&tampered).is_none(), "a value that did not open is never cached");
        // Another process's cache does not matter: a value opens only with its own secret.
        let other = Sessions::new("_oauth2_proxy", &[8u8; 32], None, 1);
        assert!(other.load(std::slice::from_ref(&value), 10).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_opened_cookie_cache_stays_within_its_budget() {
        let store = cookie_store();
        let mut values = Vec::new();
        for i in 0..3000 {
            let v = store
                .save(&signed_in(&format!("user{i}@example.com"), 1000), None, 0)
                .await
                .unwrap()
                .unwrap();
            assert!(store.load(std::slice::from_ref(&v), 10).await.unwrap().is_some());
            values.push(v);
            assert!(store.opened.bytes() <= opened::BUDGET);
        }
        // Emptied when full, and every value still opens afterwards.
        let held = store.opened.len();
        assert!(held < 3000, "{held} entries");
        for v in values.iter().step_by(97) {
            assert!(store.load(std::slice::from_ref(v), 10).await.unwrap().is_some());
        }
    }

    #[test]
    fn tickets_are_random_and_only_their_own_key_opens_a_value() {
        let (a, b) = (Ticket::new(), Ticket::new());
        assert_ne!(a.id, b.id);
        assert_ne!(a.key, b.key);
        assert!(a.redis_key("_oauth2_proxy").starts_with("_oauth2_proxy-") && a.redis_key("x").len() == 2 + 32);
        let s = Session {
            email: "a@example.com".into(),
            ..Session::default()
        };
        let stored = a.seal("_oauth2_proxy", &s);
        assert!(!stored.contains("a@example.com"));
        assert_eq!(a.open("_oauth2_proxy", &stored), Some(s));
        assert_eq!(b.open("_oauth2_proxy", &stored), None, "another ticket's key");
        let moved = Ticket { id: b.id, key: a.key };
        assert_eq!(moved.open("_oauth2_proxy", &stored), None, "bound to its own id");
    }
}
