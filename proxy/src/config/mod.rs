//! Configuration: the oauth2-proxy-compatible option table, the loader, and the typed,
//! validated [`Config`] the proxy runs on. Every error names the option and the fix.

mod cli;
pub mod duration;
pub mod load;
pub mod options;
mod warnings;
pub mod weak;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use url::Url;

use crate::client_auth::{ClientAuth, JwtSigner};
use crate::entra::{self, EntraConfig};
use crate::forwarded::TrustPolicy;
use crate::routes::AccessRoutes;
use crate::secret::Secret;
pub use load::{Invocation, LoadError, Values, load};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("{origin} is not valid TOML: {message}")]
    Toml { origin: String, message: String },
    #[error("unknown option `{key}` in {origin}{suggestion}")]
    Unknown { key: String, origin: String, suggestion: String },
    #[error("option `{option}`: {message}")]
    Invalid { option: String, message: String },
    #[error("option `{option}` in {origin}: {message}")]
    InvalidIn { option: String, origin: String, message: String },
}

fn invalid(option: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option: option.to_string(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// Requests are forwarded with their path unchanged to this origin.
    Http(Url),
    /// Answers every request with this status (forward-auth front ends).
    Static(u16),
    /// Serves files below this directory.
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Path prefix this upstream serves; the longest matching prefix wins.
    pub path: String,
    pub target: UpstreamTarget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    Unset,
    Lax,
    Strict,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub display_name: String,
    pub issuer_url: Url,
    pub skip_discovery: bool,
    pub login_url: Option<Url>,
    pub redeem_url: Option<Url>,
    pub jwks_url: Option<Url>,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// Set for `provider = "entra-id"`.
    pub entra: Option<EntraConfig>,
    pub scope: String,
    pub prompt: Option<String>,
    pub approval_prompt: Option<String>,
    pub acr_values: Option<String>,
    pub pkce: bool,
    pub email_claim: String,
    pub groups_claim: String,
    pub user_id_claim: String,
    pub extra_audiences: Vec<String>,
    pub allow_unverified_email: bool,
    pub ca_files: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct CookieConfig {
    pub name: String,
    pub secret: Secret<Vec<u8>>,
    /// Refresh the tokens once the session is this old (zero: only near token expiry).
    pub refresh: Duration,
    pub domains: Vec<String>,
    pub path: String,
    pub expire: Duration,
    pub secure: bool,
    pub httponly: bool,
    pub samesite: SameSite,
    pub csrf_per_request: bool,
    pub csrf_expire: Duration,
    pub minimal: bool,
}

#[derive(Clone, Debug, Default)]
pub struct HeaderConfig {
    pub pass_basic_auth: bool,
    pub basic_auth_password: Option<Secret<String>>,
    pub pass_user_headers: bool,
    pub prefer_email_to_user: bool,
    pub pass_access_token: bool,
    pub pass_authorization_header: bool,
    pub set_authorization_header: bool,
    pub set_basic_auth: bool,
    pub set_xauthrequest: bool,
}

#[derive(Clone, Debug)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub standard: bool,
    pub request: bool,
    pub auth: bool,
    pub exclude_paths: Vec<String>,
    pub silence_ping: bool,
    pub request_id_header: http::HeaderName,
}

#[derive(Clone, Debug)]
pub struct AuthzConfig {
    pub email_domains: Vec<String>,
    pub emails_file: Option<PathBuf>,
    pub allowed_emails: Vec<String>,
    pub allowed_groups: Vec<String>,
}

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

#[derive(Clone, Debug, Default)]
pub struct SignOutConfig {
    /// Send the browser to the provider's `end_session_endpoint` after clearing the session.
    pub at_provider: bool,
    /// Called by the proxy on sign-out; `{id_token}` is replaced by the session's ID token.
    pub backend_logout_url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub http_address: SocketAddr,
    /// `/metrics` for Prometheus, on its own listener.
    pub metrics_address: Option<SocketAddr>,
    /// HTTPS on `https_address`, when `tls_cert_file` and `tls_key_file` are set.
    pub https: Option<(SocketAddr, crate::tls::TlsSettings)>,
    pub proxy_prefix: String,
    pub ping_path: String,
    pub ready_path: String,
    pub redirect_url: Option<Url>,
    pub upstreams: Vec<Upstream>,
    pub upstream_timeout: Duration,
    /// Server threads; 0 means one per usable CPU (see `server::worker_count`).
    pub workers: usize,
    pub pass_host_header: bool,
    pub provider: ProviderConfig,
    pub authz: AuthzConfig,
    pub routes: AccessRoutes,
    pub whitelist_domains: Vec<String>,
    /// `reverse_proxy`, `trusted_proxy_ips`, `real_client_ip_header`.
    pub trust: TrustPolicy,
    /// What `/oauth2/auth` answers for an authorized request.
    pub auth_success_status: http::StatusCode,
    pub sign_out: SignOutConfig,
    /// `None`: sessions live in the cookie.
    pub redis: Option<RedisConfig>,
    /// `skip_jwt_bearer_tokens`: `Some(extra_jwt_issuers)` as (issuer, audience) pairs.
    pub jwt_bearer: Option<Vec<(Url, String)>>,
    pub skip_provider_button: bool,
    pub headers: HeaderConfig,
    pub cookie: CookieConfig,
    pub banner: Option<String>,
    pub footer: Option<String>,
    pub logging: LoggingConfig,
    /// Start-up warnings (see `warnings`), for the log and for `--config-test`.
    pub warnings: Vec<String>,
}

impl Config {
    /// Validates raw values into a typed config. Reads the small files the config names
    /// (cookie secret file) so a bad path fails at start-up, not at the first login.
    pub fn from_values(v: &Values) -> Result<Config, ConfigError> {
        let provider = provider_config(v)?;
        let cookie = cookie_config(v)?;
        let proxy_prefix = v.str("proxy_prefix");
        if !proxy_prefix.starts_with('/') || proxy_prefix.ends_with('/') || proxy_prefix.len() < 2 {
            return Err(invalid("proxy_prefix", "must start with / and not end with /, e.g. /oauth2"));
        }
        for key in ["ping_path", "ready_path"] {
            if !v.str(key).starts_with('/') {
                return Err(invalid(key, "must be an absolute path such as /ping"));
            }
        }
        let redirect_url = match v.opt_str("redirect_url") {
            None => None,
            Some(raw) => {
                let url = Url::parse(&raw).map_err(|e| {
                    invalid(
                        "redirect_url",
                        format!("`{raw}` is not an absolute URL ({e}); use https://<host>{proxy_prefix}/callback"),
                    )
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                    return Err(invalid(
                        "redirect_url",
                        format!("`{raw}` must be an http(s) URL such as https://<host>{proxy_prefix}/callback"),
                    ));
                }
                if url.path() != format!("{proxy_prefix}/callback") {
                    return Err(invalid(
                        "redirect_url",
                        format!("the path of `{raw}` must be {proxy_prefix}/callback, where sidekey-proxy receives the login response"),
                    ));
                }
                Some(url)
            }
        };
        let authz = AuthzConfig {
            email_domains: v.list("email_domains").into_iter().map(|d| d.to_ascii_lowercase()).collect(),
            emails_file: v.opt_str("authenticated_emails_file").map(PathBuf::from),
            allowed_emails: v.list("allowed_emails"),
            allowed_groups: v.list("allowed_groups"),
        };
        if authz.email_domains.is_empty() && authz.emails_file.is_none() && authz.allowed_emails.is_empty() {
            return Err(invalid(
                "email_domains",
                "no one could sign in: set email_domains (use \"*\" to allow any email, then restrict with allowed_groups), allowed_emails or authenticated_emails_file",
            ));
        }
        let whitelist_domains = v.list("whitelist_domains").into_iter().map(|d| d.to_ascii_lowercase()).collect();
        let logging = LoggingConfig {
            format: match v.str("logging_format").as_str() {
                "text" | "" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "logging_format",
                        format!("`{other}` is not a log format; use text or json"),
                    ));
                }
            },
            standard: v.bool("standard_logging"),
            request: v.bool("request_logging"),
            auth: v.bool("auth_logging"),
            exclude_paths: v.list("exclude_logging_paths"),
            silence_ping: v.bool("silence_ping_logging"),
            request_id_header: http::HeaderName::from_bytes(v.str("request_id_header").as_bytes())
                .map_err(|_| invalid("request_id_header", "must be a valid header name such as X-Request-Id"))?,
        };
        let headers = HeaderConfig {
            pass_basic_auth: v.bool("pass_basic_auth"),
            basic_auth_password: v.opt_str("basic_auth_password").map(Secret::new),
            pass_user_headers: v.bool("pass_user_headers"),
            prefer_email_to_user: v.bool("prefer_email_to_user"),
            pass_access_token: v.bool("pass_access_token"),
            pass_authorization_header: v.bool("pass_authorization_header"),
            set_authorization_header: v.bool("set_authorization_header"),
            set_basic_auth: v.bool("set_basic_auth"),
            set_xauthrequest: v.bool("set_xauthrequest"),
        };
        if cookie.minimal && (headers.pass_access_token || headers.pass_authorization_header || headers.set_authorization_header) {
            return Err(invalid(
                "session_cookie_minimal",
                "a minimal session holds no tokens, so it cannot be combined with pass_access_token, pass_authorization_header or set_authorization_header; turn one of them off",
            ));
        }
        let mut cfg = Config {
            http_address: parse_listen_address(&v.str("http_address")).map_err(|m| invalid("http_address", m))?,
            https: https_config(v)?,
            metrics_address: v
                .opt_str("metrics_address")
                .map(|a| parse_listen_address(&a).map_err(|m| invalid("metrics_address", m)))
                .transpose()?,
            ping_path: v.str("ping_path"),
            ready_path: v.str("ready_path"),
            redirect_url,
            upstreams: parse_upstreams(&v.list("upstreams"))?,
            upstream_timeout: duration_opt(v, "upstream_timeout")?,
            workers: workers(v)?,
            pass_host_header: v.bool("pass_host_header"),
            proxy_prefix,
            provider,
            authz,
            routes: AccessRoutes::new(
                &v.list("skip_auth_routes"),
                &v.list("skip_auth_regex"),
                &v.list("api_routes"),
                v.bool("skip_auth_preflight"),
            )
            .map_err(|(option, message)| invalid(option, message))?,
            whitelist_domains,
            trust: trust_policy(v)?,
            auth_success_status: auth_success_status(v)?,
            sign_out: sign_out_config(v)?,
            redis: redis_config(v)?,
            jwt_bearer: jwt_bearer_config(v)?,
            skip_provider_button: v.bool("skip_provider_button"),
            headers,
            cookie,
            banner: v.opt_str("banner"),
            footer: v.opt_str("footer"),
            logging,
            warnings: Vec::new(),
        };
        cfg.warnings = warnings::collect(v, &cfg);
        Ok(cfg)
    }
}

