use super::load::{Value, parse_toml};
use super::*;

pub(super) const SECRET_44: &str = "kWLVCNcSNRuhD1mwXR8ExoBRH8hjQCxDdQz9IMxbG5E="; // openssl rand -base64 32

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub(super) fn base_args() -> Vec<&'static str> {
    vec![
        "sidekey-proxy",
        "--provider=oidc",
        "--oidc-issuer-url=https://idp.example.com",
        "--client-id=app",
        "--client-secret=s3cret",
        "--cookie-secret",
        SECRET_44,
        "--email-domain=example.com",
    ]
}

pub(super) fn build(args: &[&str], env_pairs: &[(&str, &str)]) -> Result<Config, String> {
    let inv = load(args.iter().map(|s| s.to_string()), env(env_pairs)).map_err(|e| e.to_string())?;
    Config::from_values(&inv.values).map_err(|e| e.to_string())
}

/// A typical oauth2-proxy TOML, as users have it today, loads unchanged.
const TYPICAL_TOML: &str = r#"
## oauth2-proxy config
http_address = "0.0.0.0:4180"
provider = "oidc"
provider_display_name = "Corp SSO"
oidc_issuer_url = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret = "not-a-real-secret"
upstreams = ["http://127.0.0.1:8080/", "http://127.0.0.1:9090/api/"]
email_domains = ["example.com", "example.org"]
cookie_secret = "kWLVCNcSNRuhD1mwXR8ExoBRH8hjQCxDdQz9IMxbG5E="
cookie_domains = [".example.com"]
cookie_secure = true
cookie_expire = "12h"
cookie_samesite = "lax"
skip_provider_button = true
set_xauthrequest = true
pass_access_token = true
code_challenge_method = "S256"
whitelist_domains = [".example.com", "example.org:*"]
session_cookie_minimal = false
reverse_proxy = false
pass_basic_auth = false
insecure_oidc_skip_nonce = true
session_store_type = "cookie"
"#;

#[test]
fn typical_oauth2_proxy_toml_loads_unchanged() {
    let v = parse_toml(TYPICAL_TOML, "test.cfg").unwrap();
    let cfg = Config::from_values(&v).unwrap();
    assert_eq!(cfg.http_address, "0.0.0.0:4180".parse().unwrap());
    assert_eq!(cfg.provider.display_name, "Corp SSO");
    assert_eq!(cfg.upstreams.len(), 2);
    assert_eq!(cfg.upstreams[0].path, "/api/", "longest prefix first");
    assert_eq!(cfg.authz.email_domains, vec!["example.com", "example.org"]);
    assert_eq!(cfg.cookie.secret.expose().len(), 32);
    assert_eq!(cfg.cookie.domains, vec!["example.com"]);
    assert_eq!(cfg.cookie.expire, Duration::from_secs(12 * 3600));
    assert_eq!(cfg.cookie.samesite, SameSite::Lax);
    assert!(cfg.skip_provider_button && cfg.headers.set_xauthrequest && cfg.headers.pass_access_token);
    assert!(!cfg.headers.pass_basic_auth);
    assert!(cfg.provider.pkce);
    assert_eq!(cfg.whitelist_domains, vec![".example.com", "example.org:*"]);
    assert!(!cfg.cookie.minimal);
}

#[test]
fn minimal_session_with_token_passing_is_refused() {
    let text = TYPICAL_TOML.replace("session_cookie_minimal = false", "session_cookie_minimal = true");
    let err = Config::from_values(&parse_toml(&text, "t").unwrap()).unwrap_err().to_string();
    assert!(err.contains("session_cookie_minimal") && err.contains("pass_access_token"), "{err}");
}

