//! Configuration: the oauth2-proxy-compatible option table, the loader, and the typed,
//! validated [`Config`] the proxy runs on. Every error names the option and the fix.

mod cli;
mod cookie_and_redis;
pub mod duration;
pub mod load;
pub mod options;
mod provider;
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

pub use cookie_and_redis::{REDIS_TIMEOUT, RedisConfig, parse_cookie_secret};
use cookie_and_redis::{cookie_config, redis_config};
use provider::provider_config;

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

#[derive(Clone, Debug, Default)]
pub struct SignOutConfig {
    /// Send the browser to the provider's `end_session_endpoint` after clearing the session.
    pub at_provider: bool,
    /// Called by the proxy on sign-out; `{id_token}` is replaced by the session's ID token.
    pub backend_logout_url: Option<String>,
}

/// The deadlines on client connections. oauth2-proxy has no options for them, so neither
/// do we: production runs the defaults, and tests shorten them rather than wait them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection must bring a complete request head (TLS handshake included) this soon
    /// after opening, and again after its last response, over HTTP/1.1 and HTTP/2 alike;
    /// an HTTP/2 HEADERS frame beside other streams this soon after its first byte.
    pub header_read: Duration,
    /// A connection with a request in flight that moves no byte for this long is shut down
    /// (nginx's `keepalive_timeout` is 75 s); the request still gets its answer.
    pub idle: Duration,
    /// How long in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub http_address: SocketAddr,
    pub limits: ConnectionLimits,
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
            limits: ConnectionLimits::default(),
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
    crate::tls::load_key_pair(&cert, &key, &rustls::crypto::ring::default_provider())
        .map_err(|e| invalid("tls_cert_file", e.to_string()))?;
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
mod provider_tests;
#[cfg(test)]
mod tests;