fn trust_policy(v: &Values) -> Result<TrustPolicy, ConfigError> {
    let header = v.str("real_client_ip_header");
    let header = http::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
        invalid(
            "real_client_ip_header",
            format!("`{header}` is not a header name; use e.g. X-Real-IP"),
        )
    })?;
    TrustPolicy::new(v.bool("reverse_proxy"), &v.list("trusted_proxy_ips"), header).map_err(|m| invalid("trusted_proxy_ips", m))
}

fn workers(v: &Values) -> Result<usize, ConfigError> {
    match usize::try_from(v.int("workers")) {
        Ok(n) if n <= 1024 => Ok(n),
        _ => Err(invalid("workers", "must be 0 (one per CPU) or a number of threads up to 1024")),
    }
}

fn auth_success_status(v: &Values) -> Result<http::StatusCode, ConfigError> {
    let raw = v.int("auth_success_status");
    u16::try_from(raw)
        .ok()
        .filter(|c| (200..300).contains(c))
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .ok_or_else(|| {
            invalid(
                "auth_success_status",
                format!("{raw} is not a 2xx status; use 202 (nginx, Traefik, Caddy) or 200 (Envoy ext_authz)"),
            )
        })
}

fn sign_out_config(v: &Values) -> Result<SignOutConfig, ConfigError> {
    let backend_logout_url = v.opt_str("backend_logout_url");
    if let Some(raw) = &backend_logout_url {
        let url = Url::parse(&raw.replace("{id_token}", "token")).map_err(|e| {
            invalid(
                "backend_logout_url",
                format!("`{raw}` is not an absolute URL ({e}); e.g. https://idp.example.com/logout?id_token_hint={{id_token}}"),
            )
        })?;
        check_secure_url("backend_logout_url", &url)?;
    }
    Ok(SignOutConfig {
        at_provider: v.bool("oidc_logout"),
        backend_logout_url,
    })
}

