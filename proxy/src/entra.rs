//! Microsoft Entra ID specifics: tenant-aware issuer checks (single-tenant, multi-tenant
//! `common`/`organizations`, sovereign clouds), groups overage resolved through Microsoft
//! Graph, and hints for the AADSTS errors a secretless (federated) login can run into.

use url::Url;

use crate::client_auth::AssertionClaims;
use crate::http_client::HttpClient;

pub const TENANT_PLACEHOLDER: &str = "{tenantid}";
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";
pub const FEDERATION_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Entra's multi-tenant issuer segments.
const MULTI_TENANT: &[&str] = &["common", "organizations", "consumers"];
/// Safety stop for Graph paging (999 groups per page).
const MAX_GRAPH_PAGES: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntraConfig {
    /// The ID-token issuer, with `{tenantid}` where the tenant goes.
    pub issuer_template: String,
    /// The tenant named by `oidc_issuer_url`; `None` for common/organizations/consumers.
    pub tenant: Option<String>,
    /// Tenants allowed to sign in; `*` allows any. Only consulted for multi-tenant issuers.
    pub allowed_tenants: Vec<String>,
    pub graph_url: Url,
}

/// Where the tenant sits in an Entra issuer URL: the first path segment.
pub fn tenant_of(issuer: &Url) -> Option<&str> {
    issuer.path_segments()?.next().filter(|s| !s.is_empty())
}

pub fn is_multi_tenant(segment: &str) -> bool {
    MULTI_TENANT.iter().any(|m| m.eq_ignore_ascii_case(segment))
}

/// `https://login.microsoftonline.com/<tenant>/v2.0` → `https://login.microsoftonline.com/{tenantid}/v2.0`.
pub fn default_issuer_template(issuer: &Url) -> Option<String> {
    tenant_of(issuer)?;
    let mut segments: Vec<&str> = issuer.path_segments()?.collect();
    segments[0] = TENANT_PLACEHOLDER;
    let origin = issuer.origin().ascii_serialization();
    Some(format!("{origin}/{}", segments.join("/")).trim_end_matches('/').to_string())
}

/// The Microsoft Graph that belongs to an authority host (national clouds have their own).
pub fn default_graph_url(authority: &Url) -> Option<Url> {
    let graph = match authority.host_str()? {
        "login.microsoftonline.com" | "login.windows.net" | "login.microsoft.com" => "https://graph.microsoft.com",
        "login.microsoftonline.us" => "https://graph.microsoft.us",
        "login.chinacloudapi.cn" | "login.partner.microsoftonline.cn" => "https://microsoftgraph.chinacloudapi.cn",
        _ => return None,
    };
    Url::parse(graph).ok()
}

impl EntraConfig {
    fn split_template(&self) -> (&str, &str) {
        self.issuer_template
            .split_once(TENANT_PLACEHOLDER)
            .unwrap_or((&self.issuer_template, ""))
    }

    /// The tenant an issuer names, if it has the template's shape.
    pub fn tenant_in_issuer<'a>(&self, iss: &'a str) -> Option<&'a str> {
        let (prefix, suffix) = self.split_template();
        let tid = iss.strip_prefix(prefix)?.strip_suffix(suffix)?;
        (!tid.is_empty() && !tid.contains(['/', '?', '#'])).then_some(tid)
    }

    fn tenant_allowed(&self, tid: &str) -> bool {
        match &self.tenant {
            Some(t) => t.eq_ignore_ascii_case(tid),
            None => self.allowed_tenants.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(tid)),
        }
    }

    /// The discovery document's `issuer`: Entra publishes the template itself
    /// (`…/{tenantid}/v2.0`) for multi-tenant endpoints and the tenant's issuer otherwise.
    pub fn discovered_issuer_ok(&self, discovered: &str) -> bool {
        let discovered = discovered.trim_end_matches('/');
        let template = self.issuer_template.trim_end_matches('/');
        match &self.tenant {
            Some(t) => discovered == template.replace(TENANT_PLACEHOLDER, t) || discovered == template,
            None => discovered == template,
        }
    }

    /// An ID token's `iss` must be the template filled with the token's own `tid`, and that
    /// tenant must be ours (single-tenant) or allowed (multi-tenant).
    pub fn check_token_issuer(&self, iss: &str, tid: Option<&str>) -> Result<(), String> {
        let Some(in_iss) = self.tenant_in_issuer(iss) else {
            return Err(format!("issuer {iss} does not match {}", self.issuer_template));
        };
        if tid.is_some_and(|t| !t.eq_ignore_ascii_case(in_iss)) {
            return Err(format!("issuer {iss} does not match the token's tenant {}", tid.unwrap_or("")));
        }
        if !self.tenant_allowed(in_iss) {
            return Err(match &self.tenant {
                Some(t) => format!("tenant {in_iss} is not the configured tenant {t}"),
                None => format!("tenant {in_iss} is not in entra_id_allowed_tenants"),
            });
        }
        Ok(())
    }

    /// RFC 9207 `iss` on the authorization response: the same rule, before any token exists.
    pub fn check_response_issuer(&self, iss: &str) -> Result<(), String> {
        self.check_token_issuer(iss, None)
    }
}