#[test]
fn unknown_keys_name_the_key_and_the_closest_valid_one() {
    let err = parse_toml("upstream = [\"http://x\"]", "my.cfg").unwrap_err().to_string();
    assert_eq!(err, "unknown option `upstream` in my.cfg (did you mean `upstreams`?)");
    let err = parse_toml("cookie_secert = \"x\"", "my.cfg").unwrap_err().to_string();
    assert!(err.contains("`cookie_secert`") && err.contains("`cookie_secret`"), "{err}");
    let err = parse_toml("totally_unrelated = 1", "my.cfg").unwrap_err().to_string();
    assert_eq!(err, "unknown option `totally_unrelated` in my.cfg");
    let mut args = base_args();
    args.push("--upstreams=http://x");
    let err = build(&args, &[]).unwrap_err();
    assert!(err.contains("--upstreams") && err.contains("--upstream"), "{err}");
}

#[test]
fn wrong_types_name_the_option() {
    let err = parse_toml("cookie_secure = \"yes\"", "c").unwrap_err().to_string();
    assert!(err.starts_with("option `cookie_secure` in c: `yes` is not a boolean"), "{err}");
    let err = parse_toml("email_domains = [[\"a.com\"]]", "c").unwrap_err().to_string();
    assert!(
        err.starts_with("option `email_domains` in c: expected an array of strings"),
        "{err}"
    );
}

/// The Traefik example every guide copies writes booleans and lists as strings; oauth2-proxy
/// loads it, and so does sidekey-proxy.
#[test]
fn quoted_booleans_and_string_lists_load_as_oauth2_proxy_loads_them() {
    let text = format!(
        "provider=\"oidc\"\noidc_issuer_url=\"https://idp.example.com\"\nclient_id=\"c\"\nclient_secret=\"s\"\ncookie_secret=\"{SECRET_44}\"\nemail_domains=\"example.com\"\ncookie_secure=\"false\"\nreverse_proxy=\"true\"\nupstreams=\"static://202\"\nskip_provider_button=\"true\"\nwhitelist_domains=\".example.com\"\n"
    );
    let cfg = Config::from_values(&parse_toml(&text, "t").unwrap()).unwrap();
    assert!(cfg.skip_provider_button && !cfg.cookie.secure);
    assert_eq!(cfg.authz.email_domains, ["example.com"]);
    assert_eq!(cfg.upstreams[0].target, UpstreamTarget::Static(202));
}