fn https_config(v: &Values) -> Result<Option<(SocketAddr, crate::tls::TlsSettings)>, ConfigError> {
    let (cert, key) = match (v.opt_str("tls_cert_file"), v.opt_str("tls_key_file")) {
        (Some(c), Some(k)) => (PathBuf::from(c), PathBuf::from(k)),
        // oauth2-proxy serves HTTPS only with a certificate and ignores https_address
        // otherwise (its Helm chart always passes one); `warnings` says so.
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(invalid("tls_key_file", "is required with tls_cert_file")),
        (None, Some(_)) => return Err(invalid("tls_cert_file", "is required with tls_key_file")),
    };
    let tls13_only = match v.str("tls_min_version").to_ascii_uppercase().as_str() {
        "" | "TLS1.2" => false,
        "TLS1.3" => true,
        other => {
            return Err(invalid(
                "tls_min_version",
                format!("`{other}` is not supported; use TLS1.2 or TLS1.3"),
            ));
        }
    };
    let cipher_suites = v
        .list("tls_cipher_suites")
        .iter()
        .map(|n| crate::tls::suite_by_name(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| invalid("tls_cipher_suites", m))?;
    crate::tls::load_key_pair(&cert, &key, &rustls::crypto::ring::default_provider()).map_err(|m| invalid("tls_cert_file", m))?;
    let address = parse_listen_address(&v.str("https_address")).map_err(|m| invalid("https_address", m))?;
    Ok(Some((
        address,
        crate::tls::TlsSettings {
            cert_file: cert,
            key_file: key,
            tls13_only,
            cipher_suites,
        },
    )))
}

fn jwt_bearer_config(v: &Values) -> Result<Option<Vec<(Url, String)>>, ConfigError> {
    let extra = v
        .list("extra_jwt_issuers")
        .iter()
        .map(|pair| {
            let (issuer, audience) = pair
                .split_once('=')
                .filter(|(i, a)| !i.is_empty() && !a.is_empty())
                .ok_or_else(|| {
                    invalid(
                        "extra_jwt_issuers",
                        format!("`{pair}` is not issuer=audience, e.g. https://login.example.com/=api://orders"),
                    )
                })?;
            let url = Url::parse(issuer).map_err(|e| invalid("extra_jwt_issuers", format!("`{issuer}` is not an issuer URL: {e}")))?;
            check_secure_url("extra_jwt_issuers", &url)?;
            Ok((url, audience.to_string()))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    if !v.bool("skip_jwt_bearer_tokens") {
        if !extra.is_empty() {
            return Err(invalid("extra_jwt_issuers", "has no effect without skip_jwt_bearer_tokens = true"));
        }
        return Ok(None);
    }
    Ok(Some(extra))
}

/// Timeout for connecting to Redis and for each command.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

fn redis_config(v: &Values) -> Result<Option<RedisConfig>, ConfigError> {
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

fn duration_opt(v: &Values, key: &str) -> Result<Duration, ConfigError> {
    let raw = v.str(key);
    duration::parse(&raw).map_err(|e| invalid(key, format!("`{raw}` is not a duration ({e}); write it like 168h, 30m or 1h30m")))
}

fn url_opt(v: &Values, key: &str) -> Result<Option<Url>, ConfigError> {
    v.opt_str(key)
        .map(|raw| {
            let url = Url::parse(&raw).map_err(|e| invalid(key, format!("`{raw}` is not an absolute URL: {e}")))?;
            check_secure_url(key, &url)?;
            Ok(url)
        })
        .transpose()
}

/// Tokens and codes must not cross the network in clear text; plain http is allowed only
/// for an identity provider on the same host.
fn check_secure_url(key: &str, url: &Url) -> Result<(), ConfigError> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(url) => Ok(()),
        "http" => Err(invalid(
            key,
            format!("`{url}` uses plain http; use https (http is allowed only for loopback addresses)"),
        )),
        other => Err(invalid(key, format!("`{url}` has scheme {other}; use https"))),
    }
}

fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn provider_config(v: &Values) -> Result<ProviderConfig, ConfigError> {
    let provider = v.str("provider");
    let legacy_azure = provider == "azure";
    let is_entra = match provider.as_str() {
        "oidc" => false,
        // oauth2-proxy's deprecated Azure AD provider signs in against the same tenant;
        // entra-id does that with the v2.0 endpoints and checks more (`warnings` says so).
        "entra-id" | "azure" => true,
        // keycloak-oidc is the oidc provider plus Keycloak roles added to the groups as
        // `role:<name>`; without roles it is oidc.
        "keycloak-oidc" => {
            if let Some(role) = v.list("allowed_groups").into_iter().find(|g| g.starts_with("role:")) {
                return Err(invalid(
                    "allowed_groups",
                    format!(
                        "`{role}` is a Keycloak role, which provider = \"keycloak-oidc\" adds to the groups; sidekey-proxy reads groups from the groups claim only, so it would match no one. Remove it, or keep oauth2-proxy until allowed_roles is supported"
                    ),
                ));
            }
            false
        }
        "google" if !v.is_set("provider") => {
            return Err(invalid(
                "provider",
                "not set, and oauth2-proxy's default `google` is not supported; set provider = \"oidc\" with oidc_issuer_url (for Google: https://accounts.google.com), or provider = \"entra-id\"",
            ));
        }
        other => {
            return Err(invalid(
                "provider",
                format!("`{other}` is not supported; use provider = \"oidc\" with your provider's issuer URL, or provider = \"entra-id\""),
            ));
        }
    };
    if !is_entra {
        for key in [
            "entra_id_federated_token_auth",
            "entra_id_allowed_tenants",
            "entra_id_issuer_template",
            "entra_id_graph_url",
        ] {
            if v.is_set(key) {
                return Err(invalid(
                    key,
                    "applies to provider = \"entra-id\" only; for other providers use client_assertion_file",
                ));
            }
        }
    }
    let azure = &v.azure;
    let client_id = match (v.opt_str("client_id"), is_entra.then(|| azure.client_id.clone()).flatten()) {
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            return Err(invalid(
                "client_id",
                if is_entra {
                    "is required: set the application (client) id of the app registration, or AZURE_CLIENT_ID"
                } else {
                    "is required: set the OAuth client (application) id registered at the provider"
                },
            ));
        }
    };
    let issuer_raw = match (v.opt_str("oidc_issuer_url"), is_entra) {
        (Some(raw), _) if legacy_azure => azure_v2_issuer(&raw),
        (Some(raw), _) => raw,
        // oauth2-proxy's azure provider defaults to the `common` tenant; AZURE_TENANT_ID
        // (workload identity) is used when azure_tenant is not set.
        (None, true) if legacy_azure && (v.is_set("azure_tenant") || azure.tenant_id.is_none()) => {
            let host = azure.authority_host.clone().unwrap_or_else(|| entra::DEFAULT_AUTHORITY_HOST.into());
            format!("{}/{}/v2.0", host.trim_end_matches('/'), v.str("azure_tenant"))
        }
        (None, true) => match &azure.tenant_id {
            Some(tenant) => {
                let host = azure.authority_host.clone().unwrap_or_else(|| entra::DEFAULT_AUTHORITY_HOST.into());
                format!("{}/{tenant}/v2.0", host.trim_end_matches('/'))
            }
            None => {
                return Err(invalid(
                    "oidc_issuer_url",
                    "is required for provider entra-id: set https://login.microsoftonline.com/<tenant>/v2.0 (or AZURE_TENANT_ID, with AZURE_AUTHORITY_HOST for sovereign clouds)",
                ));
            }
        },
        (None, false) => {
            return Err(invalid(
                "oidc_issuer_url",
                "is required for provider oidc, e.g. https://accounts.example.com",
            ));
        }
    };
    let issuer_url =
        Url::parse(&issuer_raw).map_err(|e| invalid("oidc_issuer_url", format!("`{issuer_raw}` is not an absolute URL: {e}")))?;
    check_secure_url("oidc_issuer_url", &issuer_url)?;
    let entra = if is_entra { Some(entra_config(v, &issuer_url)?) } else { None };
    let client_auth = client_auth(v, is_entra)?;
    let skip_discovery = v.bool("skip_oidc_discovery");
    let (login_url, redeem_url, jwks_url) = (url_opt(v, "login_url")?, url_opt(v, "redeem_url")?, url_opt(v, "oidc_jwks_url")?);
    if skip_discovery {
        for (key, value) in [("login_url", &login_url), ("redeem_url", &redeem_url), ("oidc_jwks_url", &jwks_url)] {
            if value.is_none() {
                return Err(invalid(key, "is required with skip_oidc_discovery = true"));
            }
        }
    }
    let scope = v.str("scope");
    if !scope.split_whitespace().any(|s| s == "openid") {
        return Err(invalid(
            "scope",
            format!("`{scope}` must include openid, e.g. \"openid email profile\""),
        ));
    }
    let mut ca_files = Vec::new();
    for f in v.list("provider_ca_files") {
        let path = PathBuf::from(&f);
        if !path.is_file() {
            return Err(invalid("provider_ca_files", format!("{f} is not a readable file")));
        }
        ca_files.push(path);
    }
    Ok(ProviderConfig {
        display_name: v
            .opt_str("provider_display_name")
            .unwrap_or_else(|| if is_entra { "Microsoft Entra ID" } else { "OpenID Connect" }.into()),
        issuer_url,
        skip_discovery,
        login_url,
        redeem_url,
        jwks_url,
        client_id,
        client_auth,
        entra,
        scope,
        prompt: v.opt_str("prompt"),
        approval_prompt: v.opt_str("approval_prompt"),
        acr_values: v.opt_str("acr_values"),
        pkce: pkce_enabled(v)?,
        email_claim: v.str("oidc_email_claim"),
        groups_claim: v.str("oidc_groups_claim"),
        user_id_claim: v.str("user_id_claim"),
        extra_audiences: v.list("oidc_extra_audiences"),
        allow_unverified_email: v.bool("insecure_oidc_allow_unverified_email"),
        ca_files,
    })
}

/// The v2.0 issuer for an issuer the azure provider accepted: its v1 form
/// `https://sts.windows.net/<tenant>/` names the same tenant.
fn azure_v2_issuer(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) if url.host_str() == Some("sts.windows.net") => match url.path_segments().and_then(|mut s| s.next()) {
            Some(tenant) if !tenant.is_empty() => format!("{}/{tenant}/v2.0", entra::DEFAULT_AUTHORITY_HOST.trim_end_matches('/')),
            _ => raw.to_string(),
        },
        _ => raw.to_string(),
    }
}

