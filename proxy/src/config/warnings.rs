//! Start-up warnings: what a configuration does that it probably did not mean, short of
//! being wrong. A normal start logs them and `--config-test` prints the same list; with
//! `--strict` any of them stops the process.

use super::Config;
use super::load::{self, Values};
use super::options::{self, Status};

pub(super) fn collect(v: &Values, cfg: &Config) -> Vec<String> {
    let mut out = v.warnings.clone();
    match v.str("provider").as_str() {
        "azure" => out.push(format!(
            "provider = \"azure\" (oauth2-proxy's deprecated Azure provider) runs as provider = \"entra-id\" with oidc_issuer_url = \"{}\"; set both to silence this warning",
            cfg.provider.issuer_url
        )),
        "keycloak-oidc" => out.push(
            "provider = \"keycloak-oidc\" runs as provider = \"oidc\": Keycloak roles are not added to the groups as role:<name>; set provider = \"oidc\" to silence this warning".into(),
        ),
        _ => {}
    }
    if v.is_set("azure_tenant") && v.str("provider") != "azure" {
        out.push("option `azure_tenant` has no effect without provider = \"azure\"; the tenant comes from oidc_issuer_url".into());
    }
    if cfg.https.is_none() {
        for key in ["https_address", "tls_min_version", "tls_cipher_suites"] {
            if v.is_set(key) {
                out.push(format!(
                    "option `{key}` has no effect without tls_cert_file and tls_key_file (oauth2-proxy ignores it too): only http_address is served"
                ));
            }
        }
    }
    let mut ignored: Vec<String> = v
        .iter()
        .filter_map(|(key, value)| {
            let opt = options::by_key(key)?;
            match opt.status {
                Status::Ignored(why) if !load::is_default(opt, value) => {
                    Some(format!("option `{key}` has no effect in sidekey-proxy: {why}"))
                }
                _ => None,
            }
        })
        .collect();
    ignored.sort();
    out.extend(ignored);
    if cfg.upstreams.is_empty() {
        out.push(format!(
            "no upstream is configured: signed-in requests outside {} answer 404; set upstreams, e.g. [\"http://127.0.0.1:8080/\"], or [\"static://202\"] for forward auth only",
            cfg.proxy_prefix
        ));
    }
    out
}