#[test]
fn precedence_is_flag_then_env_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.cfg");
    std::fs::write(
        &file,
        format!("provider = \"oidc\"\noidc_issuer_url = \"https://file.example.com\"\nclient_id = \"file\"\nclient_secret = \"x\"\ncookie_secret = \"{SECRET_44}\"\nemail_domains = [\"file.com\"]\nupstreams = [\"http://file:1/\"]\ncookie_name = \"from_file\"\n"),
    )
    .unwrap();
    let args = [
        "sidekey-proxy",
        "--config",
        file.to_str().unwrap(),
        "--client-id=flag",
        "--upstream=http://flag:1/",
        "--upstream=http://flag:2/api",
    ];
    let cfg = build(
        &args,
        &[
            ("OAUTH2_PROXY_CLIENT_ID", "env"),
            ("OAUTH2_PROXY_EMAIL_DOMAINS", "env.com,env.org"),
            ("OAUTH2_PROXY_COOKIE_NAME", "from_env"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.provider.client_id, "flag");
    assert_eq!(cfg.authz.email_domains, vec!["env.com", "env.org"]);
    assert_eq!(cfg.cookie.name, "from_env");
    assert_eq!(cfg.upstreams.len(), 2, "flags replace the file's list");
    assert_eq!(cfg.provider.issuer_url.as_str(), "https://file.example.com/");
    // OAUTH2_PROXY_CONFIG names the file too.
    let cfg = build(&["sidekey-proxy"], &[("OAUTH2_PROXY_CONFIG", file.to_str().unwrap())]).unwrap();
    assert_eq!(cfg.cookie.name, "from_file");
}

#[test]
fn unknown_env_vars_only_warn() {
    // Kubernetes injects these for a Service named oauth2-proxy.
    let inv = load(
        base_args(),
        env(&[("OAUTH2_PROXY_SERVICE_HOST", "10.0.0.1"), ("OAUTH2_PROXY_UPSTREAM", "x")]),
    )
    .unwrap();
    assert_eq!(inv.values.warnings.len(), 2);
    assert!(
        inv.values.warnings[1].contains("OAUTH2_PROXY_UPSTREAMS"),
        "{:?}",
        inv.values.warnings
    );
}

#[test]
fn bool_flags_follow_go_syntax() {
    let mut args = base_args();
    args.extend(["--skip-provider-button", "--cookie-secure=false", "--pass-user-headers=0"]);
    let cfg = build(&args, &[]).unwrap();
    assert!(cfg.skip_provider_button && !cfg.cookie.secure && !cfg.headers.pass_user_headers);
    let mut args = base_args();
    args.push("--cookie-secure=maybe");
    assert!(build(&args, &[]).unwrap_err().contains("--cookie-secure"));
}

#[test]
fn cookie_secrets() {
    assert_eq!(parse_cookie_secret(SECRET_44).unwrap().len(), 32);
    assert_eq!(
        parse_cookie_secret("kWLVCNcSNRuhD1mwXR8ExoBRH8hjQCxDdQz9IMxbG5E").unwrap().len(),
        32
    );
    assert_eq!(parse_cookie_secret("0123456789abcdef").unwrap(), b"0123456789abcdef");
    assert_eq!(parse_cookie_secret("0123456789abcdef01234567").unwrap().len(), 24);
    assert_eq!(
        parse_cookie_secret(&"a".repeat(32)).unwrap().len(),
        24,
        "oauth2-proxy's rule: base64 that decodes to 24 bytes wins"
    );
    let err = parse_cookie_secret("too-short").unwrap_err();
    assert!(err.contains("openssl rand -base64 32"), "{err}");
    let mut args = base_args();
    args[6] = "short";
    let err = build(&args, &[]).unwrap_err();
    assert!(err.starts_with("option `cookie_secret`:") && err.contains("openssl rand"), "{err}");
}

#[test]
fn missing_and_bad_settings_name_the_option_and_fix() {
    let cases: &[(&[&str], &str)] = &[
        (&["--provider=github"], "option `provider`"),
        (
            &["--oidc-issuer-url=http://idp.example.com"],
            "option `oidc_issuer_url`: `http://idp.example.com/` uses plain http",
        ),
        (&["--oidc-issuer-url=not a url"], "option `oidc_issuer_url`"),
        (&["--cookie-expire=7d"], "option `--cookie-expire`: `7d` is not a duration"),
        (&["--cookie-samesite=sometimes"], "option `cookie_samesite`"),
        (&["--upstream=ftp://x"], "option `upstreams`: `ftp://x`"),
        (&["--upstream=static://abc"], "static://202"),
        (&["--redirect-url=https://app.example.com/callback"], "must be /oauth2/callback"),
        (&["--http-address=nonsense"], "option `http_address`"),
        (&["--code-challenge-method=plain"], "option `code_challenge_method`"),
        (
            &["--skip-oidc-discovery"],
            "option `login_url`: is required with skip_oidc_discovery",
        ),
        (&["--scope=email"], "must include openid"),
        (
            &["--redis-connection-url=redis://127.0.0.1:6379"],
            "option `redis_connection_url`: is set but session_store_type is cookie",
        ),
        (&["--session-store-type=memcached"], "option `session_store_type`: `memcached`"),
        (&["--session-store-type=redis"], "option `redis_connection_url`: is required"),
        (
            &[
                "--session-store-type=redis",
                "--redis-connection-url=http://user:hunter2@redis:6379",
            ],
            "option `redis_connection_url`: is not a Redis URL",
        ),
        (
            &[
                "--session-store-type=redis",
                "--redis-use-sentinel",
                "--redis-sentinel-connection-urls=redis://s:26379",
            ],
            "option `redis_sentinel_master_name`: is required",
        ),
        (
            &["--session-store-type=redis", "--redis-use-cluster"],
            "option `redis_cluster_connection_urls`: is required",
        ),
        (
            &[
                "--session-store-type=redis",
                "--redis-connection-url=redis://r:6379",
                "--redis-ca-path=/nonexistent/ca.pem",
            ],
            "option `redis_ca_path`: cannot read /nonexistent/ca.pem",
        ),
        (
            &[
                "--session-store-type=redis",
                "--redis-connection-url=rediss://r:6379",
                "--redis-insecure-skip-tls-verify",
            ],
            "redis_ca_path",
        ),
        (
            &["--skip-auth-route=GET=^/(public"],
            "option `skip_auth_routes`: `^/(public` is not a valid regular expression",
        ),
        (&["--api-route=["], "option `api_routes`: `[` is not a valid regular expression"),
        (&["--trusted-ip=10.0.0.0/8"], "spoofable"),
        (&["--proxy-prefix=/oauth2/"], "option `proxy_prefix`"),
        (
            &["--tls-cert-file=/x/tls.crt"],
            "option `tls_key_file`: is required with tls_cert_file",
        ),
        (
            &["--tls-cert-file=/nonexistent/tls.crt", "--tls-key-file=/nonexistent/tls.key"],
            "option `tls_cert_file`: cannot read /nonexistent/tls.crt",
        ),
        (
            &[
                "--tls-cert-file=/x/tls.crt",
                "--tls-key-file=/x/tls.key",
                "--tls-min-version=TLS1.0",
            ],
            "option `tls_min_version`: `TLS1.0` is not supported",
        ),
        (
            &[
                "--tls-cert-file=/x/tls.crt",
                "--tls-key-file=/x/tls.key",
                "--tls-cipher-suite=TLS_RSA_WITH_RC4_128_SHA",
            ],
            "option `tls_cipher_suites`: `TLS_RSA_WITH_RC4_128_SHA` is not a supported cipher suite",
        ),
        (
            &["--extra-jwt-issuers=https://login.example.com/=api://x"],
            "option `extra_jwt_issuers`: has no effect without skip_jwt_bearer_tokens",
        ),
        (
            &["--skip-jwt-bearer-tokens", "--extra-jwt-issuers=https://login.example.com/"],
            "option `extra_jwt_issuers`: `https://login.example.com/` is not issuer=audience",
        ),
        (
            &["--skip-jwt-bearer-tokens", "--extra-jwt-issuers=http://login.example.com/=api"],
            "option `extra_jwt_issuers`",
        ),
        (&["--trusted-proxy-ip=10.0.0.0/33"], "option `trusted_proxy_ips`: `10.0.0.0/33`"),
        (&["--real-client-ip-header=X Real"], "option `real_client_ip_header`"),
        (&["--auth-success-status=302"], "option `auth_success_status`: 302 is not a 2xx"),
        (&["--workers=-1"], "option `workers`: must be 0 (one per CPU)"),
        (&["--workers=5000"], "option `workers`: must be 0 (one per CPU)"),
        (
            &["--auth-success-status=abc"],
            "option `--auth-success-status`: `abc` is not a whole number",
        ),
        (
            &["--backend-logout-url=http://idp.example.com/logout?t={id_token}"],
            "option `backend_logout_url`",
        ),
        (
            &["--backend-logout-url=/logout"],
            "option `backend_logout_url`: `/logout` is not an absolute URL",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = base_args();
        args.extend_from_slice(extra);
        let err = build(&args, &[]).unwrap_err();
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(!err.contains("hunter2"), "a password in an error: {err}");
    }
    let err = build(&["sidekey-proxy"], &[]).unwrap_err();
    assert!(err.contains("option `provider`") && err.contains("google"), "{err}");
    let no_domains: Vec<&str> = base_args().into_iter().filter(|a| !a.starts_with("--email-domain")).collect();
    assert!(build(&no_domains, &[]).unwrap_err().contains("option `email_domains`"));
    let no_secret: Vec<&str> = base_args().into_iter().filter(|a| !a.starts_with("--client-secret")).collect();
    assert!(build(&no_secret, &[]).unwrap_err().contains("option `client_secret`"));
    let mut public = no_secret.clone();
    public.push("--code-challenge-method=S256");
    assert!(build(&public, &[]).is_ok(), "an explicit PKCE public client is allowed");
}

#[test]
fn planned_options_at_their_default_are_accepted() {
    let mut args = base_args();
    args.extend([
        "--session-store-type=cookie",
        "--reverse-proxy=false",
        "--skip-auth-strip-headers=true",
    ]);
    assert!(build(&args, &[]).is_ok());
    let mut args = base_args();
    args.push("--skip-auth-strip-headers=false");
    assert!(build(&args, &[]).unwrap_err().contains("always strips"));
}

#[test]
fn loopback_http_issuer_and_addresses() {
    let mut args = base_args();
    args[2] = "--oidc-issuer-url=http://127.0.0.1:9000/";
    args.push("--http-address=:4180");
    let cfg = build(&args, &[]).unwrap();
    assert_eq!(cfg.http_address, "0.0.0.0:4180".parse().unwrap());
    assert_eq!(parse_listen_address("http://127.0.0.1:1").unwrap(), "127.0.0.1:1".parse().unwrap());
    assert_eq!(parse_listen_address("[::1]:4180").unwrap(), "[::1]:4180".parse().unwrap());
    assert_eq!(parse_listen_address("localhost:80").unwrap(), "127.0.0.1:80".parse().unwrap());
}

#[test]
fn upstream_forms() {
    let mut args = base_args();
    args.extend([
        "--upstream=http://a:1/",
        "--upstream=static://202",
        "--upstream=file:///srv/www#/static/",
    ]);
    let err = build(&args, &[]).unwrap_err();
    assert!(err.contains("already serves the path /"), "{err}");
    let mut args = base_args();
    args.extend([
        "--upstream=http://a:1/app",
        "--upstream=static://202",
        "--upstream=file:///srv/www#/static/",
    ]);
    let cfg = build(&args, &[]).unwrap();
    let kinds: Vec<_> = cfg.upstreams.iter().map(|u| (u.path.as_str(), &u.target)).collect();
    assert_eq!(kinds[0], ("/static/", &UpstreamTarget::File("/srv/www".into())));
    assert_eq!(kinds[1], ("/app", &UpstreamTarget::Http(url::Url::parse("http://a:1").unwrap())));
    assert_eq!(kinds[2], ("/", &UpstreamTarget::Static(202)));
}

#[test]
fn from_pairs_builds_values_for_tests() {
    let v = Values::from_pairs(&[("provider", Value::Str("oidc".into()))]).unwrap();
    assert!(v.is_set("provider"));
    assert!(Values::from_pairs(&[("nope", Value::Bool(true))]).is_err());
}

#[test]
fn configuration_doc_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if std::env::var_os("SIDEKEY_UPDATE_DOCS").is_some() {
        std::fs::write(path, options::markdown()).unwrap();
        return;
    }
    assert!(committed == options::markdown(), "docs/configuration.md is stale: run `make docs`");
}

#[test]
fn every_option_is_unique_and_well_formed() {
    let mut keys = std::collections::HashSet::new();
    let mut flags = std::collections::HashSet::new();
    for o in options::OPTIONS {
        assert!(keys.insert(o.key), "duplicate key {}", o.key);
        assert!(flags.insert(o.flag), "duplicate flag {}", o.flag);
        assert!(
            o.key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
            "{}",
            o.key
        );
        assert!(
            o.flag.bytes().all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit()),
            "{}",
            o.flag
        );
    }
    assert!(options::OPTIONS.len() > 150, "the table covers oauth2-proxy's options");
}

