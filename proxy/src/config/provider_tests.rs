//! The provider options as users write them: Entra ID (workload identity, tenants,
//! clouds, the Azure environment), credential mistakes, legacy provider names, and the
//! start-up warnings.

use super::tests::{SECRET_44, base_args, build, env};
use super::*;
use crate::client_auth::ClientAuth;

/// The sidecar a hand-written Entra workload-identity Deployment runs today (the seed), with
/// the token path and cookie secret from the environment, loads as is.
#[test]
fn seed_style_entra_sidecar_config_loads() {
    let args = [
        "sidekey-proxy",
        "--provider=entra-id",
        "--entra-id-federated-token-auth=true",
        "--oidc-issuer-url=https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
        "--client-id=00000000-1111-2222-3333-444444444444",
        "--cookie-domain=app.example.com",
        "--email-domain=*",
        "--skip-provider-button",
        "--upstream=http://127.0.0.1",
        "--http-address=0.0.0.0:4180",
    ];
    let env_pairs = [
        ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/azure/tokens/azure-identity-token"),
        ("OAUTH2_PROXY_COOKIE_SECRET", SECRET_44),
    ];
    let cfg = build(&args, &env_pairs).unwrap();
    let p = &cfg.provider;
    assert_eq!(p.client_id, "00000000-1111-2222-3333-444444444444");
    assert!(
        matches!(&p.client_auth, ClientAuth::AssertionFile { path, option: "AZURE_FEDERATED_TOKEN_FILE" }
            if path.to_str() == Some("/var/run/secrets/azure/tokens/azure-identity-token")),
        "{:?}",
        p.client_auth
    );
    let e = p.entra.as_ref().unwrap();
    assert_eq!(e.tenant.as_deref(), Some("72f988bf-86f1-41af-91ab-2d7cd011db47"));
    assert_eq!(e.issuer_template, "https://login.microsoftonline.com/{tenantid}/v2.0");
    assert_eq!(e.graph_url.as_str(), "https://graph.microsoft.com/");
    assert_eq!(p.display_name, "Microsoft Entra ID");
}

#[test]
fn entra_issuer_client_and_cloud_come_from_azure_env() {
    let args = [
        "sidekey-proxy",
        "--provider=entra-id",
        "--entra-id-federated-token-auth",
        "--email-domain=*",
        "--cookie-secret",
        SECRET_44,
    ];
    let env_pairs = [
        ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
        ("AZURE_CLIENT_ID", "client-from-env"),
        ("AZURE_TENANT_ID", "tid-gov"),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
    ];
    let cfg = build(&args, &env_pairs).unwrap();
    assert_eq!(cfg.provider.client_id, "client-from-env");
    assert_eq!(cfg.provider.issuer_url.as_str(), "https://login.microsoftonline.us/tid-gov/v2.0");
    let e = cfg.provider.entra.unwrap();
    assert_eq!(e.issuer_template, "https://login.microsoftonline.us/{tenantid}/v2.0");
    assert_eq!(e.graph_url.as_str(), "https://graph.microsoft.us/");
    // The flag wins over AZURE_CLIENT_ID; China's cloud gets its own Graph.
    let mut args = args.to_vec();
    args.extend([
        "--client-id=flag-client",
        "--oidc-issuer-url=https://login.chinacloudapi.cn/tid-cn/v2.0",
    ]);
    let cfg = build(&args, &env_pairs[..2]).unwrap();
    assert_eq!(cfg.provider.client_id, "flag-client");
    assert_eq!(
        cfg.provider.entra.unwrap().graph_url.as_str(),
        "https://microsoftgraph.chinacloudapi.cn/"
    );
}

