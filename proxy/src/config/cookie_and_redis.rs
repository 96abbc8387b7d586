//! The session options: the cookie (its secret, name, domains, lifetimes, SameSite) and the
//! Redis store (standalone, Sentinel or cluster), validated into [`CookieConfig`] and
//! [`RedisConfig`].

use super::*;

/// `session_store_type = "redis"`: where sessions live and how to reach them. Its `Debug`
/// leaves the passwords out, those in the URLs too.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis_connection_url` (may carry credentials: never logged).
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret<String>>,
    pub sentinel_master: String,
    pub sentinel_urls: Vec<String>,
    pub sentinel_password: Option<Secret<String>>,
    pub cluster_urls: Vec<String>,
    /// `redis_ca_path`, read at start.
    pub ca_pem: Option<Vec<u8>>,
    /// Connect and command timeout.
    pub timeout: Duration,
    pub idle_timeout: Option<Duration>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls = |l: &[String]| l.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("sentinel_master", &self.sentinel_master)
            .field("sentinel_urls", &urls(&self.sentinel_urls))
            .field("sentinel_password", &self.sentinel_password)
            .field("cluster_urls", &urls(&self.cluster_urls))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("timeout", &self.timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// A URL with its password (if any) replaced, for logs and `Debug`.
fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "[not a URL]".into(),
    }
}

/// Timeout for connecting to Redis and for each command.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn redis_config(v: &Values) -> Result<Option<RedisConfig>, ConfigError> {
    match v.str("session_store_type").as_str() {
        "cookie" | "" => {
            for key in [
                "redis_connection_url",
                "redis_sentinel_connection_urls",
                "redis_cluster_connection_urls",
            ] {
                if v.is_set(key) {
                    return Err(invalid(
                        key,
                        "is set but session_store_type is cookie; set session_store_type = \"redis\" to use Redis",
                    ));
                }
            }
            return Ok(None);
        }
        "redis" => {}
        other => {
            return Err(invalid(
                "session_store_type",
                format!("`{other}` is not a session store; use cookie or redis"),
            ));
        }
    }
    let check_url = |key: &str, raw: &str| -> Result<(), ConfigError> {
        // The URL may hold a password, so the message never repeats it.
        let ok = (raw.starts_with("redis://") || raw.starts_with("rediss://") || raw.starts_with("unix://"))
            && redis::IntoConnectionInfo::into_connection_info(raw).is_ok();
        if ok {
            Ok(())
        } else {
            Err(invalid(
                key,
                "is not a Redis URL; write it like redis://redis.auth.svc:6379 or rediss://host:6380/0",
            ))
        }
    };
    let sentinel = v.bool("redis_use_sentinel");
    let cluster = v.bool("redis_use_cluster");
    let (url, sentinel_urls, cluster_urls) = match (sentinel, cluster) {
        (true, true) => {
            return Err(invalid(
                "redis_use_cluster",
                "cannot be combined with redis_use_sentinel; choose one",
            ));
        }
        (true, false) => {
            let urls = v.list("redis_sentinel_connection_urls");
            if urls.is_empty() {
                return Err(invalid(
                    "redis_sentinel_connection_urls",
                    "is required with redis_use_sentinel: list the sentinels, e.g. redis://sentinel-0:26379",
                ));
            }
            if v.opt_str("redis_sentinel_master_name").is_none() {
                return Err(invalid(
                    "redis_sentinel_master_name",
                    "is required with redis_use_sentinel: the name the sentinels monitor, e.g. mymaster",
                ));
            }
            for u in &urls {
                check_url("redis_sentinel_connection_urls", u)?;
            }
            (String::new(), urls, vec![])
        }
        (false, true) => {
            let urls = v.list("redis_cluster_connection_urls");
            if urls.is_empty() {
                return Err(invalid(
                    "redis_cluster_connection_urls",
                    "is required with redis_use_cluster: list some cluster nodes, e.g. redis://redis-0:6379",
                ));
            }
            for u in &urls {
                check_url("redis_cluster_connection_urls", u)?;
            }
            (String::new(), vec![], urls)
        }
        (false, false) => {
            let url = v.opt_str("redis_connection_url").ok_or_else(|| {
                invalid(
                    "redis_connection_url",
                    "is required with session_store_type = \"redis\", e.g. redis://redis.auth.svc:6379",
                )
            })?;
            check_url("redis_connection_url", &url)?;
            (url, vec![], vec![])
        }
    };
    let ca_pem = match v.opt_str("redis_ca_path") {
        Some(path) => {
            let pem = std::fs::read(&path).map_err(|e| invalid("redis_ca_path", format!("cannot read {path}: {e}")))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(invalid("redis_ca_path", format!("{path} holds no PEM certificate")));
            }
            Some(pem)
        }
        None => None,
    };
    let idle = v.int("redis_connection_idle_timeout");
    if idle < 0 {
        return Err(invalid("redis_connection_idle_timeout", "must be 0 (none) or a number of seconds"));
    }
    Ok(Some(RedisConfig {
        url,
        username: v.opt_str("redis_username"),
        password: v.opt_str("redis_password").map(Secret::new),
        sentinel_master: v.str("redis_sentinel_master_name"),
        sentinel_urls,
        sentinel_password: v.opt_str("redis_sentinel_password").map(Secret::new),
        cluster_urls,
        ca_pem,
        timeout: REDIS_TIMEOUT,
        idle_timeout: (idle > 0).then(|| Duration::from_secs(idle as u64)),
    }))
}