#[test]
fn allowed_emails_alone_is_a_complete_rule() {
    let mut args: Vec<&str> = base_args().into_iter().filter(|a| !a.starts_with("--email-domain")).collect();
    let err = build(&args, &[]).unwrap_err();
    assert!(err.contains("allowed_emails"), "the error names every way out: {err}");
    args.push("--allowed-email=alice@example.com");
    args.push("--allowed-email=bob@other.org");
    let cfg = build(&args, &[]).unwrap();
    assert_eq!(cfg.authz.allowed_emails, ["alice@example.com", "bob@other.org"]);
    assert!(cfg.authz.email_domains.is_empty());
}

#[test]
fn parse_accepts_planned_options_that_load_refuses() {
    let mut args = base_args();
    args.push("--validate-url=https://idp.example.com/validate");
    assert!(load(args.iter().map(|s| s.to_string()), env(&[])).is_err());
    let inv = super::load::parse(args.iter().map(|s| s.to_string()), env(&[])).unwrap();
    assert_eq!(inv.values.str("validate_url"), "https://idp.example.com/validate");
}

#[test]
fn a_toml_syntax_error_names_the_line_but_never_quotes_it() {
    let err = parse_toml(
        "provider = \"oidc\"\ncookie_secret = \"s3cr3t-value\nclient_id = \"x\"\n",
        "proxy.cfg",
    )
    .expect_err("an unterminated string");
    let text = err.to_string();
    assert!(text.contains("proxy.cfg") && text.contains("line 2"), "{text}");
    assert!(!text.contains("s3cr3t"), "the secret's line is quoted: {text}");
}