#[test]
fn entra_and_credential_mistakes_name_the_option_and_fix() {
    let entra = |extra: &[&str]| {
        let mut a = vec![
            "sidekey-proxy",
            "--provider=entra-id",
            "--client-id=app",
            "--email-domain=*",
            "--cookie-secret",
            SECRET_44,
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let token = [("AZURE_FEDERATED_TOKEN_FILE", "/t")];
    type Case<'a> = (Vec<String>, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            entra(&["--entra-id-federated-token-auth"]),
            &[],
            "option `oidc_issuer_url`: is required for provider entra-id",
        ),
        (
            entra(&[
                "--entra-id-federated-token-auth",
                "--oidc-issuer-url=https://login.microsoftonline.com/t1/v2.0",
            ]),
            &[],
            "option `entra_id_federated_token_auth`: is true, but AZURE_FEDERATED_TOKEN_FILE is not set",
        ),
        (
            entra(&[
                "--entra-id-federated-token-auth",
                "--oidc-issuer-url=https://login.microsoftonline.com/organizations/v2.0",
            ]),
            &token,
            "option `entra_id_allowed_tenants`: is required with the multi-tenant issuer",
        ),
        (
            entra(&[
                "--entra-id-federated-token-auth",
                "--oidc-issuer-url=https://login.microsoftonline.com/t1/v2.0",
                "--entra-id-allowed-tenant=t2",
            ]),
            &token,
            "only applies to a common or organizations issuer",
        ),
        (
            entra(&[
                "--entra-id-federated-token-auth",
                "--client-secret=s",
                "--oidc-issuer-url=https://login.microsoftonline.com/t1/v2.0",
            ]),
            &token,
            "set exactly one client credential, but client_secret and entra_id_federated_token_auth are set",
        ),
        (
            entra(&["--oidc-issuer-url=https://login.microsoftonline.com/t1/v2.0"]),
            &[],
            "set entra_id_federated_token_auth = true (workload identity, no secret)",
        ),
        (
            entra(&[
                "--entra-id-federated-token-auth",
                "--oidc-issuer-url=https://login.microsoftonline.com/t1/v2.0",
                "--entra-id-issuer-template=https://login.microsoftonline.com/v2.0",
            ]),
            &token,
            "option `entra_id_issuer_template`: `https://login.microsoftonline.com/v2.0` must contain {tenantid}",
        ),
        (
            entra(&[
                "--entra-id-federated-token-auth",
                "--oidc-issuer-url=https://sso.example.com/t1/v2.0",
            ]),
            &token,
            "option `entra_id_graph_url`: cannot tell which Microsoft Graph serves",
        ),
        (
            entra(&[
                "--entra-id-federated-token-auth",
                "--oidc-issuer-url=https://login.microsoftonline.com/t1/v2.0",
            ]),
            &[("AZURE_FEDERATED_TOKEN_FILE", "/t"), ("AZURE_TENANT_ID", "t2")],
            "names tenant t1, but AZURE_TENANT_ID is t2",
        ),
        (
            entra(&["--jwt-key=garbage", "--oidc-issuer-url=https://login.microsoftonline.com/t1/v2.0"]),
            &[],
            "option `jwt_key`: is not a PEM RSA private key",
        ),
        (
            {
                let mut a: Vec<String> = base_args().into_iter().map(String::from).collect();
                a.push("--entra-id-federated-token-auth".into());
                a
            },
            &token,
            "option `entra_id_federated_token_auth`: applies to provider = \"entra-id\" only",
        ),
        (
            {
                let mut a: Vec<String> = base_args().into_iter().map(String::from).collect();
                a.push("--client-assertion-file=/t".into());
                a
            },
            &[],
            "set exactly one client credential, but client_secret and client_assertion_file are set",
        ),
        (
            {
                let mut a: Vec<String> = base_args().into_iter().map(String::from).collect();
                a.push("--cookie-refresh=200h".into());
                a
            },
            &[],
            "option `cookie_refresh`: must be shorter than cookie_expire",
        ),
        (
            {
                let mut a: Vec<String> = base_args().into_iter().map(String::from).collect();
                a[1] = "--provider=azure".into();
                a
            },
            &[],
            "option `oidc_issuer_url`: `https://idp.example.com/` has no tenant in its path",
        ),
    ];
    for (args, env_pairs, expected) in cases {
        let inv = load(args.clone(), env(env_pairs)).map_err(|e| e.to_string());
        let err = inv
            .and_then(|i| Config::from_values(&i.values).map_err(|e| e.to_string()))
            .unwrap_err();
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

fn warnings_of(args: &[&str], env_pairs: &[(&str, &str)]) -> Vec<String> {
    let inv = load(args.iter().map(|s| s.to_string()), env(env_pairs)).unwrap();
    Config::from_values(&inv.values).unwrap().warnings
}

#[test]
fn start_up_warnings_say_what_will_not_happen() {
    let mut args = base_args();
    args.push("--upstream=http://127.0.0.1:8080/");
    assert_eq!(warnings_of(&args, &[]), Vec::<String>::new(), "a plain configuration has none");

    let w = warnings_of(&base_args(), &[("OAUTH2_PROXY_SERVICE_HOST", "10.0.0.1")]);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("ignoring unknown environment variable OAUTH2_PROXY_SERVICE_HOST"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("no upstream is configured: signed-in requests outside /oauth2 answer 404"),
        "{w:?}"
    );

    // oauth2-proxy's Helm chart always passes --https-address; without a certificate both
    // proxies serve plain HTTP only.
    args.extend(["--https-address=0.0.0.0:4443", "--flush-interval=2s", "--flush-interval=1000ms"]);
    let cfg = build(&args, &[]).unwrap();
    assert!(cfg.https.is_none());
    assert_eq!(
        cfg.warnings,
        [
            "option `https_address` has no effect without tls_cert_file and tls_key_file (oauth2-proxy ignores it too): only http_address is served"
        ],
        "1000ms is flush_interval's default, 1s"
    );
    args.push("--flush-interval=2s");
    let w = warnings_of(&args, &[]);
    assert!(
        w[1].starts_with("option `flush_interval` has no effect in sidekey-proxy: responses are streamed"),
        "{w:?}"
    );
}

#[test]
fn legacy_azure_provider_runs_as_entra_id() {
    fn azure<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec![
            "sidekey-proxy",
            "--provider=azure",
            "--client-id=app",
            "--client-secret=s",
            "--cookie-secret",
            SECRET_44,
            "--email-domain=*",
            "--upstream=http://127.0.0.1:8080/",
        ];
        a.extend_from_slice(extra);
        a
    }
    let tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let arg = format!("--azure-tenant={tenant}");
    let cfg = build(&azure(&[&arg]), &[]).unwrap();
    assert_eq!(
        cfg.provider.issuer_url.as_str(),
        format!("https://login.microsoftonline.com/{tenant}/v2.0")
    );
    assert_eq!(cfg.provider.entra.as_ref().unwrap().tenant.as_deref(), Some(tenant));
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(cfg.warnings[0].starts_with("provider = \"azure\" (oauth2-proxy's deprecated Azure provider) runs as provider = \"entra-id\" with oidc_issuer_url = \"https://login.microsoftonline.com/"));

    // The v1 issuer oauth2-proxy's docs give for the azure provider names the same tenant.
    let arg = format!("--oidc-issuer-url=https://sts.windows.net/{tenant}/");
    let cfg = build(&azure(&[&arg]), &[]).unwrap();
    assert_eq!(
        cfg.provider.issuer_url.as_str(),
        format!("https://login.microsoftonline.com/{tenant}/v2.0")
    );

    // Its default tenant is `common`: any Microsoft account, so the tenants must be listed.
    let err = build(&azure(&[]), &[]).unwrap_err();
    assert!(
        err.starts_with(
            "option `entra_id_allowed_tenants`: is required with the multi-tenant issuer https://login.microsoftonline.com/common/v2.0"
        ),
        "{err}"
    );
    let cfg = build(&azure(&["--entra-id-allowed-tenant=t1"]), &[]).unwrap();
    assert_eq!(cfg.provider.entra.unwrap().allowed_tenants, ["t1"]);

    let mut args = base_args();
    args.extend(["--upstream=http://127.0.0.1:8080/", "--azure-tenant=t1"]);
    assert_eq!(
        build(&args, &[]).unwrap().warnings,
        ["option `azure_tenant` has no effect without provider = \"azure\"; the tenant comes from oidc_issuer_url"]
    );
}

#[test]
fn keycloak_oidc_runs_as_oidc_unless_it_relies_on_roles() {
    let mut args = base_args();
    args[1] = "--provider=keycloak-oidc";
    args.extend(["--upstream=http://127.0.0.1:8080/", "--allowed-group=/admins"]);
    let cfg = build(&args, &[]).unwrap();
    assert!(cfg.provider.entra.is_none());
    assert_eq!(cfg.warnings.len(), 1);
    assert!(cfg.warnings[0].contains("runs as provider = \"oidc\""), "{:?}", cfg.warnings);
    args.push("--allowed-group=role:admin");
    let err = build(&args, &[]).unwrap_err();
    assert!(err.starts_with("option `allowed_groups`: `role:admin` is a Keycloak role"), "{err}");
    args.pop();
    args.push("--allowed-role=admin");
    assert!(
        build(&args, &[]).unwrap_err().contains("option `allowed_roles`"),
        "allowed_roles stays refused"
    );
}