fn entra_config(v: &Values, issuer: &Url) -> Result<EntraConfig, ConfigError> {
    let segment = entra::tenant_of(issuer);
    let tenant = segment.filter(|t| !entra::is_multi_tenant(t)).map(String::from);
    if let (Some(t), Some(env)) = (&tenant, &v.azure.tenant_id)
        && !t.eq_ignore_ascii_case(env)
        && v.is_set("oidc_issuer_url")
    {
        return Err(invalid(
            "oidc_issuer_url",
            format!("names tenant {t}, but AZURE_TENANT_ID is {env}; make them agree (or unset one)"),
        ));
    }
    let issuer_template = match v.opt_str("entra_id_issuer_template") {
        Some(t) if t.matches(entra::TENANT_PLACEHOLDER).count() == 1 => t,
        Some(t) => {
            return Err(invalid(
                "entra_id_issuer_template",
                format!("`{t}` must contain {} exactly once, e.g. https://login.microsoftonline.us/{{tenantid}}/v2.0", entra::TENANT_PLACEHOLDER),
            ));
        }
        None => entra::default_issuer_template(issuer).ok_or_else(|| {
            invalid(
                "oidc_issuer_url",
                format!("`{issuer}` has no tenant in its path; use https://login.microsoftonline.com/<tenant>/v2.0, or set entra_id_issuer_template"),
            )
        })?,
    };
    let allowed_tenants = v.list("entra_id_allowed_tenants");
    if tenant.is_none() && allowed_tenants.is_empty() {
        return Err(invalid(
            "entra_id_allowed_tenants",
            format!(
                "is required with the multi-tenant issuer {issuer}: list the tenant ids that may sign in (or \"*\" for any tenant, then restrict with allowed_groups or email_domains)"
            ),
        ));
    }
    if tenant.is_some() && !allowed_tenants.is_empty() {
        return Err(invalid(
            "entra_id_allowed_tenants",
            "only applies to a common or organizations issuer; a tenant-specific oidc_issuer_url already allows exactly its tenant",
        ));
    }
    let graph_url = match v.opt_str("entra_id_graph_url") {
        Some(raw) => {
            let mut url = Url::parse(&raw).map_err(|e| invalid("entra_id_graph_url", format!("`{raw}` is not an absolute URL: {e}")))?;
            check_secure_url("entra_id_graph_url", &url)?;
            if !url.path().ends_with('/') {
                url.set_path(&format!("{}/", url.path()));
            }
            url
        }
        None => entra::default_graph_url(issuer).ok_or_else(|| {
            invalid(
                "entra_id_graph_url",
                format!("cannot tell which Microsoft Graph serves {issuer}; set entra_id_graph_url (e.g. https://graph.microsoft.com)"),
            )
        })?,
    };
    Ok(EntraConfig {
        issuer_template,
        tenant,
        allowed_tenants,
        graph_url,
    })
}

