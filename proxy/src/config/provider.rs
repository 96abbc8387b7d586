//! `provider`, the issuer, the client and its credential: the options that say whom the
//! proxy signs users in with, validated into a [`ProviderConfig`] (Entra ID's tenant rules
//! included).

use super::*;

pub(super) fn provider_config(v: &Values) -> Result<ProviderConfig, ConfigError> {
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
pub(super) fn azure_v2_issuer(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) if url.host_str() == Some("sts.windows.net") => match url.path_segments().and_then(|mut s| s.next()) {
            Some(tenant) if !tenant.is_empty() => format!("{}/{tenant}/v2.0", entra::DEFAULT_AUTHORITY_HOST.trim_end_matches('/')),
            _ => raw.to_string(),
        },
        _ => raw.to_string(),
    }
}

pub(super) fn entra_config(v: &Values, issuer: &Url) -> Result<EntraConfig, ConfigError> {
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
pub(super) fn client_auth(v: &Values, is_entra: bool) -> Result<ClientAuth, ConfigError> {
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

pub(super) fn pkce_enabled(v: &Values) -> Result<bool, ConfigError> {
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