/// Entra leaves `groups` out when a user is in too many (200 in a JWT) and points to Graph
/// instead: `_claim_names: {"groups": "src1"}` (or `hasgroups: true` in implicit flows).
pub fn has_groups_overage(claims: &serde_json::Map<String, serde_json::Value>) -> bool {
    claims.get("_claim_names").and_then(|n| n.get("groups")).is_some() || claims.get("hasgroups").and_then(|v| v.as_bool()) == Some(true)
}

/// The AADSTS code at the start of an Entra error description.
pub fn aadsts_code(description: &str) -> Option<u32> {
    let rest = &description[description.find("AADSTS")? + 6..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// What the user can do about an AADSTS error. `assertion` is the federated token's own claims
/// (unverified), so the hint can say exactly what to register.
pub fn hint(code: u32, client_id: &str, tenant: Option<&str>, assertion: Option<&AssertionClaims>) -> Option<String> {
    let tenant = tenant.unwrap_or("<tenant>");
    let register = |a: &AssertionClaims| {
        format!(
            "register a federated credential on app {client_id} with issuer {} and subject {} (audience {FEDERATION_AUDIENCE}): az ad app federated-credential create --id {client_id} --parameters '{{\"name\":\"sidekey\",\"issuer\":\"{}\",\"subject\":\"{}\",\"audiences\":[\"{FEDERATION_AUDIENCE}\"]}}'",
            a.iss, a.sub, a.iss, a.sub
        )
    };
    Some(match (code, assertion) {
        (70021 | 700211 | 700213, Some(a)) => register(a),
        (700212, Some(a)) => format!(
            "the token's audience is {:?}; the projected service-account token must have audience {FEDERATION_AUDIENCE} (serviceAccountToken.audience in the pod's projected volume)",
            a.aud
        ),
        (700024, Some(a)) => format!(
            "the service-account token expired{}; the kubelet rotates the projected file: check that the proxy reads the projected volume (not a copy) and that the node's clock is right",
            a.exp.map(|e| format!(" at {}", fmt_unix(e))).unwrap_or_default()
        ),
        (700024, None) => "the client assertion has expired; check the clock and that the assertion file is refreshed".into(),
        (700027, Some(a)) => format!(
            "Entra could not verify the token's signature with the keys of issuer {}: the cluster's OIDC issuer (discovery document and JWKS) must be publicly reachable and current",
            a.iss
        ),
        (7000218, _) => {
            "no credential was sent: set entra_id_federated_token_auth = true and mount the projected service-account token (AZURE_FEDERATED_TOKEN_FILE), or configure a client secret".into()
        }
        (700016, _) => format!("application {client_id} does not exist in tenant {tenant}: check client_id (or AZURE_CLIENT_ID) and the tenant in oidc_issuer_url"),
        (7000215 | 7000222, _) => "the client secret is wrong or expired: rotate it, or switch to workload identity so there is no secret to expire".into(),
        (50011, _) => format!("the redirect URI is not registered: add this proxy's redirect_url (…/oauth2/callback) under Authentication > Web on app {client_id}"),
        (50020 | 90072, _) => format!("the user's account is not in tenant {tenant}: invite them as a guest, or use a multi-tenant issuer with entra_id_allowed_tenants"),
        (65001, _) => format!("consent is missing: grant admin consent for app {client_id} in tenant {tenant}"),
        (50105, _) => format!("the user is not assigned to app {client_id}: assign them (or a group) under Enterprise applications > Users and groups"),
        _ => return None,
    })
}

fn fmt_unix(t: u64) -> String {
    jiff::Timestamp::from_second(t as i64)
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| t.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Microsoft Graph is unreachable: {0}")]
    Transport(String),
    #[error("Microsoft Graph answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Microsoft Graph returned an unexpected response: {0}")]
    Parse(String),
    #[error("Microsoft Graph sent a next page on another host ({0}); refusing to send the access token there")]
    ForeignNextLink(String),
    #[error("Microsoft Graph returned more than {MAX_GRAPH_PAGES} pages of groups")]
    TooManyPages,
}

/// The object ids of every group the signed-in user is a member of, directly or through
/// nested groups, paging through `@odata.nextLink`.
pub async fn group_ids(http: &HttpClient, graph: &Url, access_token: &str) -> Result<Vec<String>, GraphError> {
    let mut url = graph
        .join("v1.0/me/transitiveMemberOf/microsoft.graph.group?$select=id&$top=999")
        .map_err(|e| GraphError::Parse(e.to_string()))?;
    let mut ids = Vec::new();
    for _ in 0..MAX_GRAPH_PAGES {
        let request = http::Request::get(url.as_str())
            .header(http::header::AUTHORIZATION, format!("Bearer {access_token}"))
            .header(http::header::ACCEPT, "application/json")
            .header("ConsistencyLevel", "eventual")
            .body(Vec::new())
            .map_err(|e| GraphError::Parse(e.to_string()))?;
        let response = http.send(request).await.map_err(|e| GraphError::Transport(e.to_string()))?;
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or(serde_json::Value::Null);
        if !response.status().is_success() {
            let message = body["error"]["message"]
                .as_str()
                .or(body["error"]["code"].as_str())
                .unwrap_or("no error message")
                .to_string();
            return Err(GraphError::Status {
                status: response.status().as_u16(),
                message,
            });
        }
        let page = body["value"].as_array().ok_or_else(|| GraphError::Parse("no value array".into()))?;
        ids.extend(page.iter().filter_map(|g| g["id"].as_str().map(String::from)));
        let Some(next) = body["@odata.nextLink"].as_str() else {
            return Ok(ids);
        };
        let next = Url::parse(next).map_err(|e| GraphError::Parse(format!("nextLink: {e}")))?;
        if next.origin() != graph.origin() {
            return Err(GraphError::ForeignNextLink(next.origin().ascii_serialization()));
        }
        url = next;
    }
    Err(GraphError::TooManyPages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(issuer: &str, allowed: &[&str]) -> EntraConfig {
        let url = Url::parse(issuer).unwrap();
        let tenant = tenant_of(&url).filter(|t| !is_multi_tenant(t)).map(String::from);
        EntraConfig {
            issuer_template: default_issuer_template(&url).unwrap(),
            tenant,
            allowed_tenants: allowed.iter().map(|s| s.to_string()).collect(),
            graph_url: default_graph_url(&url).unwrap_or_else(|| Url::parse("https://graph.microsoft.com").unwrap()),
        }
    }

    #[test]
    fn single_tenant_issuers() {
        let c = cfg("https://login.microsoftonline.com/tid-1/v2.0", &[]);
        assert_eq!(c.issuer_template, "https://login.microsoftonline.com/{tenantid}/v2.0");
        assert!(c.discovered_issuer_ok("https://login.microsoftonline.com/tid-1/v2.0"));
        assert!(!c.discovered_issuer_ok("https://login.microsoftonline.com/tid-2/v2.0"));
        assert!(
            c.check_token_issuer("https://login.microsoftonline.com/tid-1/v2.0", Some("tid-1"))
                .is_ok()
        );
        for (iss, tid) in [
            ("https://login.microsoftonline.com/tid-2/v2.0", Some("tid-2")),
            ("https://login.microsoftonline.com/tid-1/v2.0", Some("tid-2")),
            ("https://evil.example.com/tid-1/v2.0", Some("tid-1")),
            ("https://login.microsoftonline.com/tid-1/v2.0/x", Some("tid-1")),
            ("https://login.microsoftonline.com/a/b/v2.0", None),
            ("https://login.microsoftonline.com//v2.0", None),
        ] {
            assert!(c.check_token_issuer(iss, tid).is_err(), "{iss} {tid:?}");
        }
    }

    #[test]
    fn multi_tenant_issuers_need_an_allowed_tenant() {
        let c = cfg("https://login.microsoftonline.com/organizations/v2.0", &["tid-1", "TID-2"]);
        assert_eq!(c.tenant, None);
        assert!(c.discovered_issuer_ok("https://login.microsoftonline.com/{tenantid}/v2.0"));
        assert!(
            c.check_token_issuer("https://login.microsoftonline.com/tid-1/v2.0", Some("tid-1"))
                .is_ok()
        );
        assert!(
            c.check_token_issuer("https://login.microsoftonline.com/tid-2/v2.0", Some("tid-2"))
                .is_ok()
        );
        let err = c
            .check_token_issuer("https://login.microsoftonline.com/tid-3/v2.0", Some("tid-3"))
            .unwrap_err();
        assert!(err.contains("entra_id_allowed_tenants"), "{err}");
        assert!(c.check_response_issuer("https://login.microsoftonline.com/tid-1/v2.0").is_ok());
        assert!(c.check_response_issuer("https://login.microsoftonline.com/tid-3/v2.0").is_err());
        let any = cfg("https://login.microsoftonline.com/common/v2.0", &["*"]);
        assert!(
            any.check_token_issuer("https://login.microsoftonline.com/tid-9/v2.0", Some("tid-9"))
                .is_ok()
        );
    }

    #[test]
    fn sovereign_clouds_get_their_own_issuer_and_graph() {
        for (issuer, template, graph) in [
            (
                "https://login.microsoftonline.us/tid-1/v2.0",
                "https://login.microsoftonline.us/{tenantid}/v2.0",
                "https://graph.microsoft.us/",
            ),
            (
                "https://login.chinacloudapi.cn/tid-1/v2.0",
                "https://login.chinacloudapi.cn/{tenantid}/v2.0",
                "https://microsoftgraph.chinacloudapi.cn/",
            ),
            (
                "https://login.microsoftonline.com/tid-1/v2.0/",
                "https://login.microsoftonline.com/{tenantid}/v2.0",
                "https://graph.microsoft.com/",
            ),
        ] {
            let c = cfg(issuer, &[]);
            assert_eq!(c.issuer_template, template);
            assert_eq!(c.graph_url.as_str(), graph);
            assert!(c.check_token_issuer(&issuer.replace("/v2.0/", "/v2.0"), Some("tid-1")).is_ok());
            // A token from the public cloud is not one from this cloud.
            if !issuer.contains(".com/") {
                assert!(
                    c.check_token_issuer("https://login.microsoftonline.com/tid-1/v2.0", Some("tid-1"))
                        .is_err()
                );
            }
        }
        assert_eq!(default_graph_url(&Url::parse("https://idp.example.com/").unwrap()), None);
    }

    #[test]
    fn overage_markers() {
        let m = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert!(has_groups_overage(&m(
            serde_json::json!({"_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "x"}}})
        )));
        assert!(has_groups_overage(&m(serde_json::json!({"hasgroups": true}))));
        assert!(!has_groups_overage(&m(serde_json::json!({"groups": ["a"]}))));
        assert!(!has_groups_overage(&m(serde_json::json!({"_claim_names": {"roles": "src1"}}))));
    }

    #[test]
    fn aadsts_codes_and_hints() {
        assert_eq!(aadsts_code("AADSTS700213: No matching federated identity record"), Some(700213));
        assert_eq!(aadsts_code("prefix AADSTS7000218: The request body"), Some(7000218));
        assert_eq!(aadsts_code("no code here"), None);
        assert_eq!(aadsts_code("AADSTS"), None);
        let a = AssertionClaims {
            iss: "https://oidc.prod-aks.azure.com/abc/".into(),
            sub: "system:serviceaccount:shop:web".into(),
            aud: vec!["api://AzureADTokenExchange".into()],
            exp: Some(1_700_000_000),
        };
        let h = hint(700213, "app-1", Some("tid-1"), Some(&a)).unwrap();
        assert!(
            h.contains("issuer https://oidc.prod-aks.azure.com/abc/")
                && h.contains("subject system:serviceaccount:shop:web")
                && h.contains("az ad app federated-credential create --id app-1"),
            "{h}"
        );
        assert!(hint(700024, "app-1", None, Some(&a)).unwrap().contains("2023-11-14T22:13:20Z"));
        assert!(
            hint(7000218, "app-1", None, None)
                .unwrap()
                .contains("entra_id_federated_token_auth")
        );
        assert!(
            hint(700212, "app-1", None, Some(&a))
                .unwrap()
                .contains("api://AzureADTokenExchange")
        );
        assert_eq!(hint(12345, "app-1", None, None), None);
    }
}