#[test]
fn no_secret_prints_in_debug() {
    let mut args = base_args();
    args.extend([
        "--session-store-type=redis",
        "--redis-connection-url=rediss://app:redispass@redis.example.com:6380/0",
        "--redis-password=redispass2",
    ]);
    let inv = load(args.iter().map(|s| s.to_string()), env(&[])).unwrap();
    let cfg = Config::from_values(&inv.values).unwrap();
    for (what, text) in [("Invocation", format!("{inv:?}")), ("Config", format!("{cfg:?}"))] {
        for secret in ["s3cret", SECRET_44, "redispass"] {
            assert!(!text.contains(secret), "{what} Debug prints {secret}: {text}");
        }
    }
    assert!(
        format!("{cfg:?}").contains("rediss://app:redacted@redis.example.com:6380/0"),
        "{cfg:?}"
    );
}

/// The loader stores each option as its own kind; every typed read in the config sources must
/// ask for that kind, or it would read the option as unset.
#[test]
fn accessors_ask_for_each_options_own_kind() {
    use super::options::{Kind, by_key};
    let sources = [
        include_str!("mod.rs"),
        include_str!("provider.rs"),
        include_str!("cookie_and_redis.rs"),
        include_str!("load.rs"),
        include_str!("warnings.rs"),
    ];
    let call = regex::Regex::new(r#"\b(str|opt_str|bool|int|list|duration_opt|url_opt)\(\s*(?:v,\s*)?"([a-z0-9_]+)""#).unwrap();
    let mut checked = 0;
    for src in sources {
        for c in call.captures_iter(src) {
            let (method, key) = (&c[1], &c[2]);
            let opt = by_key(key).unwrap_or_else(|| panic!("{method}(\"{key}\"): no such option"));
            let fits = match method {
                "str" | "opt_str" | "url_opt" => matches!(opt.kind, Kind::Str | Kind::Duration),
                "duration_opt" => opt.kind == Kind::Duration,
                "bool" => opt.kind == Kind::Bool,
                "int" => opt.kind == Kind::Int,
                _ => opt.kind == Kind::List,
            };
            assert!(fits, "{method}(\"{key}\") reads a {:?} option", opt.kind);
            checked += 1;
        }
    }
    assert!(checked > 90, "only {checked} reads found: has the call syntax changed?");
}