/// Exactly one way to authenticate the client; each conflicting pair is named.
fn client_auth(v: &Values, is_entra: bool) -> Result<ClientAuth, ConfigError> {
    let federated = is_entra && v.bool("entra_id_federated_token_auth");
    let mut chosen: Vec<&str> = [
        "client_secret",
        "client_secret_file",
        "client_assertion_file",
        "jwt_key",
        "jwt_key_file",
    ]
    .into_iter()
    .filter(|k| v.opt_str(k).is_some())
    .collect();
    if federated && !v.is_set("client_assertion_file") {
        chosen.push("entra_id_federated_token_auth");
    }
    if chosen.len() > 1 {
        return Err(invalid(
            chosen[1],
            format!(
                "set exactly one client credential, but {} are set; remove all but one",
                chosen.join(" and ")
            ),
        ));
    }
    Ok(match chosen.first().copied() {
        Some("client_secret") => ClientAuth::Secret(Secret::new(v.str("client_secret"))),
        Some("client_secret_file") => {
            let path = PathBuf::from(v.str("client_secret_file"));
            let secret = std::fs::read_to_string(&path)
                .map_err(|e| invalid("client_secret_file", format!("cannot read {}: {e}", path.display())))?;
            if secret.trim().is_empty() {
                return Err(invalid("client_secret_file", format!("{} is empty", path.display())));
            }
            ClientAuth::SecretFile(path)
        }
        // Not read here: the file may appear after start-up (the kubelet projects it), and
        // /ready reports it until it does.
        Some("client_assertion_file") => ClientAuth::AssertionFile {
            path: PathBuf::from(v.str("client_assertion_file")),
            option: "client_assertion_file",
        },
        Some("entra_id_federated_token_auth") => match &v.azure.federated_token_file {
            Some(path) => ClientAuth::AssertionFile {
                path: PathBuf::from(path),
                option: "AZURE_FEDERATED_TOKEN_FILE",
            },
            None => {
                return Err(invalid(
                    "entra_id_federated_token_auth",
                    "is true, but AZURE_FEDERATED_TOKEN_FILE is not set: mount a projected service-account token (audience api://AzureADTokenExchange) and set AZURE_FEDERATED_TOKEN_FILE to its path, or set client_assertion_file",
                ));
            }
        },
        Some(key @ ("jwt_key" | "jwt_key_file")) => {
            let pem = if key == "jwt_key" {
                v.str("jwt_key")
            } else {
                let path = v.str("jwt_key_file");
                std::fs::read_to_string(&path).map_err(|e| invalid("jwt_key_file", format!("cannot read {path}: {e}")))?
            };
            let signer = JwtSigner::from_pem(&pem, v.opt_str("jwt_key_id")).map_err(|e| {
                invalid(
                    key,
                    format!(
                        "is not a PEM RSA private key ({e}); create one with: openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048"
                    ),
                )
            })?;
            ClientAuth::PrivateKeyJwt(std::sync::Arc::new(signer))
        }
        // oauth2-proxy allows a public client only when PKCE was asked for explicitly.
        _ if v.is_set("code_challenge_method") && pkce_enabled(v)? => ClientAuth::None,
        _ => {
            return Err(invalid(
                "client_secret",
                if is_entra {
                    "is required: set entra_id_federated_token_auth = true (workload identity, no secret), client_secret_file, or client_secret"
                } else {
                    "is required: set client_secret, client_secret_file, client_assertion_file or jwt_key_file (for a public client, set code_challenge_method = \"S256\" explicitly)"
                },
            ));
        }
    })
}

