//! The table of every oauth2-proxy option and what sidekey does with it.
//!
//! One table drives the command-line parser, the TOML and environment loaders, the
//! "did you mean" suggestions, and `docs/configuration.md`, so the four can never disagree.

/// How a value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Bool,
    Int,
    /// Go's `time.ParseDuration` text (`168h`, `1h30m`); kept as text until validated.
    Duration,
    /// Repeated flags or comma-separated values; a TOML array.
    List,
}

/// What sidekey does with an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Supported,
    /// On the roadmap. Until then a non-default value is refused, never silently ignored.
    Planned,
    /// Will not be built; the reason says why and what to use instead.
    NotPlanned(&'static str),
    /// Accepted and has no effect, because sidekey already behaves as the reason says.
    Ignored(&'static str),
}

#[derive(Debug)]
pub struct Opt {
    /// Command-line flag without the leading `--`.
    pub flag: &'static str,
    /// TOML key; the environment name is `OAUTH2_PROXY_` + this, upper-cased.
    pub key: &'static str,
    pub kind: Kind,
    /// oauth2-proxy's default, as text ("" for none).
    pub default: &'static str,
    pub status: Status,
    pub help: &'static str,
}

impl Opt {
    pub fn env_name(&self) -> String {
        format!("OAUTH2_PROXY_{}", self.key.to_ascii_uppercase())
    }
}

use Kind::*;
use Status::*;

const fn o(flag: &'static str, key: &'static str, kind: Kind, default: &'static str, status: Status, help: &'static str) -> Opt {
    Opt {
        flag,
        key,
        kind,
        default,
        status,
        help,
    }
}

const PROVIDER_SPECIFIC: &str =
    "provider-specific; sidekey speaks OpenID Connect (`oidc`, `entra-id`): use the provider's OIDC issuer and `allowed_groups`";
const LOG_FILES: &str = "sidekey logs to stderr; collecting and rotating logs belongs to the platform";
const GO_TEMPLATES: &str = "Go template log formats; sidekey writes fixed text or JSON lines (`logging_format`)";

/// Every option, in the order `docs/configuration.md` lists them: one row each.
#[rustfmt::skip]
pub static OPTIONS: &[Opt] = &[
    // --- Command line only ---------------------------------------------------------------
    o("config", "config", Str, "", Supported, "Path to a TOML configuration file (oauth2-proxy's format)."),
    o("config-test", "config_test", Bool, "false", Supported, "Validate the configuration, print a summary and the start-up warnings, and exit (sidekey extension)."),
    o("strict", "strict", Bool, "false", Supported, "Refuse to start, or fail --config-test, when there is any start-up warning (sidekey extension)."),
    o("version", "version", Bool, "false", Supported, "Print the version and exit."),
    o("alpha-config", "alpha_config", Str, "", NotPlanned("the alpha YAML format is unstable upstream; the TOML/flag/env format is the stable contract"), "Path to an alpha YAML configuration."),
    o("convert-config-to-alpha", "convert_config_to_alpha", Bool, "false", NotPlanned("see alpha_config"), "Convert to the alpha format."),
    // --- Server --------------------------------------------------------------------------
    o("http-address", "http_address", Str, "127.0.0.1:4180", Supported, "[http://]<addr>:<port> to listen on for HTTP clients."),
    o("https-address", "https_address", Str, ":443", Supported, "<addr>:<port> to listen on for HTTPS clients."),
    o("tls-cert-file", "tls_cert_file", Str, "", Supported, "Path to the TLS certificate (PEM)."),
    o("tls-key-file", "tls_key_file", Str, "", Supported, "Path to the TLS private key (PEM)."),
    o("tls-min-version", "tls_min_version", Str, "", Supported, "Minimum TLS version: TLS1.2 or TLS1.3."),
    o("tls-cipher-suite", "tls_cipher_suites", List, "", Supported, "TLS cipher suites to allow."),
    o("metrics-address", "metrics_address", Str, "", Supported, "Address to serve Prometheus metrics on."),
    o("metrics-secure-address", "metrics_secure_address", Str, "", Planned, "Address to serve Prometheus metrics on over TLS."),
    o("metrics-tls-cert-file", "metrics_tls_cert_file", Str, "", Planned, "TLS certificate for the metrics listener."),
    o("metrics-tls-key-file", "metrics_tls_key_file", Str, "", Planned, "TLS key for the metrics listener."),
    o("reverse-proxy", "reverse_proxy", Bool, "false", Supported, "Trust X-Forwarded-* headers from the front end."),
    o("trusted-proxy-ip", "trusted_proxy_ips", List, "", Supported, "Front-end addresses (CIDRs) whose X-Forwarded-* headers are honoured."),
    o("real-client-ip-header", "real_client_ip_header", Str, "X-Real-IP", Supported, "Header holding the client IP when reverse_proxy is on."),
    o("auth-success-status", "auth_success_status", Int, "202", Supported, "Status /oauth2/auth answers for an authorized request: 202 for nginx and Traefik, 200 for Envoy ext_authz (sidekey extension)."),
    o("trusted-ip", "trusted_ips", List, "", NotPlanned("skipping authentication by source IP is spoofable behind proxies; use skip_auth_routes or a NetworkPolicy"), "IPs that skip authentication."),
    o("force-https", "force_https", Bool, "false", Planned, "Redirect plain HTTP requests to HTTPS."),
    o("redirect-url", "redirect_url", Str, "", Supported, "The OAuth redirect URL, e.g. https://app.example.com/oauth2/callback. Default: derived from the request."),
    o("relative-redirect-url", "relative_redirect_url", Bool, "false", Planned, "Allow a relative redirect URL."),
    o("proxy-prefix", "proxy_prefix", Str, "/oauth2", Supported, "The URL path prefix of the proxy's own endpoints."),
    o("ping-path", "ping_path", Str, "/ping", Supported, "Path of the liveness endpoint (always 200)."),
    o("ping-user-agent", "ping_user_agent", Str, "", NotPlanned( "a User-Agent that answers 'OK' on every path is an authentication bypass (CVE-2026-34457 class); probe ping_path instead", ), "User-Agent treated as a health check."),
    o("ready-path", "ready_path", Str, "/ready", Supported, "Path of the readiness endpoint (200 once the provider is reachable)."),
    o("gcp-healthchecks", "gcp_healthchecks", Bool, "false", NotPlanned("deprecated upstream; probe ping_path and ready_path"), "Enable GCP/GKE health-check endpoints."),
    o("workers", "workers", Int, "0", Supported, "Server threads, each serving its own connections with its own upstream connection pool; 0 starts one per CPU the process may use, a cgroup CPU limit included (sidekey extension)."),
    o("upstream-timeout", "upstream_timeout", Duration, "30s", Supported, "Maximum time to wait for an upstream's response headers."),
    o("flush-interval", "flush_interval", Duration, "1s", Ignored("responses are streamed and flushed as bytes arrive"), "Period between flushes of streamed responses."),
    o("pass-host-header", "pass_host_header", Bool, "true", Supported, "Pass the request Host header to the upstream."),
    o("ssl-insecure-skip-verify", "ssl_insecure_skip_verify", Bool, "false", Planned, "Skip TLS verification of the provider (use provider_ca_files instead)."),
    o("ssl-upstream-insecure-skip-verify", "ssl_upstream_insecure_skip_verify", Bool, "false", Planned, "Skip TLS verification of https upstreams."),
    o("upstream", "upstreams", List, "", Supported, "Upstreams: http(s)://host[:port][/path], static://<status>, file:///dir#/path. Longest path wins."),
    o("allow-query-semicolons", "allow_query_semicolons", Bool, "false", NotPlanned("query strings are forwarded untouched; sidekey never interprets them for routing"), "Allow ';' as a query separator."),
    // --- Provider --------------------------------------------------------------------------
    o("provider", "provider", Str, "google", Supported, "OAuth provider: oidc, or entra-id (Microsoft Entra ID: tenant-aware issuer checks, groups overage, workload identity). oauth2-proxy's azure runs as entra-id and keycloak-oidc as oidc, with a warning."),
    o("provider-display-name", "provider_display_name", Str, "", Supported, "Name shown on the sign-in button."),
    o("provider-ca-file", "provider_ca_files", List, "", Supported, "PEM CA bundles trusted for the provider, in addition to the built-in web roots."),
    o("use-system-trust-store", "use_system_trust_store", Bool, "false", Planned, "Trust the operating system's CA store for the provider."),
    o("client-id", "client_id", Str, "", Supported, "The OAuth client ID."),
    o("client-secret", "client_secret", Str, "", Supported, "The OAuth client secret."),
    o("client-secret-file", "client_secret_file", Str, "", Supported, "File holding the client secret (read at every token request, so rotation needs no restart)."),
    o("client-assertion-file", "client_assertion_file", Str, "", Supported, "File holding a JWT sent as client_assertion instead of a client secret, read at every token request (e.g. a projected Kubernetes service-account token; sidekey extension)."),
    o("oidc-issuer-url", "oidc_issuer_url", Str, "", Supported, "The OpenID Connect issuer URL, e.g. https://login.microsoftonline.com/<tenant>/v2.0."),
    o("skip-oidc-discovery", "skip_oidc_discovery", Bool, "false", Supported, "Skip discovery; set login_url, redeem_url and oidc_jwks_url."),
    o("oidc-jwks-url", "oidc_jwks_url", Str, "", Supported, "JWKS URL, with skip_oidc_discovery."),
    o("login-url", "login_url", Str, "", Supported, "Authorization endpoint, with skip_oidc_discovery."),
    o("redeem-url", "redeem_url", Str, "", Supported, "Token endpoint, with skip_oidc_discovery."),
    o("profile-url", "profile_url", Str, "", Planned, "Userinfo endpoint for claims missing from the ID token."),
    o("validate-url", "validate_url", Str, "", Planned, "Access-token validation URL."),
    o("skip-claims-from-profile-url", "skip_claims_from_profile_url", Bool, "false", Ignored("claims are read from the ID token only"), "Skip the profile URL for claims."),
    o("oidc-email-claim", "oidc_email_claim", Str, "email", Supported, "Claim holding the email address."),
    o("oidc-groups-claim", "oidc_groups_claim", Str, "groups", Supported, "Claim holding the groups."),
    o("user-id-claim", "user_id_claim", Str, "email", Supported, "Claim holding the user id (X-Forwarded-User)."),
    o("oidc-audience-claim", "oidc_audience_claims", List, "aud", Planned, "Claims checked for the audience."),
    o("oidc-extra-audience", "oidc_extra_audiences", List, "", Supported, "Audiences accepted in addition to client_id."),
    o("oidc-public-key-file", "oidc_public_key_files", List, "", Planned, "Public keys that verify ID tokens instead of JWKS."),
    o("insecure-oidc-allow-unverified-email", "insecure_oidc_allow_unverified_email", Bool, "false", Supported, "Accept email addresses the provider marks email_verified=false."),
    o("insecure-oidc-skip-issuer-verification", "insecure_oidc_skip_issuer_verification", Bool, "false", Planned, "Do not check that the discovered issuer matches oidc_issuer_url."),
    o("insecure-oidc-skip-nonce", "insecure_oidc_skip_nonce", Bool, "true", Ignored("sidekey always sends a nonce and always verifies it"), "Skip verifying the ID token nonce."),
    o("scope", "scope", Str, "openid email profile", Supported, "OAuth scopes, space-separated."),
    o("prompt", "prompt", Str, "", Supported, "OIDC prompt parameter (e.g. login, consent, select_account)."),
    o("approval-prompt", "approval_prompt", Str, "force", Supported, "Sent as approval_prompt when prompt is empty."),
    o("acr-values", "acr_values", Str, "", Supported, "acr_values sent to the provider."),
    o("resource", "resource", Str, "", Planned, "The resource that is protected (Azure v1)."),
    o("code-challenge-method", "code_challenge_method", Str, "S256", Supported, "PKCE method: S256 (default in sidekey), plain, or none to disable."),
    o("force-code-challenge-method", "force_code_challenge_method", Str, "", NotPlanned("deprecated upstream; use code_challenge_method"), "Deprecated alias."),
    o("jwt-key", "jwt_key", Str, "", Supported, "PEM RSA private key for private_key_jwt client authentication (RFC 7523; iss = sub = client_id)."),
    o("jwt-key-file", "jwt_key_file", Str, "", Supported, "File holding the PEM RSA private key for private_key_jwt client authentication."),
    o("jwt-key-id", "jwt_key_id", Str, "", Supported, "Key id (kid) put in the header of private_key_jwt assertions (sidekey extension)."),
    o("pubjwk-url", "pubjwk_url", Str, "", NotPlanned(PROVIDER_SPECIFIC), "login.gov JWK URL."),
    o("backend-logout-url", "backend_logout_url", Str, "", Supported, "URL the proxy calls (GET) on sign-out, with {id_token} replaced by the session's ID token, e.g. Keycloak's logout endpoint."),
    o("oidc-logout", "oidc_logout", Bool, "false", Supported, "Sign-out also ends the provider session: the browser goes to the provider's end_session_endpoint with id_token_hint and the validated rd (default: the \"You are signed out\" page, /oauth2/signed_out) as post_logout_redirect_uri, which the provider must have registered (sidekey extension)."),
    o("entra-id-allowed-tenant", "entra_id_allowed_tenants", List, "", Supported, "Tenant ids allowed to sign in with a common/organizations issuer (multi-tenant apps); `*` allows any tenant."),
    o("entra-id-federated-token-auth", "entra_id_federated_token_auth", Bool, "false", Supported, "Authenticate with the workload identity token in AZURE_FEDERATED_TOKEN_FILE (read at every token request) instead of a client secret."),
    o("entra-id-issuer-template", "entra_id_issuer_template", Str, "", Supported, "Expected ID-token issuer with {tenantid}, e.g. https://login.microsoftonline.us/{tenantid}/v2.0; derived from oidc_issuer_url when empty (sidekey extension)."),
    o("entra-id-graph-url", "entra_id_graph_url", Str, "", Supported, "Microsoft Graph base URL for groups overage; derived from the authority host when empty (graph.microsoft.com, graph.microsoft.us, microsoftgraph.chinacloudapi.cn; sidekey extension)."),
    o("azure-tenant", "azure_tenant", Str, "common", Supported, "With provider = azure and no oidc_issuer_url: the tenant of the issuer https://login.microsoftonline.com/<tenant>/v2.0."),
    o("azure-graph-group-field", "azure_graph_group_field", Str, "", NotPlanned("the legacy azure provider is deprecated upstream; use entra-id"), "Graph field for groups."),
    o("github-org", "github_org", Str, "", NotPlanned(PROVIDER_SPECIFIC), "GitHub organisation."),
    o("github-team", "github_team", Str, "", NotPlanned(PROVIDER_SPECIFIC), "GitHub team."),
    o("github-repo", "github_repo", Str, "", NotPlanned(PROVIDER_SPECIFIC), "GitHub repository."),
    o("github-token", "github_token", Str, "", NotPlanned(PROVIDER_SPECIFIC), "GitHub token."),
    o("github-user", "github_users", List, "", NotPlanned(PROVIDER_SPECIFIC), "GitHub users."),
    o("gitlab-group", "gitlab_groups", List, "", NotPlanned(PROVIDER_SPECIFIC), "GitLab groups."),
    o("gitlab-project", "gitlab_projects", List, "", NotPlanned(PROVIDER_SPECIFIC), "GitLab projects."),
    o("google-group", "google_groups", List, "", NotPlanned(PROVIDER_SPECIFIC), "Google groups."),
    o("google-admin-email", "google_admin_email", Str, "", NotPlanned(PROVIDER_SPECIFIC), "Google admin email."),
    o("google-service-account-json", "google_service_account_json", Str, "", NotPlanned(PROVIDER_SPECIFIC), "Google service account JSON."),
    o("google-use-application-default-credentials", "google_use_application_default_credentials", Bool, "false", NotPlanned(PROVIDER_SPECIFIC), "Google ADC."),
    o("google-target-principal", "google_target_principal", Str, "", NotPlanned(PROVIDER_SPECIFIC), "Google target principal."),
    o("keycloak-group", "keycloak_groups", List, "", NotPlanned(PROVIDER_SPECIFIC), "Keycloak groups."),
    o("bitbucket-team", "bitbucket_team", Str, "", NotPlanned(PROVIDER_SPECIFIC), "Bitbucket team."),
    o("bitbucket-repository", "bitbucket_repository", Str, "", NotPlanned(PROVIDER_SPECIFIC), "Bitbucket repository."),
    // --- Authorization ---------------------------------------------------------------------
    o("email-domain", "email_domains", List, "", Supported, "Email domains allowed to sign in; * for any."),
    o("authenticated-emails-file", "authenticated_emails_file", Str, "", Supported, "File with one allowed email address per line."),
    o("allowed-email", "allowed_emails", List, "", Supported, "Email addresses allowed to sign in (sidekey extension; the inline form of authenticated_emails_file)."),
    o("allowed-group", "allowed_groups", List, "", Supported, "Groups (by the groups claim) allowed to sign in; any one suffices."),
    o("allowed-role", "allowed_roles", List, "", Planned, "Roles allowed to sign in (Keycloak-style)."),
    o("whitelist-domain", "whitelist_domains", List, "", Supported, "Domains allowed as redirect targets; a leading dot allows subdomains, :* any port."),
    o("htpasswd-file", "htpasswd_file", Str, "", NotPlanned("static passwords are long-lived secrets; sidekey signs users in through the identity provider only"), "htpasswd file."),
    o("htpasswd-user-group", "htpasswd_user_groups", List, "", NotPlanned("see htpasswd_file"), "Groups for htpasswd users."),
    o("display-htpasswd-form", "display_htpasswd_form", Bool, "true", Ignored("there is no htpasswd form"), "Show the htpasswd form."),
    o("skip-auth-regex", "skip_auth_regex", List, "", Supported, "Paths that skip authentication (regex), matched as skip_auth_routes are."),
    o("skip-auth-route", "skip_auth_routes", List, "", Supported, "Routes that skip authentication: METHOD=regex, METHOD!=regex (every other method) or regex, matched against the decoded, dot-segment-resolved path without the query. A path with a `;` (servlet path parameters) or an escape left after decoding never skips."),
    o("skip-auth-preflight", "skip_auth_preflight", Bool, "false", Supported, "Let CORS preflight (OPTIONS) requests through unauthenticated."),
    o("api-route", "api_routes", List, "", Supported, "Path regexes (on the normalized path) that answer 401 to unauthenticated requests instead of starting a login."),
    o("skip-jwt-bearer-tokens", "skip_jwt_bearer_tokens", Bool, "false", Supported, "Accept verified bearer JWTs instead of a session."),
    o("extra-jwt-issuers", "extra_jwt_issuers", List, "", Supported, "issuer=audience pairs for bearer JWTs."),
    o("skip-provider-button", "skip_provider_button", Bool, "false", Supported, "Go straight to the provider instead of showing the sign-in page."),
    // --- Headers -----------------------------------------------------------------------------
    o("pass-basic-auth", "pass_basic_auth", Bool, "true", Supported, "Pass user headers and Authorization: Basic user:basic_auth_password upstream."),
    o("basic-auth-password", "basic_auth_password", Str, "", Supported, "Password for the Basic header sent upstream."),
    o("pass-user-headers", "pass_user_headers", Bool, "true", Supported, "Pass X-Forwarded-User, -Email, -Groups and -Preferred-Username upstream."),
    o("prefer-email-to-user", "prefer_email_to_user", Bool, "false", Supported, "Use the email as the user in X-Forwarded-User and Basic auth."),
    o("pass-access-token", "pass_access_token", Bool, "false", Supported, "Pass X-Forwarded-Access-Token upstream (and X-Auth-Request-Access-Token with set_xauthrequest)."),
    o("pass-authorization-header", "pass_authorization_header", Bool, "false", Supported, "Pass Authorization: Bearer <ID token> upstream."),
    o("set-authorization-header", "set_authorization_header", Bool, "false", Supported, "Set Authorization: Bearer <ID token> on responses (for auth_request front ends)."),
    o("set-basic-auth", "set_basic_auth", Bool, "false", Supported, "Set Authorization: Basic on responses."),
    o("set-xauthrequest", "set_xauthrequest", Bool, "false", Supported, "Set X-Auth-Request-User, -Email, -Groups, -Preferred-Username on responses."),
    o("skip-auth-strip-headers", "skip_auth_strip_headers", Bool, "true", NotPlanned("sidekey always strips client-sent identity headers; turning that off would let clients spoof identities"), "Strip identity headers from requests."),
    // --- Sessions and cookies -----------------------------------------------------------------
    o("cookie-name", "cookie_name", Str, "_oauth2_proxy", Supported, "Name of the session cookie."),
    o("cookie-secret", "cookie_secret", Str, "", Supported, "Secret for cookie encryption: 16, 24 or 32 bytes, raw or base64."),
    o("cookie-secret-file", "cookie_secret_file", Str, "", Supported, "File holding the cookie secret."),
    o("cookie-domain", "cookie_domains", List, "", Supported, "Cookie domains; the longest one matching the request host is used."),
    o("cookie-path", "cookie_path", Str, "/", Supported, "Cookie path."),
    o("cookie-expire", "cookie_expire", Duration, "168h0m0s", Supported, "Session lifetime, a duration such as 168h or 12h30m."),
    o("cookie-refresh", "cookie_refresh", Duration, "0s", Supported, "Refresh the session's tokens after this duration (0s: only when they are about to expire)."),
    o("cookie-secure", "cookie_secure", Bool, "true", Supported, "Set the Secure cookie attribute."),
    o("cookie-httponly", "cookie_httponly", Bool, "true", Supported, "Set the HttpOnly cookie attribute."),
    o("cookie-samesite", "cookie_samesite", Str, "", Supported, "SameSite attribute: lax, strict, none, or empty."),
    o("cookie-csrf-per-request", "cookie_csrf_per_request", Bool, "false", Supported, "One CSRF cookie per login attempt, so parallel logins in several tabs work."),
    o("cookie-csrf-expire", "cookie_csrf_expire", Duration, "15m", Supported, "Lifetime of the CSRF cookie (the time a user has to log in)."),
    o("session-cookie-minimal", "session_cookie_minimal", Bool, "false", Supported, "Keep only user, email, groups and expiry in the session (no tokens)."),
    o("session-store-type", "session_store_type", Str, "cookie", Supported, "Session store: cookie or redis."),
    o("redis-connection-url", "redis_connection_url", Str, "", Supported, "redis:// or rediss:// URL."),
    o("redis-username", "redis_username", Str, "", Supported, "Redis user."),
    o("redis-password", "redis_password", Str, "", Supported, "Redis password."),
    o("redis-use-sentinel", "redis_use_sentinel", Bool, "false", Supported, "Connect through Redis Sentinel."),
    o("redis-sentinel-password", "redis_sentinel_password", Str, "", Supported, "Sentinel password."),
    o("redis-sentinel-master-name", "redis_sentinel_master_name", Str, "", Supported, "Sentinel master name."),
    o("redis-sentinel-connection-urls", "redis_sentinel_connection_urls", List, "", Supported, "Sentinel URLs."),
    o("redis-use-cluster", "redis_use_cluster", Bool, "false", Supported, "Connect to a Redis Cluster."),
    o("redis-cluster-connection-urls", "redis_cluster_connection_urls", List, "", Supported, "Cluster URLs."),
    o("redis-ca-path", "redis_ca_path", Str, "", Supported, "CA bundle for rediss://."),
    o("redis-insecure-skip-tls-verify", "redis_insecure_skip_tls_verify", Bool, "false", NotPlanned("without certificate checks anyone on the path can read and forge sessions; give the server's CA with redis_ca_path"), "Skip TLS verification of Redis."),
    o("redis-connection-idle-timeout", "redis_connection_idle_timeout", Int, "0", Supported, "Idle timeout of Redis connections, seconds."),
    // --- Pages ---------------------------------------------------------------------------------
    o("custom-templates-dir", "custom_templates_dir", Str, "", Planned, "Directory with custom page templates."),
    o("custom-sign-in-logo", "custom_sign_in_logo", Str, "", Planned, "Logo on the sign-in page."),
    o("banner", "banner", Str, "", Supported, "Text shown on the sign-in page instead of the default; '-' hides it."),
    o("footer", "footer", Str, "", Supported, "Text shown in the page footer; '-' hides it."),
    o("show-debug-on-error", "show_debug_on_error", Bool, "false", Planned, "Show error details on error pages."),
    o("encode-state", "encode_state", Bool, "false", Ignored("the state parameter is always an opaque random value bound to a CSRF cookie"), "Base64-encode the state parameter."),
    o("signature-key", "signature_key", Str, "", NotPlanned("GAP-Signature is deprecated upstream; use pass_authorization_header and verify the ID token"), "GAP-Signature HMAC key."),
    // --- Logging -------------------------------------------------------------------------------
    o("logging-format", "logging_format", Str, "text", Supported, "Log line format: text or json (sidekey extension)."),
    o("standard-logging", "standard_logging", Bool, "true", Supported, "Log service events (start, discovery, errors)."),
    o("request-logging", "request_logging", Bool, "true", Supported, "Log one line per request."),
    o("auth-logging", "auth_logging", Bool, "true", Supported, "Log authentication events (login, logout, denial)."),
    o("standard-logging-format", "standard_logging_format", Str, "", Ignored(GO_TEMPLATES), "Go template for service logs."),
    o("request-logging-format", "request_logging_format", Str, "", Ignored(GO_TEMPLATES), "Go template for request logs."),
    o("auth-logging-format", "auth_logging_format", Str, "", Ignored(GO_TEMPLATES), "Go template for auth logs."),
    o("exclude-logging-path", "exclude_logging_paths", List, "", Supported, "Paths not to log (exact match)."),
    o("silence-ping-logging", "silence_ping_logging", Bool, "false", Supported, "Do not log ping_path and ready_path requests."),
    o("request-id-header", "request_id_header", Str, "X-Request-Id", Supported, "Header carrying the request id (generated when absent, passed upstream)."),
    o("errors-to-info-log", "errors_to_info_log", Bool, "false", Ignored("all logs go to stderr"), "Send errors to the info log."),
    o("logging-filename", "logging_filename", Str, "", NotPlanned(LOG_FILES), "Log file."),
    o("logging-max-size", "logging_max_size", Int, "100", NotPlanned(LOG_FILES), "Log file size limit."),
    o("logging-max-age", "logging_max_age", Int, "7", NotPlanned(LOG_FILES), "Log file age limit."),
    o("logging-max-backups", "logging_max_backups", Int, "0", NotPlanned(LOG_FILES), "Log files kept."),
    o("logging-local-time", "logging_local_time", Bool, "true", Ignored("timestamps are UTC (RFC 3339)"), "Local time in logs."),
    o("logging-compress", "logging_compress", Bool, "false", NotPlanned(LOG_FILES), "Compress rotated logs."),
];

/// The option with this TOML key.
pub fn by_key(key: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// The closest valid TOML key, for "did you mean" messages. Also matches flag spellings and
/// singular/plural slips (`upstream` → `upstreams`).
pub fn closest_key(unknown: &str) -> Option<&'static str> {
    let probe = unknown.to_ascii_lowercase().replace('-', "_");
    if let Some(o) = OPTIONS.iter().find(|o| o.flag.replace('-', "_") == probe) {
        return Some(o.key);
    }
    OPTIONS
        .iter()
        .map(|o| (strsim::jaro_winkler(&probe, o.key), o.key))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, key)| key)
}

