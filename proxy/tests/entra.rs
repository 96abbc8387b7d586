//! Secretless Entra ID login, end to end.
//!
//! Real: the OpenID provider (oidc-provider on Entra's paths, one instance per tenant), the
//! proxy, the login, the code and refresh grants. EMULATED, because Entra cannot be reached
//! from a test machine (see tests/idp/entra.mjs): the token endpoint's federated-credential
//! check (signature against the cluster issuer's JWKS, then iss/sub/aud/exp against the
//! registered credential, failing with Entra's AADSTS codes) and Microsoft Graph's
//! `transitiveMemberOf`. The "cluster" is [`ClusterIssuer`]: discovery + JWKS on loopback and
//! tokens shaped like the kube-apiserver's, written to a file as the kubelet would.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

const TENANT_A: &str = "aaaaaaaa-0000-4000-8000-00000000000a";
const TENANT_B: &str = "bbbbbbbb-0000-4000-8000-00000000000b";
const CLIENT: &str = "11111111-2222-4333-8444-555555555555";
const NAMESPACE: &str = "shop";
const SA: &str = "web";
const AUDIENCE: &str = "api://AzureADTokenExchange";
/// The 250th group of the overage user: only on Graph's third page.
const LAST_GROUP: &str = "00000000-0000-4000-8000-000000000249";

fn users() -> serde_json::Value {
    serde_json::json!({
        "alice": {"password": "alice-password", "email": "alice@example.com", "email_verified": true,
                  "groups": ["g-admins"], "preferred_username": "alice@contoso.example", "name": "Alice"},
        "dave": {"password": "dave-password", "email": "dave@example.com", "email_verified": true,
                 "overage": true, "graphGroupCount": 250, "preferred_username": "dave@contoso.example", "name": "Dave"},
        "erin": {"password": "erin-password", "preferred_username": "erin@contoso.example", "name": "Erin No Email",
                 "oid": "eeeeeeee-0000-4000-8000-00000000000e", "groups": ["g-admins"]},
        "frank": {"password": "frank-password", "email": "frank@example.com", "email_verified": true,
                  "overage": true, "graphError": 503, "preferred_username": "frank@contoso.example"},
    })
}

struct Entra {
    idp: Idp,
    cluster: ClusterIssuer,
    proxy: Proxy,
    token_file: PathBuf,
    _dir: tempfile::TempDir,
    _upstream: Upstream,
}

struct Setup<'a> {
    tenants: &'a [&'a str],
    /// The path segment of oidc_issuer_url: a tenant, `organizations` or `common`.
    issuer_segment: &'a str,
    subject_sa: &'a str,
    extra: &'a [&'a str],
    /// Write a valid token before start-up.
    token: bool,
    /// Leave oidc_issuer_url out: the issuer comes from AZURE_AUTHORITY_HOST + AZURE_TENANT_ID,
    /// as for a sovereign cloud configured by the Azure workload identity webhook.
    authority_from_env: bool,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            tenants: &[TENANT_A],
            issuer_segment: TENANT_A,
            subject_sa: SA,
            extra: &[],
            token: true,
            authority_from_env: false,
        }
    }
}

async fn start(s: Setup<'_>) -> Entra {
    let cluster = ClusterIssuer::start().await;
    let listener = Proxy::bind().await;
    let callback = format!("http://{}/oauth2/callback", listener.local_addr().unwrap());
    let idp = Idp::start_config(serde_json::json!({
        "clients": [{"client_id": CLIENT, "redirect_uris": [callback], "grant_types": ["authorization_code", "refresh_token"]}],
        "users": users(),
        "entra": {
            "tenants": s.tenants, "home": s.tenants.last().unwrap(), "graphPageSize": 100,
            "federated": [{"client_id": CLIENT, "issuer": cluster.issuer, "subject": format!("system:serviceaccount:{NAMESPACE}:{}", s.subject_sa), "audience": AUDIENCE}],
        },
    }));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    if s.token {
        std::fs::write(&token_file, cluster.token(NAMESPACE, SA, AUDIENCE, 3600)).unwrap();
    }
    let upstream = Upstream::start().await;
    let mut args: Vec<String> = [
        "--provider=entra-id".to_string(),
        "--entra-id-federated-token-auth=true".into(),
        format!("--entra-id-graph-url={}", idp.base),
        format!("--cookie-secret={COOKIE_SECRET}"),
        "--cookie-secure=false".into(),
        "--email-domain=*".into(),
        format!("--upstream={}", upstream.url),
        "--request-logging=false".into(),
        "--pass-user-headers=true".into(),
    ]
    .into();
    if !s.authority_from_env {
        args.push(format!("--oidc-issuer-url={}/{}/v2.0", idp.base, s.issuer_segment));
    }
    args.extend(s.extra.iter().map(|a| a.to_string()));
    let authority = format!("{}/", idp.base);
    let mut env = vec![
        ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AZURE_CLIENT_ID", CLIENT),
        ("AZURE_TENANT_ID", s.tenants[0]),
    ];
    if s.authority_from_env {
        env.push(("AZURE_AUTHORITY_HOST", &authority));
    }
    let proxy = Proxy::start_with_env(listener, &args, &env).await;
    Entra {
        idp,
        cluster,
        proxy,
        token_file,
        _dir: dir,
        _upstream: upstream,
    }
}

