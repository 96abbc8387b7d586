//! A protected app's whole life on the node: the echo app behind an HTTPRoute, a policy,
//! the kubelet-run sidecar, browser logins through the Service's ClusterIP, and a delete
//! that puts everything back.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::echo::{
    CLIENT, OidcClient, REPLICAS, SERIAL, WAIT, ca_config_map, cluster_ip, describe_pods, echo_app_yaml, echo_namespace, pods,
    wait_app_direct, wait_ready, wait_rolled_out,
};
use crate::host::{BRIDGE, Expect, Idp, Redis, TestCa, browser_login, jwt_claims};
use crate::support::{self, Rig, TestNamespace, apply, get_json, http_get, kubectl, kubectl_ok, wait_or_explain};

const TENANT: &str = "5e2e0000-0000-4000-8000-0000000000e2";
const AUDIENCE: &str = "api://AzureADTokenExchange";

fn issuer(rig: &Rig) -> String {
    let doc: Value = serde_json::from_str(&kubectl_ok(rig, &["get", "--raw", "/.well-known/openid-configuration"], None)).expect("json");
    doc["issuer"].as_str().expect("issuer").to_string()
}

/// The IdP on the host, as Entra ID: only the cluster's own token for the echo app's
/// ServiceAccount in `ns` unlocks it. Its CA goes into ConfigMap `idp-ca`.
fn entra_idp(rig: &Rig, ns: &str, ip: &str) -> (Idp, TestCa) {
    let ca = TestCa::new();
    let idp = Idp::start(
        &ca,
        &rig.state.join("pki/ca.crt"),
        json!({
            "clients": [{"client_id": CLIENT, "redirect_uris": [format!("http://{ip}/oauth2/callback")], "grant_types": ["authorization_code", "refresh_token"]}],
            "entra": {
                "tenants": [TENANT], "home": TENANT,
                "federated": [{"client_id": CLIENT, "issuer": issuer(rig), "subject": format!("system:serviceaccount:{ns}:echo"), "audience": AUDIENCE}],
            },
        }),
    );
    assert_eq!(idp.issuer, format!("{}/{TENANT}/v2.0", idp.base));
    ca_config_map(rig, ns, &ca);
    (idp, ca)
}

/// AuthPolicy `echo`: Entra ID through `idp` with workload identity (`workload_identity` is
/// that field's YAML), group `admins` let in over plain http.
fn entra_policy(idp: &Idp, workload_identity: &str) -> String {
    format!(
        r#"apiVersion: sidekey.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: echo }}
spec:
  targetRefs: [{{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: echo }}]
  provider:
    type: entra-id
    issuerURL: {issuer}
    clientID: {CLIENT}
    workloadIdentity: {workload_identity}
    caBundle: {{ name: idp-ca, key: ca.crt }}
    graphURL: {base}
  access: {{ allowedGroups: [admins] }}
  sidecar:
    extraArgs: ["--cookie-secure=false"]
"#,
        issuer = idp.issuer,
        base = idp.base
    )
}

/// The `client_assertion`s the IdP was sent with authorization codes (their `iss`, `sub`, `jti`).
fn code_assertions(idp: &Idp) -> Vec<Value> {
    idp.stats()["token"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["grant_type"] == "authorization_code")
        .filter_map(|t| t.get("assertion").filter(|a| !a.is_null()).cloned())
        .collect()
}

/// The ServiceAccount tokens the kubelet wrote into the pods' projected `sidekey-token`
/// volumes (read on the host, in the kubelet's directory under the rig's state).
fn kubelet_tokens(rig: &Rig, pods: &[Value]) -> Vec<Value> {
    pods.iter()
        .filter_map(|p| {
            let uid = p["metadata"]["uid"].as_str()?;
            let f = rig
                .state
                .join(format!("kubelet/pods/{uid}/volumes/kubernetes.io~projected/sidekey-token/token"));
            Some(jwt_claims(
                &std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())),
            ))
        })
        .collect()
}

