//! The command line: one flag per option in the table, grouped under headings in `--help`,
//! with oauth2-proxy's defaults shown and a working example at the end.

use clap::{Arg, ArgAction, Command};

use super::options::{Kind, OPTIONS, Opt, Status};

/// `--help` headings, in the order they are shown.
const HEADINGS: &[&str] = &[
    "Configuration",
    "Provider",
    "Who may sign in",
    "Upstreams and identity headers",
    "Forward auth and front ends",
    "Cookies",
    "Sessions",
    "Server",
    "TLS",
    "Pages",
    "Logging",
];

/// The heading an option is listed under.
fn heading(key: &str) -> &'static str {
    match key {
        "config" | "config_test" | "strict" => "Configuration",
        "https_address" | "tls_cert_file" | "tls_key_file" | "tls_min_version" | "tls_cipher_suites" => "TLS",
        "reverse_proxy"
        | "trusted_proxy_ips"
        | "real_client_ip_header"
        | "auth_success_status"
        | "set_xauthrequest"
        | "set_authorization_header"
        | "set_basic_auth" => "Forward auth and front ends",
        "upstreams"
        | "upstream_timeout"
        | "pass_host_header"
        | "pass_basic_auth"
        | "basic_auth_password"
        | "pass_user_headers"
        | "prefer_email_to_user"
        | "pass_access_token"
        | "pass_authorization_header" => "Upstreams and identity headers",
        "email_domains"
        | "authenticated_emails_file"
        | "allowed_emails"
        | "allowed_groups"
        | "whitelist_domains"
        | "skip_auth_regex"
        | "skip_auth_routes"
        | "skip_auth_preflight"
        | "api_routes"
        | "skip_jwt_bearer_tokens"
        | "extra_jwt_issuers"
        | "skip_provider_button" => "Who may sign in",
        "session_cookie_minimal" | "session_store_type" => "Sessions",
        "banner" | "footer" => "Pages",
        "logging_format"
        | "standard_logging"
        | "request_logging"
        | "auth_logging"
        | "exclude_logging_paths"
        | "silence_ping_logging"
        | "request_id_header" => "Logging",
        k if k.starts_with("cookie_") => "Cookies",
        k if k.starts_with("redis_") => "Sessions",
        "http_address" | "metrics_address" | "workers" | "proxy_prefix" | "ping_path" | "ready_path" | "redirect_url" => "Server",
        // Everything else that is supported is about talking to the identity provider.
        _ => "Provider",
    }
}

const AFTER_HELP: &str = "\
Example (an OpenID provider in front of an app on port 8080):
  sidekey-proxy --provider=oidc --oidc-issuer-url=https://login.example.com \\
    --client-id=my-app --client-secret-file=/etc/sidekey/client-secret \\
    --cookie-secret=\"$(openssl rand -base64 32)\" --email-domain=example.com \\
    --upstream=http://127.0.0.1:8080/

Every flag is also a TOML key (--config) and an OAUTH2_PROXY_* variable; oauth2-proxy's
configuration works unchanged. Every option, the ones sidekey-proxy does not support
included, is described in docs/configuration.md:
  https://github.com/sidekey-dev/sidekey/blob/main/docs/configuration.md";

pub(super) fn command() -> Command {
    let mut cmd = Command::new("sidekey-proxy")
        .about("OIDC-authenticating reverse proxy and forward-auth endpoint; reads oauth2-proxy's flags, TOML keys and OAUTH2_PROXY_* variables.")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_version_flag(true)
        // Go's pflag: a repeated single-valued flag takes the last value.
        .args_override_self(true)
        .after_help(AFTER_HELP)
        .arg(
            Arg::new("print_version")
                .short('V')
                .long("version")
                .action(ArgAction::Version)
                .help("Print the version and exit.")
                .help_heading("Configuration"),
        );
    let flags = OPTIONS.iter().filter(|o| o.key != "version");
    for &h in HEADINGS {
        for opt in flags.clone().filter(|o| heading(o.key) == h) {
            cmd = cmd.arg(arg(opt).help_heading(h));
        }
    }
    cmd
}

fn arg(opt: &'static Opt) -> Arg {
    let mut arg = Arg::new(opt.key).long(opt.flag).help(opt.help).value_name(match opt.kind {
        Kind::Str => "STRING",
        Kind::Bool => "BOOL",
        Kind::Int => "INT",
        Kind::Duration => "DURATION",
        Kind::List => "LIST",
    });
    arg = match opt.kind {
        // Go's pflag: `--flag` means true, `--flag=false` turns it off.
        Kind::Bool => arg.num_args(0..=1).require_equals(true).default_missing_value("true"),
        Kind::List => arg.action(ArgAction::Append).num_args(1),
        _ => arg.num_args(1),
    };
    // Shown in --help; the loader reads only values given on the command line. oauth2-proxy's
    // default provider (Google's own) is not one sidekey-proxy offers, so it is not shown.
    if !opt.default.is_empty() && opt.kind != Kind::List && opt.key != "provider" {
        arg = arg.default_value(opt.default);
    }
    if !matches!(opt.status, Status::Supported) {
        arg = arg.hide(true);
    }
    arg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_a_flag_under_a_listed_heading() {
        let cmd = command();
        for o in OPTIONS.iter().filter(|o| o.key != "version") {
            let a = cmd
                .get_arguments()
                .find(|a| a.get_id() == o.key)
                .unwrap_or_else(|| panic!("{} has no flag: its heading {:?} is not in HEADINGS", o.key, heading(o.key)));
            assert_eq!(a.get_help_heading(), Some(heading(o.key)));
        }
        assert_eq!(heading("cookie_refresh"), "Cookies");
        assert_eq!(heading("redis_connection_url"), "Sessions");
        assert_eq!(heading("oidc_issuer_url"), "Provider");
        assert_eq!(heading("tls_cert_file"), "TLS");
        assert_eq!(heading("set_xauthrequest"), "Forward auth and front ends");
    }
}
