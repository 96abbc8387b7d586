//! Checks the API server cannot make with the CRD schema: regex syntax (the proxy compiles
//! these at start-up; a bad one would crash-loop the sidecar), flags in `extraArgs` that the
//! proxy does not know or that clash with the rendered ones, and an Entra tenant the token
//! exchange needs.

use crate::api::{AuthPolicy, ProviderType};
use crate::render::{entra_tenant, proxy_args};

/// Problems with the policy, each naming the field and the fix. Empty when valid.
pub fn validate(policy: &AuthPolicy) -> Vec<String> {
    let spec = &policy.spec;
    let mut errors = Vec::new();
    let regexes = spec
        .skip_auth
        .iter()
        .flat_map(|s| {
            s.routes
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("skipAuth.routes[{i}].path"), &r.path))
        })
        .chain(
            spec.api
                .iter()
                .flat_map(|a| a.paths.iter().enumerate().map(|(i, p)| (format!("api.paths[{i}]"), p))),
        );
    for (field, re) in regexes {
        if let Err(e) = regex::Regex::new(re) {
            let first = e.to_string().lines().last().unwrap_or_default().trim().to_string();
            errors.push(format!("{field}: {re:?} is not a valid regular expression ({first})"));
        }
    }
    if let Some(sidecar) = &spec.sidecar {
        let rendered: Vec<String> = {
            let mut without = policy.clone();
            without.spec.sidecar = None;
            proxy_args(&without, 1, &[]).iter().map(|a| flag_name(a).to_string()).collect()
        };
        for (i, arg) in sidecar.extra_args.iter().enumerate() {
            let name = flag_name(arg);
            if !arg.starts_with("--") {
                errors.push(format!("sidecar.extraArgs[{i}]: {arg:?} is not a flag; write it as --name=value"));
            } else if !proxy_flags().any(|f| f == name) {
                // The proxy exits on an unknown flag: the sidecar would crash-loop.
                let hint = closest_flag(name).map_or_else(
                    || " (docs/configuration.md lists them)".to_string(),
                    |f| format!("; did you mean {f}?"),
                );
                errors.push(format!("sidecar.extraArgs[{i}]: {name} is not a sidekey-proxy flag{hint}"));
            } else if rendered.iter().any(|r| r == name) || ["--config", "--http-address", "--upstream"].contains(&name) {
                errors.push(format!(
                    "sidecar.extraArgs[{i}]: {name} is set by the controller from the policy; use the AuthPolicy field instead"
                ));
            } else if name.contains("secret") && arg.contains('=') {
                errors.push(format!(
                    "sidecar.extraArgs[{i}]: do not pass secrets as flags (they show in the pod spec); use a secretRef field"
                ));
            }
        }
    }
    if spec.provider.type_ == ProviderType::EntraId
        && spec.provider.workload_identity.is_some()
        && entra_tenant(&spec.provider.issuer_url).is_none_or(|t| t == "common" || t == "organizations" || t == "consumers")
    {
        errors.push(
            "provider.issuerURL: workload identity needs the tenant in the issuer (https://login.microsoftonline.com/<tenant-id>/v2.0)"
                .into(),
        );
    }
    errors
}

/// Every flag sidekey-proxy accepts, generated from its option table so that the controller
/// need not link the proxy (a test in controller/tests/validate.rs keeps it current).
const PROXY_FLAGS: &str = include_str!("proxy_flags.txt");

/// The proxy's flags, `--` included.
pub fn proxy_flags() -> impl Iterator<Item = &'static str> {
    PROXY_FLAGS.lines().map(str::trim).filter(|l| l.starts_with("--"))
}

/// The known flag nearest to a misspelt one, if any is near enough to be the likely intent.
fn closest_flag(name: &str) -> Option<&'static str> {
    let probe = name.to_ascii_lowercase().replace('_', "-");
    proxy_flags()
        .map(|f| (strsim::jaro_winkler(&probe, f), f))
        .filter(|(score, _)| *score > 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, f)| f)
}

fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_flags_get_the_nearest_known_one() {
        let cases = [
            ("--cookie-samsite", Some("--cookie-samesite")),
            ("--cookie_samesite", Some("--cookie-samesite")),
            ("--skip-provider-buton", Some("--skip-provider-button")),
            ("--pass-acess-token", Some("--pass-access-token")),
            ("--zzzzzz", None),
        ];
        for (typo, want) in cases {
            assert_eq!(closest_flag(typo), want, "{typo}");
        }
        assert!(proxy_flags().count() > 100);
        assert!(proxy_flags().any(|f| f == "--cookie-samesite"));
    }
}