fn no_sidekey_annotations(what: &str, meta: &Value) {
    let a = meta["annotations"].to_string();
    assert!(!a.contains("sidekey.dev/"), "our annotations are left on {what}: {a}");
}

fn echo_page(result: &Value) -> Value {
    let body = result["body"].as_str().unwrap_or_default();
    serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("not the echo app's page: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_workload_identity_login_through_the_cluster_ip_and_delete_puts_everything_back() {
    let Some(rig) = support::rig() else { return };
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::new(rig, "apps");
    let n = ns.name.as_str();
    let subject = format!("system:serviceaccount:{n}:echo");

    apply(rig, n, &echo_app_yaml("echo"));
    let before = wait_rolled_out(rig, n, "echo", false).await;
    let ip = cluster_ip(rig, n, "echo");
    let addr = format!("{ip}:80");
    wait_app_direct(&addr).await;

    let (idp, _ca) = entra_idp(rig, n, &ip);
    let applied = Instant::now();
    apply(rig, n, &entra_policy(&idp, "{}"));
    let policy = wait_ready(rig, n, "echo").await;
    let ready_after = applied.elapsed();
    let protected = wait_rolled_out(rig, n, "echo", true).await;
    eprintln!("e2e: policy applied → Ready after {ready_after:?}; {REPLICAS} pods 2/2 with the native sidecar");
    assert_eq!(policy["status"]["protected"], 1, "{:#}", policy["status"]);
    assert_eq!(
        policy["status"]["workloadIdentity"]["subjects"][0], subject,
        "{:#}",
        policy["status"]
    );
    let old: Vec<&Value> = before.iter().map(|p| &p["metadata"]["uid"]).collect();
    assert!(
        protected.iter().all(|p| !old.contains(&&p["metadata"]["uid"])),
        "the pods were not replaced"
    );

    // Anonymous through the ClusterIP: the sign-in page, not the app.
    let anonymous = wait_or_explain(
        "the proxy's answer through the ClusterIP",
        Duration::from_secs(20),
        || async { http_get(&addr, "/").await.filter(|r| !r.body.contains("sidekey-echo")) },
        String::new,
    )
    .await;
    assert!(
        matches!(anonymous.status, 302 | 401 | 403) && (anonymous.body.contains("sign-in") || anonymous.header("location").is_some()),
        "an anonymous request got: {} {}",
        anonymous.head,
        anonymous.body
    );

    // alice (in admins) signs in through the ClusterIP; the app sees who she is.
    let url = format!("http://{ip}/e2e/page?q=1");
    let hosts = [BRIDGE, ip.as_str()];
    let started = Instant::now();
    let alice = browser_login(&url, "alice", &hosts, Expect::Page("alice@example.com")).await;
    eprintln!("e2e: first browser login through the ClusterIP took {:?}", started.elapsed());
    let page = echo_page(&alice);
    let headers = &page["headers"];
    assert_eq!(page["path"], "/e2e/page?q=1", "{page:#}");
    assert_eq!(headers["x-forwarded-email"], "alice@example.com", "{page:#}");
    assert!(headers["x-forwarded-user"].as_str().is_some_and(|u| !u.is_empty()), "{page:#}");
    assert!(
        headers["x-forwarded-groups"].as_str().unwrap_or_default().contains("admins"),
        "{page:#}"
    );

    // The proxy's client credential was the kubelet-written token of one of the pods.
    let assertions = code_assertions(&idp);
    assert!(!assertions.is_empty(), "the IdP saw no client_assertion: {:#}", idp.stats());
    let tokens = kubelet_tokens(rig, &protected);
    for a in &assertions {
        assert_eq!(a["sub"], subject.as_str(), "{assertions:#?}");
        assert!(
            tokens.iter().any(|t| t["jti"] == a["jti"]),
            "the assertion {a} is none of the kubelet's tokens: {tokens:#?}"
        );
    }
    let token = &tokens[0];
    assert_eq!(token["iss"], issuer(rig));
    assert_eq!(token["aud"], json!([AUDIENCE]));
    assert_eq!(token["sub"], subject.as_str());

    // bob (not in admins) is refused, by name.
    let bob = browser_login(&url, "bob", &hosts, Expect::Refused(403, "Access denied")).await;
    assert!(bob["body"].as_str().unwrap_or_default().contains("bob"), "{bob:#}");

    // What the user sees with kubectl.
    let wide = kubectl_ok(rig, &["-n", n, "get", "ap", "echo", "-o", "wide"], None);
    let header: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
    let row: Vec<&str> = wide.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| *h == name).and_then(|i| row.get(i).copied());
    assert_eq!(col("READY"), Some("True"), "{wide}");
    assert_eq!(col("PROTECTED"), Some("1"), "{wide}");
    assert!(col("SUBJECTS").is_some_and(|s| s.contains(&subject)), "{wide}");
    eprintln!("e2e: {}", wide.trim_end().replace('\n', "\ne2e: "));

    // Delete: the pods roll back without the sidecar and the Service reaches the app again.
    let deleted = Instant::now();
    kubectl_ok(rig, &["-n", n, "delete", "authpolicy/echo", "--timeout=90s"], None);
    let released = wait_rolled_out(rig, n, "echo", false).await;
    eprintln!("e2e: policy deleted → pods without the sidecar after {:?}", deleted.elapsed());
    assert!(get_json(rig, n, "authpolicy/echo").is_none(), "the finalizer holds the policy");
    let direct = wait_app_direct(&addr).await;
    assert!(direct["headers"].get("x-forwarded-email").is_none(), "{direct:#}");
    let svc = get_json(rig, n, "service/echo").expect("service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    no_sidekey_annotations("the Service", &svc["metadata"]);
    let d = get_json(rig, n, "deployment/echo").expect("deployment");
    no_sidekey_annotations("the Deployment", &d["metadata"]);
    no_sidekey_annotations("the pod template", &d["spec"]["template"]["metadata"]);
    assert!(
        d["spec"]["template"]["spec"]["volumes"].is_null(),
        "volumes left: {:#}",
        d["spec"]["template"]["spec"]
    );
    for p in &released {
        no_sidekey_annotations("a pod", &p["metadata"]);
    }
    wait_or_explain(
        "the generated cookie Secret garbage-collected",
        WAIT,
        || async { get_json(rig, n, "secret/echo-sidekey-cookie").is_none().then_some(()) },
        String::new,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_client_secret_with_redis_sessions_logs_in_after_the_plain_http_hint() {
    let Some(rig) = support::rig() else { return };
    let _serial = SERIAL.lock().await;
    let (ns, ip) = echo_namespace(rig, "redis").await;
    let n = ns.name.as_str();

    let redis = Redis::start();
    let client = OidcClient::start(rig, n, &ip);
    kubectl_ok(
        rig,
        &[
            "-n",
            n,
            "create",
            "secret",
            "generic",
            "redis",
            &format!("--from-literal=url={}", redis.url()),
        ],
        None,
    );
    let session = "  session:\n    store: { type: redis, redis: { urlSecretRef: { name: redis, key: url } } }\n";
    let policy = client.policy("echo", session);
    // First as a user tries it over plain http without --cookie-secure=false: the browser
    // drops the Secure login cookie, and the page says why and what to change.
    let secure_only = policy.replace("  sidecar:\n    extraArgs: [\"--cookie-secure=false\"]\n", "");
    assert_ne!(secure_only, policy);
    apply(rig, n, &secure_only);
    wait_ready(rig, n, "echo").await;
    wait_rolled_out(rig, n, "echo", true).await;
    let url = format!("http://{ip}/redis");
    let hosts = [BRIDGE, ip.as_str()];
    let hint = browser_login(&url, "alice", &hosts, Expect::Refused(403, "opened over plain http")).await;
    assert!(
        hint["body"].as_str().unwrap_or_default().contains("cookie_secure=false"),
        "{hint:#}"
    );

    apply(rig, n, &policy);
    wait_or_explain(
        "the sidecar with --cookie-secure=false",
        WAIT,
        || async {
            let d = get_json(rig, n, "deployment/echo")?;
            d["spec"]["template"]["spec"]["initContainers"]
                .to_string()
                .contains("--cookie-secure=false")
                .then_some(())
        },
        String::new,
    )
    .await;
    wait_ready(rig, n, "echo").await;
    wait_rolled_out(rig, n, "echo", true).await;
    let alice = browser_login(&url, "alice", &hosts, Expect::Page("alice@example.com")).await;
    let page = echo_page(&alice);
    assert_eq!(page["headers"]["x-forwarded-email"], "alice@example.com", "{page:#}");
    // The session lives in Redis: the browser holds a ticket, Redis the session.
    let keys = redis.cli(&["--scan"]);
    assert!(!keys.trim().is_empty(), "no session in Redis");
    let cookie = page["headers"]["cookie"].as_str().unwrap_or_default();
    assert!(
        cookie.is_empty() || cookie.len() < 400,
        "the app got a large cookie with Redis sessions: {cookie}"
    );
    kubectl_ok(rig, &["-n", n, "delete", "authpolicy/echo", "--timeout=90s"], None);
    wait_rolled_out(rig, n, "echo", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_that_cannot_start_shows_the_proxys_error() {
    let Some(rig) = support::rig() else { return };
    let _serial = SERIAL.lock().await;
    let (ns, ip) = echo_namespace(rig, "broken").await;
    let n = ns.name.as_str();
    let addr = format!("{ip}:80");
    kubectl_ok(
        rig,
        &["-n", n, "create", "secret", "generic", "idp-client", "--from-literal=secret=unused"],
        None,
    );
    // A flag the proxy knows (the controller accepts it) with a value it refuses at start.
    apply(
        rig,
        n,
        &format!(
            r#"apiVersion: sidekey.dev/v1alpha1
kind: AuthPolicy
metadata: {{ name: echo }}
spec:
  targetRefs: [{{ group: gateway.networking.k8s.io, kind: HTTPRoute, name: echo }}]
  provider:
    type: oidc
    issuerURL: https://{BRIDGE}:9/
    clientID: {CLIENT}
    clientSecretRef: {{ name: idp-client, key: secret }}
  access: {{ allowedGroups: [admins] }}
  sidecar:
    extraArgs: ["--cookie-samesite=sometimes"]
"#
        ),
    );
    let failing = wait_or_explain(
        "a pod whose sidecar failed",
        WAIT,
        || async {
            pods(rig, n, "echo").into_iter().find(|p| {
                p["status"]["initContainerStatuses"].as_array().into_iter().flatten().any(|s| {
                    s["name"] == "sidekey-proxy" && (s["lastState"]["terminated"].is_object() || s["state"]["terminated"].is_object())
                })
            })
        },
        || describe_pods(rig, n, "echo"),
    )
    .await;
    let pod = failing["metadata"]["name"].as_str().expect("name").to_string();
    let logs = String::from_utf8_lossy(&kubectl(rig, &["-n", n, "logs", &pod, "-c", "sidekey-proxy"]).stdout).into_owned()
        + &String::from_utf8_lossy(&kubectl(rig, &["-n", n, "logs", &pod, "-c", "sidekey-proxy", "--previous"]).stdout);
    assert!(logs.contains("cookie_samesite"), "the proxy's error is not in its log: {logs}");
    let describe = String::from_utf8_lossy(&kubectl(rig, &["-n", n, "describe", "pod", &pod]).stdout).into_owned();
    let shown = describe
        .lines()
        .find(|l| l.contains("cookie_samesite"))
        .map(|l| l.trim().to_string());
    // The old pods keep serving while the rollout is stuck, and the Service stays on the app.
    let direct = wait_app_direct(&addr).await;
    assert_eq!(
        direct["app"], "sidekey-echo",
        "the Service stays on the app while the sidecar fails"
    );
    // The policy says why: SidecarFailing, naming a pod and carrying the proxy's own line
    // (from the termination log), within the controller's 10 s look at a pending rollout.
    let ready = wait_or_explain(
        "Ready=False SidecarFailing with the proxy's error",
        WAIT,
        || async {
            let p = get_json(rig, n, "authpolicy/echo")?;
            support::condition(&p, "Ready").filter(|c| c["reason"] == "SidecarFailing").cloned()
        },
        || format!("{:#}", get_json(rig, n, "authpolicy/echo").unwrap_or_default()["status"]),
    )
    .await;
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cookie_samesite") && message.contains("pod ") && message.contains("sidekey-proxy"),
        "{ready:#}"
    );
    eprintln!("e2e: a sidecar that cannot start: `kubectl describe pod` shows {shown:?}; the policy says: {message}");
    assert!(
        shown.is_some(),
        "kubectl describe pod {pod} does not show the proxy's error line:\n{describe}"
    );
}

/// `make e2e-long` (about 11 minutes): the kubelet rotates a projected token at 80% of its
/// lifetime, and the proxy, which reads the file at every token request, signs in with the
/// new one. The second sign-in comes after the first token expired, which the IdP (as Entra
/// does) refuses: only the rotated token can pass.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "waits about 10 minutes for the kubelet to rotate a token: make e2e-long"]
async fn the_proxy_signs_in_with_the_token_the_kubelet_rotated() {
    let Some(rig) = support::rig() else { return };
    let _serial = SERIAL.lock().await;
    let (ns, ip) = echo_namespace(rig, "rotation").await;
    let n = ns.name.as_str();
    let (idp, _ca) = entra_idp(rig, n, &ip);
    // The shortest lifetime the API allows.
    apply(rig, n, &entra_policy(&idp, "{ expirationSeconds: 600 }"));
    wait_ready(rig, n, "echo").await;
    let pods = wait_rolled_out(rig, n, "echo", true).await;
    let first = kubelet_tokens(rig, &pods);
    for t in &first {
        assert_eq!(t["exp"].as_i64().unwrap_or(0) - t["iat"].as_i64().unwrap_or(0), 600, "{t:#}");
    }
    let url = format!("http://{ip}/rotation");
    let hosts = [BRIDGE, ip.as_str()];
    browser_login(&url, "alice", &hosts, Expect::Page("alice@example.com")).await;
    let used = code_assertions(&idp);
    assert!(used.iter().all(|a| first.iter().any(|t| t["jti"] == a["jti"])), "{used:#?}");

    let rotated = wait_or_explain(
        "the kubelet rotating every pod's token",
        Duration::from_secs(660),
        || async {
            let now = kubelet_tokens(rig, &pods);
            now.iter().all(|t| first.iter().all(|f| f["jti"] != t["jti"])).then_some(now)
        },
        || format!("{:#?}", kubelet_tokens(rig, &pods)),
    )
    .await;
    let issued = first.iter().filter_map(|t| t["iat"].as_i64()).min().unwrap_or(0);
    let unix = || jiff::Timestamp::now().as_second();
    eprintln!(
        "e2e: rotation: the kubelet wrote new tokens {} s after the first were issued",
        unix() - issued
    );
    // Past the first tokens' expiry: the IdP refuses them now, so a sign-in needs the new one.
    let expired = first.iter().filter_map(|t| t["exp"].as_i64()).max().unwrap_or(0);
    while unix() <= expired + 2 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let before = used.len();
    browser_login(&url, "alice", &hosts, Expect::Page("alice@example.com")).await;
    let later: Vec<Value> = code_assertions(&idp).split_off(before);
    assert!(!later.is_empty(), "no token request after the rotation");
    for a in &later {
        assert!(
            rotated.iter().any(|t| t["jti"] == a["jti"]),
            "the proxy sent {a} after the rotation, not a rotated token: {rotated:#?}"
        );
    }
    eprintln!(
        "e2e: rotation: signed in {} s after the first tokens expired, with the rotated token",
        unix() - expired
    );
}