async fn stats(e: &Entra) -> serde_json::Value {
    reqwest::get(format!("{}/_test/stats", e.idp.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn view(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    resp.json().await.unwrap()
}

/// Logs `user` in and expects the callback to fail with `status` and no session; returns the page.
/// A login that fails with `status`. The page has a sentence and the request id only; the
/// cause (AADSTS code, registration hint) is what the proxy logged under that id, returned here.
async fn failed_login(proxy: &Proxy, user: &str, status: u16) -> String {
    let resp = login(&browser(), &proxy.url, "/", user, &format!("{user}-password")).await;
    assert_eq!(resp.status(), status);
    assert!(set_cookie_value(&resp, "_oauth2_proxy").is_none(), "no session");
    let id = request_id(&resp);
    let page = resp.text().await.unwrap();
    assert!(page.contains(&id), "the page shows the request id: {page}");
    for internal in ["AADSTS", "system:serviceaccount", "http://", "https://", "Graph", "az ad"] {
        assert!(!page.contains(internal), "{internal} on the page: {page}");
    }
    logged(&id).join("\n")
}

fn header<'a>(view: &'a serde_json::Value, name: &str) -> &'a str {
    view["headers"][name][0].as_str().unwrap_or_else(|| panic!("no {name} in {view}"))
}

#[tokio::test]
async fn federated_login_with_groups_overage_survives_a_refresh_after_token_rotation() {
    let e = start(Setup {
        extra: &[
            "--scope=openid email profile offline_access",
            "--prompt=consent",
            "--cookie-refresh=1m",
            &format!("--allowed-group={LAST_GROUP}"),
        ],
        ..Setup::default()
    })
    .await;
    let client = browser();
    let p = &e.proxy.url;
    let first_jti = jti(&std::fs::read_to_string(&e.token_file).unwrap());

    let resp = login(&client, p, "/orders", "dave", "dave-password").await;
    assert_eq!(resp.status(), 302, "{}", resp.text().await.unwrap());
    let v = view(&client, &format!("{p}/orders")).await;
    let groups = header(&v, "x-forwarded-groups");
    assert_eq!(groups.split(',').count(), 250, "every group from Graph");
    assert!(groups.ends_with(LAST_GROUP));
    assert_eq!(header(&v, "x-forwarded-email"), "dave@example.com");
    let s = stats(&e).await;
    assert_eq!(s["graph"], 3, "250 groups in pages of 100");
    let code_grant = s["token"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(code_grant["grant_type"], "authorization_code");
    assert_eq!(
        code_grant["assertion"]["jti"],
        first_jti.as_str(),
        "the federated token was the credential"
    );
    assert_eq!(code_grant["assertion"]["sub"], "system:serviceaccount:shop:web");

    // The kubelet rotates the projected token; later token requests must use the new one.
    let rotated = e.cluster.token(NAMESPACE, SA, AUDIENCE, 3600);
    std::fs::write(&e.token_file, &rotated).unwrap();
    e.proxy.clock.advance(Duration::from_secs(120));
    let resp = client.get(format!("{p}/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "still allowed after the refresh");
    assert!(
        set_cookie_value(&resp, "_oauth2_proxy").is_some(),
        "the refreshed session is stored"
    );
    let s = stats(&e).await;
    let refresh = s["token"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(refresh["grant_type"], "refresh_token");
    assert_eq!(
        refresh["assertion"]["jti"],
        jti(&rotated).as_str(),
        "the rotated token was read fresh"
    );
    assert_eq!(s["graph"], 6, "groups re-resolved from Graph after the refresh");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(header(&v, "x-forwarded-groups").ends_with(LAST_GROUP));
}

#[tokio::test]
async fn parallel_requests_during_a_refresh_make_one_token_call() {
    let e = start(Setup {
        extra: &[
            "--scope=openid email profile offline_access",
            "--prompt=consent",
            "--cookie-refresh=1m",
        ],
        ..Setup::default()
    })
    .await;
    let client = browser();
    let p = e.proxy.url.clone();
    assert_eq!(login(&client, &p, "/", "alice", "alice-password").await.status(), 302);
    let before = stats(&e).await["token"].as_array().unwrap().len();
    e.proxy.clock.advance(Duration::from_secs(120));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, p) = (client.clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            client.get(format!("{p}/page/{i}")).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let after = stats(&e).await["token"].as_array().unwrap().len();
    assert_eq!(after - before, 1, "one refresh for eight parallel requests");
}

#[tokio::test]
async fn login_works_without_an_email_claim_using_the_object_id() {
    let e = start(Setup {
        extra: &["--user-id-claim=oid", "--allowed-group=g-admins"],
        ..Setup::default()
    })
    .await;
    let client = browser();
    let p = &e.proxy.url;
    assert_eq!(login(&client, p, "/", "erin", "erin-password").await.status(), 302);
    let v = view(&client, &format!("{p}/")).await;
    assert_eq!(header(&v, "x-forwarded-user"), "eeeeeeee-0000-4000-8000-00000000000e");
    assert_eq!(header(&v, "x-forwarded-preferred-username"), "erin@contoso.example");
    assert!(v["headers"].get("x-forwarded-email").is_none());
}

#[tokio::test]
async fn a_sovereign_cloud_authority_and_issuer_template_from_configuration() {
    // No oidc_issuer_url: AZURE_AUTHORITY_HOST (here the emulated cloud's host) and
    // AZURE_TENANT_ID give the issuer, and the template follows from it.
    let e = start(Setup {
        authority_from_env: true,
        ..Setup::default()
    })
    .await;
    let client = browser();
    assert_eq!(login(&client, &e.proxy.url, "/", "alice", "alice-password").await.status(), 302);
    assert_eq!(
        view(&client, &format!("{}/", e.proxy.url)).await["headers"]["x-forwarded-email"][0],
        "alice@example.com"
    );

    // A template naming another cloud refuses this cloud's tokens.
    let other = start(Setup {
        extra: &["--entra-id-issuer-template=https://login.microsoftonline.us/{tenantid}/v2.0"],
        ..Setup::default()
    })
    .await;
    let client = browser();
    let resp = client.get(format!("{}/oauth2/start", other.proxy.url)).send().await.unwrap();
    assert_eq!(resp.status(), 503, "the discovery document names an issuer outside the template");
}

#[tokio::test]
async fn an_expired_assertion_is_explained() {
    let e = start(Setup::default()).await;
    std::fs::write(&e.token_file, e.cluster.token(NAMESPACE, SA, AUDIENCE, -60)).unwrap();
    let log = failed_login(&e.proxy, "alice", 403).await;
    assert!(log.contains("AADSTS700024"), "{log}");
    assert!(log.contains("the service-account token expired at"), "{log}");
}

#[tokio::test]
async fn a_subject_without_a_federated_credential_gets_the_exact_registration_hint() {
    let e = start(Setup {
        subject_sa: "other",
        ..Setup::default()
    })
    .await;
    let log = failed_login(&e.proxy, "alice", 403).await;
    assert!(log.contains("AADSTS700213"), "{log}");
    for needle in [
        format!("issuer {}", e.cluster.issuer),
        "subject system:serviceaccount:shop:web".to_string(),
        format!("az ad app federated-credential create --id {CLIENT}"),
    ] {
        assert!(log.contains(&needle), "{needle} missing from {log}");
    }
}

#[tokio::test]
async fn a_missing_token_file_is_not_ready_until_it_is_projected() {
    let e = start(Setup {
        token: false,
        ..Setup::default()
    })
    .await;
    let client = browser();
    let ready = format!("{}/ready", e.proxy.url);
    let resp = client.get(&ready).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("client credential"));
    // A login attempt fails with the cause instead of sending no credential.
    let log = failed_login(&e.proxy, "alice", 503).await;
    assert!(log.contains("AZURE_FEDERATED_TOKEN_FILE") && log.contains("not mounted"), "{log}");
    std::fs::write(&e.token_file, e.cluster.token(NAMESPACE, SA, AUDIENCE, 3600)).unwrap();
    eventually("ready once the token is projected", Duration::from_secs(10), || async {
        client.get(&ready).send().await.unwrap().status() == 200
    })
    .await;
    assert_eq!(login(&client, &e.proxy.url, "/", "alice", "alice-password").await.status(), 302);
}

#[tokio::test]
async fn a_graph_failure_is_a_login_error_not_an_empty_group_list() {
    let e = start(Setup::default()).await;
    let log = failed_login(&e.proxy, "frank", 502).await;
    assert!(log.contains("Microsoft Graph answered 503"), "{log}");
}

#[tokio::test]
async fn multi_tenant_issuers_admit_only_allowed_tenants() {
    // Sign-ins through `organizations` land in tenant B (the emulation's home tenant).
    let only_a = start(Setup {
        tenants: &[TENANT_A, TENANT_B],
        issuer_segment: "organizations",
        extra: &[&format!("--entra-id-allowed-tenant={TENANT_A}")],
        ..Setup::default()
    })
    .await;
    let log = failed_login(&only_a.proxy, "alice", 403).await;
    assert!(log.contains(TENANT_B) && log.contains("entra_id_allowed_tenants"), "{log}");

    let both = start(Setup {
        tenants: &[TENANT_A, TENANT_B],
        issuer_segment: "organizations",
        extra: &[
            &format!("--entra-id-allowed-tenant={TENANT_A}"),
            &format!("--entra-id-allowed-tenant={TENANT_B}"),
        ],
        ..Setup::default()
    })
    .await;
    let client = browser();
    let resp = login(&client, &both.proxy.url, "/", "alice", "alice-password").await;
    assert_eq!(resp.status(), 302, "{}", resp.text().await.unwrap());
    let v = view(&client, &format!("{}/", both.proxy.url)).await;
    assert_eq!(header(&v, "x-forwarded-email"), "alice@example.com");
}

#[tokio::test]
async fn the_generic_oidc_provider_takes_a_client_assertion_file() {
    let cluster = ClusterIssuer::start().await;
    let listener = Proxy::bind().await;
    let callback = format!("http://{}/oauth2/callback", listener.local_addr().unwrap());
    let idp = Idp::start_config(serde_json::json!({
        "clients": [{"client_id": CLIENT, "redirect_uris": [callback]}],
        "users": users(),
        "entra": {"tenants": [TENANT_A], "federated": [{"client_id": CLIENT, "issuer": cluster.issuer, "subject": "system:serviceaccount:shop:web", "audience": AUDIENCE}]},
    }));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, cluster.token(NAMESPACE, SA, AUDIENCE, 3600)).unwrap();
    let upstream = Upstream::start().await;
    let args: Vec<String> = [
        "--provider=oidc".to_string(),
        format!("--oidc-issuer-url={}", idp.issuer),
        format!("--client-id={CLIENT}"),
        format!("--client-assertion-file={}", file.display()),
        format!("--cookie-secret={COOKIE_SECRET}"),
        "--cookie-secure=false".into(),
        "--email-domain=example.com".into(),
        format!("--upstream={}", upstream.url),
    ]
    .into();
    let proxy = Proxy::start(listener, &args).await;
    let client = browser();
    assert_eq!(login(&client, &proxy.url, "/", "alice", "alice-password").await.status(), 302);
    assert_eq!(
        view(&client, &format!("{}/", proxy.url)).await["headers"]["x-forwarded-email"][0],
        "alice@example.com"
    );
}

#[tokio::test]
async fn private_key_jwt_against_the_real_provider() {
    use openidconnect::PrivateSigningKey;
    let key_file = repo_root().join("proxy/testdata/rsa-test-key.pem");
    let pem = std::fs::read_to_string(&key_file).unwrap();
    let key =
        openidconnect::core::CoreRsaPrivateSigningKey::from_pem(&pem, Some(openidconnect::JsonWebKeyId::new("client-key".into()))).unwrap();
    let listener = Proxy::bind().await;
    let callback = format!("http://{}/oauth2/callback", listener.local_addr().unwrap());
    // oidc-provider verifies private_key_jwt itself (RFC 7523: iss = sub = client_id).
    let idp = Idp::start_config(serde_json::json!({
        "clients": [{
            "client_id": "pkjwt-client", "redirect_uris": [callback],
            "token_endpoint_auth_method": "private_key_jwt", "token_endpoint_auth_signing_alg": "RS256",
            "jwks": {"keys": [key.as_verification_key()]},
        }],
    }));
    let upstream = Upstream::start().await;
    let args: Vec<String> = [
        "--provider=oidc".to_string(),
        format!("--oidc-issuer-url={}", idp.issuer),
        "--client-id=pkjwt-client".into(),
        format!("--jwt-key-file={}", key_file.display()),
        "--jwt-key-id=client-key".into(),
        format!("--cookie-secret={COOKIE_SECRET}"),
        "--cookie-secure=false".into(),
        "--email-domain=example.com".into(),
        format!("--upstream={}", upstream.url),
    ]
    .into();
    let proxy = Proxy::start(listener, &args).await;
    let client = browser();
    let resp = login(&client, &proxy.url, "/", "alice", "alice-password").await;
    assert_eq!(resp.status(), 302, "{}", resp.text().await.unwrap());
}