fn pkce_enabled(v: &Values) -> Result<bool, ConfigError> {
    match v.str("code_challenge_method").as_str() {
        "S256" => Ok(true),
        "" | "none" => Ok(false),
        "plain" => Err(invalid(
            "code_challenge_method",
            "plain gives no protection if the code leaks; use S256 (the default)",
        )),
        other => Err(invalid(
            "code_challenge_method",
            format!("`{other}` is not a PKCE method; use S256, or none to disable PKCE"),
        )),
    }
}

const SECRET_HINT: &str = "generate one with: openssl rand -base64 32 | tr -- '+/' '-_'";

fn cookie_config(v: &Values) -> Result<CookieConfig, ConfigError> {
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

/// Accepts Go-style addresses: `127.0.0.1:4180`, `:4180` (all interfaces), `[::1]:4180`,
/// optionally prefixed with `http://`.
pub fn parse_listen_address(raw: &str) -> Result<SocketAddr, String> {
    let addr = raw.strip_prefix("http://").or_else(|| raw.strip_prefix("https://")).unwrap_or(raw);
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("`{raw}` has no valid port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Some((host, port)) = addr.rsplit_once(':')
        && host.eq_ignore_ascii_case("localhost")
    {
        let port: u16 = port.parse().map_err(|_| format!("`{raw}` has no valid port"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    addr.parse()
        .map_err(|_| format!("`{raw}` is not an address; use <ip>:<port> such as 0.0.0.0:4180 or 127.0.0.1:4180"))
}

fn parse_upstreams(raw: &[String]) -> Result<Vec<Upstream>, ConfigError> {
    let mut out: Vec<Upstream> = Vec::new();
    for item in raw {
        let bad = |m: String| invalid("upstreams", format!("`{item}`: {m}"));
        let upstream = if let Some(code) = item.strip_prefix("static://") {
            let code: u16 = code
                .trim_end_matches('/')
                .parse()
                .map_err(|_| bad("static:// needs a status code, e.g. static://202".into()))?;
            if !(200..=599).contains(&code) {
                return Err(bad("status must be between 200 and 599".into()));
            }
            Upstream {
                path: "/".into(),
                target: UpstreamTarget::Static(code),
            }
        } else if let Some(rest) = item.strip_prefix("file://") {
            let (dir, path) = rest.split_once('#').unwrap_or((rest, "/"));
            if !dir.starts_with('/') {
                return Err(bad("file:// needs an absolute directory, e.g. file:///var/www#/static/".into()));
            }
            if !path.starts_with('/') {
                return Err(bad("the part after # must be a path such as /static/".into()));
            }
            Upstream {
                path: path.into(),
                target: UpstreamTarget::File(PathBuf::from(dir)),
            }
        } else {
            let url =
                Url::parse(item).map_err(|e| bad(format!("not a URL ({e}); use http://host:port/, static://202 or file:///dir#/path")))?;
            if !matches!(url.scheme(), "http" | "https" | "h2c") || url.host().is_none() {
                return Err(bad(
                    "use http:// or https:// with a host (h2c:// for cleartext HTTP/2, e.g. gRPC)".into()
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(bad("an upstream URL cannot have a query or fragment".into()));
            }
            let path = url.path().to_string();
            let mut origin = url.clone();
            origin.set_path("");
            Upstream {
                path,
                target: UpstreamTarget::Http(origin),
            }
        };
        if out.iter().any(|u| u.path == upstream.path) {
            return Err(bad(format!("another upstream already serves the path {}", upstream.path)));
        }
        out.push(upstream);
    }
    // Longest prefix first: routing takes the first match.
    out.sort_by_key(|u| std::cmp::Reverse(u.path.len()));
    Ok(out)
}

#[cfg(test)]
mod tests;