const SECRET_HINT: &str = "generate one with: openssl rand -base64 32 | tr -- '+/' '-_'";

pub(super) fn cookie_config(v: &Values) -> Result<CookieConfig, ConfigError> {
    let (option, raw) = match (v.opt_str("cookie_secret"), v.opt_str("cookie_secret_file")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "cookie_secret_file",
                "set either cookie_secret or cookie_secret_file, not both",
            ));
        }
        (Some(s), None) => ("cookie_secret", s),
        (None, Some(f)) => (
            "cookie_secret_file",
            std::fs::read_to_string(&f)
                .map_err(|e| invalid("cookie_secret_file", format!("cannot read {f}: {e}")))?
                .trim()
                .to_string(),
        ),
        (None, None) => {
            return Err(invalid(
                "cookie_secret",
                format!("is required (16, 24 or 32 bytes, raw or base64); {SECRET_HINT}"),
            ));
        }
    };
    let secret = parse_cookie_secret(&raw).map_err(|m| invalid(option, m))?;
    let name = v.str("cookie_name");
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        return Err(invalid(
            "cookie_name",
            format!("`{name}` is not a valid cookie name; use letters, digits, _ - or ."),
        ));
    }
    let samesite = match v.str("cookie_samesite").to_ascii_lowercase().as_str() {
        "" => SameSite::Unset,
        "lax" => SameSite::Lax,
        "strict" => SameSite::Strict,
        "none" => SameSite::None,
        other => {
            return Err(invalid(
                "cookie_samesite",
                format!("`{other}` must be one of lax, strict, none, or empty"),
            ));
        }
    };
    let expire = duration_opt(v, "cookie_expire")?;
    if expire.is_zero() {
        return Err(invalid(
            "cookie_expire",
            "must be longer than 0s; sessions always expire (e.g. 168h)",
        ));
    }
    let refresh = duration_opt(v, "cookie_refresh")?;
    if !refresh.is_zero() && refresh >= expire {
        return Err(invalid(
            "cookie_refresh",
            format!(
                "must be shorter than cookie_expire ({}s), or 0s to refresh only near token expiry",
                expire.as_secs()
            ),
        ));
    }
    let csrf_expire = duration_opt(v, "cookie_csrf_expire")?;
    if csrf_expire.is_zero() {
        return Err(invalid("cookie_csrf_expire", "must be longer than 0s (e.g. 15m)"));
    }
    let domains = v
        .list("cookie_domains")
        .into_iter()
        .map(|d| d.trim_start_matches('.').to_ascii_lowercase())
        .collect();
    Ok(CookieConfig {
        name,
        secret: Secret::new(secret),
        refresh,
        domains,
        path: v.str("cookie_path"),
        expire,
        secure: v.bool("cookie_secure"),
        httponly: v.bool("cookie_httponly"),
        samesite,
        csrf_per_request: v.bool("cookie_csrf_per_request"),
        csrf_expire,
        minimal: v.bool("session_cookie_minimal"),
    })
}

/// oauth2-proxy's rule, with its most common stumbling block removed: a value that decodes
/// from base64 (standard or URL alphabet, padded or not) to 16, 24 or 32 bytes is used
/// decoded — so `openssl rand -base64 32` (44 characters) is a 32-byte secret — otherwise
/// the raw bytes are used if they are 16, 24 or 32 long.
pub fn parse_cookie_secret(raw: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let ok_len = |n: usize| matches!(n, 16 | 24 | 32);
    for engine in [&URL_SAFE, &URL_SAFE_NO_PAD, &STANDARD, &STANDARD_NO_PAD] {
        if let Ok(decoded) = engine.decode(raw)
            && ok_len(decoded.len())
        {
            return Ok(decoded);
        }
    }
    if ok_len(raw.len()) {
        return Ok(raw.as_bytes().to_vec());
    }
    Err(format!(
        "must be 16, 24 or 32 bytes, raw or base64-encoded, but is {} characters and does not decode to 16, 24 or 32 bytes; {SECRET_HINT}",
        raw.len()
    ))
}