/// `docs/configuration.md`, generated from the table (a test keeps the committed copy fresh).
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated from proxy/src/config/options.rs by `make docs`; do not edit. -->\n\n\
         sidekey-proxy reads oauth2-proxy's configuration unchanged: command-line flags, a TOML file \
         (`--config`), and `OAUTH2_PROXY_*` environment variables, with the same names and the same \
         precedence (flag > environment > file). Lists are repeated flags or comma-separated values \
         (`--email-domain=a.com,b.com`; quote an item that holds a comma: `'\"^/a{1,2}$\",^/b'`), TOML arrays, \
         or comma-separated strings in the file and the environment. An empty `OAUTH2_PROXY_*` variable counts as \
         unset.\n\n\
         Values are typed as oauth2-proxy types them, so `skip_provider_button = \"true\"` is a boolean: a boolean \
         is `true`/`false` or, as text, Go's `1, t, T, TRUE, True` and `0, f, F, FALSE, False` (an empty string in \
         the file is false); an int may be written as a string (`\"30\"`, Go's `0x1e`); a string may be a number or \
         a boolean (`client_id = 12345`; a boolean becomes `1` or `0`); a single value is a one-item list. A duration \
         is text such as `168h` or `1h30m`: a bare number is refused, because oauth2-proxy would read \
         `cookie_expire = 604800` as 604800 nanoseconds (a bare `0` is accepted as zero).\n\n\
         Unknown keys in the file or on the command line are an error that names the closest valid key. \
         Unknown `OAUTH2_PROXY_*` environment variables only warn, because Kubernetes injects \
         `OAUTH2_PROXY_SERVICE_HOST`-style variables for any Service called `oauth2-proxy`.\n\n\
         `--config-test` and a normal start print the same warnings (an unknown `OAUTH2_PROXY_*` variable, no \
         upstream, an option that has no effect, a provider that runs as another); `--strict` makes any of them \
         fatal.\n\n\
         Status: **supported**; **planned** (a non-default value is refused at start-up until it is \
         built, never silently ignored); **not planned** (refused when set to a non-default value, with \
         the reason); **ignored** (accepted; sidekey already behaves as described).\n\n\
         Differences from oauth2-proxy by design: PKCE `S256` is on by default; a 44-character \
         `openssl rand -base64 32` cookie secret is accepted as 32 bytes; the nonce is always verified.\n\n\
         | Flag | TOML key / `OAUTH2_PROXY_*` | Type | Default | Status | Description |\n\
         |---|---|---|---|---|---|\n",
    );
    for o in OPTIONS {
        let kind = match o.kind {
            Str => "string",
            Bool => "bool",
            Int => "int",
            Duration => "duration",
            List => "list",
        };
        let status = match o.status {
            Supported => "supported".to_string(),
            Planned => "planned".to_string(),
            NotPlanned(why) => format!("not planned: {why}"),
            Ignored(why) => format!("ignored: {why}"),
        };
        let default = if o.default.is_empty() {
            String::new()
        } else {
            format!("`{}`", o.default)
        };
        out.push_str(&format!(
            "| `--{}` | `{}` / `{}` | {} | {} | {} | {} |\n",
            o.flag,
            o.key,
            o.env_name(),
            kind,
            default,
            status,
            o.help.replace('|', "\\|")
        ));
    }
    out
}
